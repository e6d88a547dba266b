"""Hostile or broken dataset files cost seconds and bounded memory, and end with a message naming the
limit: every reader caps columns and bytes per row (tuning/data/formats.py, MAX_COLUMNS, MAX_ROW_BYTES)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.data import formats
from tuning.data.formats import MAX_COLUMNS, MAX_ROW_BYTES, DataError

ROOT = Path(__file__).resolve().parents[1]
BIG = "a" * (MAX_ROW_BYTES + 10)


def inspect_in_child(path: Path, workspace: Path) -> tuple[int, str, int]:
    """`python -m tuning inspect PATH` in a child of a small wrapper that reports the child's peak RSS
    (KiB), so no earlier child of this test process is counted."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run([sys.executable, '-m', 'tuning', 'inspect', sys.argv[1], '--workspace', sys.argv[2]],"
               " capture_output=True, text=True, timeout=600)\n"
               "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.stdout.write(r.stdout + r.stderr)\n")
    out = subprocess.run([sys.executable, "-c", wrapper, str(path), str(workspace)], cwd=ROOT, capture_output=True,
                         text=True, timeout=900).stdout
    rc, rss, text = out.split("\n", 2)
    return int(rc), text, int(rss)


def test_a_million_column_csv_and_a_50_mb_jsonl_line_end_with_exit_2_naming_the_limit(tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + ",".join("x" * 1_000_000) + "\n")
    assert wide.stat().st_size > 9_000_000
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"prompt": "hi", "completion": "a" * 50_000_000}) + "\n")

    rc, text, rss = inspect_in_child(wide, tmp_path / "ws")
    assert rc == 2, text
    assert "1,000,000 columns" in text and f"at most {MAX_COLUMNS:,}" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert rss < 1.5 * 2**20, f"peak RSS {rss} KiB"

    rc, text, rss = inspect_in_child(long_line, tmp_path / "ws")
    assert rc == 2, text
    assert "row 1" in text and "limited to 2 MB" in text and "47.7 MB" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert rss < 1.5 * 2**20, f"peak RSS {rss} KiB"


def test_each_reader_turns_an_oversized_row_into_a_problem_and_keeps_the_rest(tmp_path):
    good = {"prompt": "What is 2+2?", "completion": "4"}
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "x", "completion": BIG}) + "\n")
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps([good, {"prompt": "x", "completion": BIG}, good]))
    csv_file = tmp_path / "a.csv"
    csv_file.write_text(f"prompt,completion\nq,a\nx,{BIG}\nq2,a2\n")
    txt = tmp_path / "a.txt"
    txt.write_text("a short paragraph\n\n" + BIG + "\n\nanother one\n")
    for path, kept, bad_row in ((jsonl, 1, 2), (as_json, 2, 2), (csv_file, 2, 3), (txt, 2, 3)):
        rows = formats.read_path(path)
        assert len(rows.records) == kept, path.name
        assert [p.row for p in rows.problems] == [bad_row], path.name
        assert "limited to 2 MB" in rows.problems[0].message
    # streamed too (the Arrow cache and the trainer read big JSONL files line by line)
    streamed = list(formats.iter_rows(jsonl))
    assert [type(r).__name__ for r in streamed] == ["tuple", "Problem"]


def test_a_wide_header_is_refused_and_a_repeated_column_still_named(tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)) + "\n" + ",".join("x" * (MAX_COLUMNS + 1)))
    with pytest.raises(DataError, match=f"{MAX_COLUMNS + 1:,} columns"):
        formats.read_path(wide)
    at_limit = tmp_path / "ok.csv"
    at_limit.write_text(",".join(f"c{i}" for i in range(MAX_COLUMNS)) + "\n" + ",".join("x" * MAX_COLUMNS))
    assert len(formats.read_path(at_limit).records) == 1
    repeated = tmp_path / "rep.csv"
    repeated.write_text("prompt,answer,prompt\na,b,c\n")
    with pytest.raises(DataError, match="'prompt' appears more than once"):
        formats.read_path(repeated)


def test_the_dataset_tab_says_the_same_in_its_box(tmp_path):
    """The page on the same two files, typed as paths, names the limit as the command line does: the
    1,000,000 columns in the tab's error box (nothing can be read), the 50 MB row as that row's
    problem (the row is dropped; a file with other rows trains on them)."""
    import gradio as gr

    from tuning.ui import dataset_tab
    from tuning.ui.common import AppContext

    workspace = tmp_path / "ws"
    (workspace / "datasets").mkdir(parents=True)
    wide = workspace / "datasets" / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + ",".join("x" * 1_000_000) + "\n")
    long_line = workspace / "datasets" / "long.jsonl"
    long_line.write_text(json.dumps({"prompt": "hi", "completion": "a" * 50_000_000}) + "\n")
    ctx = AppContext(workspace)
    with gr.Blocks() as demo:
        dataset_tab.build(ctx)
    inspect = next(f.fn for f in demo.fns.values() if f.api_name == "inspect_dataset_form")
    def shown(path: Path) -> tuple[dict, str]:
        outputs = inspect(dataset_tab.SOURCES[2], None, str(path), "auto", "", None)
        (box,) = [value for block, value in outputs.items() if "error-box" in (block.elem_classes or [])]
        return box, json.dumps([v for b, v in outputs.items() if getattr(b, "label", "") == "Validation problems"],
                               default=str)

    box, _ = shown(wide)
    assert box["visible"] is True and f"at most {MAX_COLUMNS:,}" in box["value"] and "wide.csv" in box["value"]
    box, problems = shown(long_line)
    assert "limited to 2 MB" in problems and "long.jsonl" in problems, problems[:300]
