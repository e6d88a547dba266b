"""Big data: the Dataset tab's first page of a 1 GB JSONL file, the memory of reading a big file
whole (the page's statistics step, training's data preparation), and the sampled statistics.

    python bench/big_data.py                          # everything, the sizes below
    python bench/big_data.py --size-mb 1000 --read-mb 100 1000 --before-mb 100 --tokenize-mb 10 --stats-rows 100000
    python bench/big_data.py --only first-page        # one part: first-page, read, tokenize, stats

Each measurement runs in a fresh child process (so nothing else is in its heap), which imports
what the app or the trainer imports (the idle RSS), then runs one thing and reports its time and
its memory above idle: the peak VmHWM (every resident page, the memory-mapped Arrow file's
included: those pages are the page cache's, dropped under pressure) and the peak RssAnon (the
process's own memory, sampled every 20 ms), the figure that grows with rows held as Python objects.

- first page: `dataset_tab.report(source, limit=QUICK_ROWS)` on a --size-mb file, best of --repeats.
- read: the whole file read and validated, before (`data.load`: every row a Python object) and
  after (`arrow_data.load`: the rows in an Arrow cache in the workspace, memory-mapped), per --read-mb.
- tokenize: `data.prepare` (read, split, tokenize: what training does before the model loads), before
  (in memory, only up to the largest --before-mb: ~20x the file) and after (the workspace's Arrow cache,
  a batched .map), on a --tokenize-mb file (~1,700 rows, 1.5 MB, a second here: 100 MB took 65 s).
- stats: the Dataset tab's statistics on a --stats-rows file: the time to the sampled estimate
  (SAMPLE_ROWS rows) and to the full pass, from the same run of `statistics_handler`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORDS, machine_load  # noqa: E402

MiB = 2 ** 20


def write_rows(path: Path, size_mb: float | None = None, rows: int | None = None, seed: int = 0) -> int:
    """Seeded chat rows of ~1 KB (60-300 words), up to size_mb MiB or `rows` rows: texts drawn from a
    pool (drawing every word is minutes a GB), each row made unique by its number."""
    rng = random.Random(seed)
    pool = []
    for _ in range(4096):
        words = [rng.choice(WORDS) for _ in range(rng.randint(60, 300))]
        cut = len(words) // 4
        pool.append((" ".join(words[:cut]) + "?", " ".join(words[cut:]) + "."))
    target, written, count = (size_mb or 0) * MiB, 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while (written < target) if rows is None else (count < rows):
            user, answer = pool[rng.randrange(len(pool))]
            line = json.dumps({"messages": [{"role": "user", "content": f"#{count} {user}"},
                                            {"role": "assistant", "content": answer}]}) + "\n"
            fh.write(line)
            written += len(line)
            count += 1
    return count


CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from memory import reset_peak, status_kib
from tuning import data
from tuning.data import arrow_data
from tuning.config import TrainConfig
from tuning.ui import dataset_tab, dataset_tokens
from tuning.ui.common import AppContext
path, what, workspace = {path!r}, {what!r}, {workspace!r}
tokenizer = None
if what in ("tokenize before", "tokenize after", "stats"):
    from transformers import AutoTokenizer
    from tuning import models
    gguf = models.embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dataset_tokens._tokenizer = lambda *a: tokenizer
    dataset_tab.tokenizer_for = lambda *a, **k: tokenizer
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], status_kib("RssAnon")); time.sleep(0.02)
idle, idle_anon = status_kib("VmRSS"), status_kib("RssAnon")
threading.Thread(target=sample, daemon=True).start()
reset_peak()
started = time.perf_counter()
out = {{}}
if what == "first page":
    rep = dataset_tab.report(path, limit=dataset_tab.QUICK_ROWS)
    out["rows"], out["counted"] = rep["rows"], rep["counted"]
elif what == "read before":
    out["rows"] = data.load(path).rows_valid
elif what == "read after":
    loaded = arrow_data.load(path, workspace=workspace)
    out["rows"] = loaded.rows_valid
    out["build_s"] = time.perf_counter() - started
    out["cached_s"] = -1
elif what.startswith("tokenize"):
    cfg = TrainConfig(dataset=path, eval_split=0.05, max_length=512)
    if what == "tokenize after":
        arrow_data.ARROW_MIN_BYTES = 0
    train, held, loaded = data.prepare(cfg, tokenizer, workspace if what == "tokenize after" else None)
    out["rows"] = len(train) + len(held)
elif what == "stats":
    ctx = AppContext(workspace, [os.path.dirname(path)])
    times = []
    for step in dataset_tab.statistics_handler(ctx, path, "auto", "", "embedded", 512, True, progress=None):
        times.append((time.perf_counter() - started, step.get("stats", "")[:90]))
    out["steps"] = times
out["seconds"] = time.perf_counter() - started
out["idle"] = idle * 1024
out["peak_above_idle"] = (status_kib("VmHWM") - idle) * 1024
out["anon_above_idle"] = (max(peak[0], status_kib("RssAnon")) - idle_anon) * 1024
if what == "read after":  # the same call again: from the cache
    again = time.perf_counter(); arrow_data.load(path, workspace=workspace); out["cached_s"] = time.perf_counter() - again
print(json.dumps(out))
"""


def measure(path: Path, what: str, workspace: Path) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), path=str(path), what=what,
                        workspace=str(workspace))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB"


def first_page(folder: Path, size_mb: int, repeats: int) -> None:
    big = folder / f"first-{size_mb}.jsonl"
    started = time.time()
    rows = write_rows(big, size_mb)
    print(f"{big.name}: {big.stat().st_size / MiB:,.0f} MiB, {rows:,} rows, written in {time.time() - started:.0f} s")
    results = [measure(big, "first page", folder / "ws") for _ in range(repeats)]
    for r in results:
        print(f"  first page: {r['seconds']:.2f} s, {mib(r['peak_above_idle'])} above idle ({mib(r['idle'])}), "
              f"{'' if r['counted'] else 'at least '}{r['rows']:,} rows")
    best = min(results, key=lambda r: r["seconds"])
    print(f"{time.strftime('%Y-%m-%d %H:%M')} ({machine_load()}): first page of {size_mb} MB in {best['seconds']:.2f} s "
          f"(best of {repeats}), at most {mib(max(r['peak_above_idle'] for r in results))} above idle\n")
    big.unlink()


def read_whole(folder: Path, sizes: list[int], before: list[int]) -> None:
    for size in sizes:
        path = folder / f"read-{size}.jsonl"
        rows = write_rows(path, size, seed=1)
        file_mib = path.stat().st_size / MiB
        for what in (["read before"] if size in before else []) + ["read after"]:
            r = measure(path, what, folder / "ws")
            extra = f"; again from the cache {r['cached_s']:.2f} s" if what == "read after" else ""
            print(f"{time.strftime('%H:%M')} ({machine_load()}) {what} of {size} MB ({rows:,} rows): {r['seconds']:.1f} s, "
                  f"peak {mib(r['peak_above_idle'])} above idle ({r['peak_above_idle'] / MiB / file_mib:.2f}x the "
                  f"file), own memory {mib(r['anon_above_idle'])} ({r['anon_above_idle'] / MiB / file_mib:.2f}x){extra}")
        path.unlink()


def tokenize(folder: Path, size: float, before_mb: list[int]) -> None:
    """data.prepare of a `size` MB file through the Arrow cache; in memory too when `size` is at most
    the largest of `before_mb` (in memory it holds ~20x the file: 2 GiB for 100 MB)."""
    path = folder / f"tokenize-{size}.jsonl"
    rows = write_rows(path, size, seed=2)
    file_mib = path.stat().st_size / MiB
    for what in ("tokenize before", "tokenize after"):
        if what == "tokenize before" and size > max(before_mb, default=0):
            continue
        r = measure(path, what, folder / "ws")
        print(f"{time.strftime('%H:%M')} ({machine_load()}) {what}: data.prepare of {size} MB ({rows:,} rows -> "
              f"{r['rows']:,} examples): {r['seconds']:.0f} s, peak {mib(r['peak_above_idle'])} above idle, own memory "
              f"{mib(r['anon_above_idle'])} ({r['anon_above_idle'] / MiB / file_mib:.1f}x the file)")


def stats(folder: Path, rows: int) -> None:
    path = folder / f"stats-{rows}.jsonl"
    write_rows(path, rows=rows, seed=3)
    r = measure(path, "stats", folder / "ws")
    for seconds, text in r["steps"]:
        print(f"  {seconds:7.1f} s: {text}")
    first = next(seconds for seconds, text in r["steps"] if "sampled" in text)
    last = r["steps"][-1][0]
    print(f"{time.strftime('%H:%M')} ({machine_load()}) statistics of {rows:,} rows: the sample at {first:.1f} s, "
          f"the full pass at {last:.1f} s ({first / last:.3f}x); own memory {mib(r['anon_above_idle'])} above idle")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1000, help="the first page's file")
    p.add_argument("--read-mb", type=int, nargs="*", default=[100, 1000], help="files read whole")
    p.add_argument("--before-mb", type=int, nargs="*", default=[100],
                   help="of those, the ones also read whole in memory (data.load: ~4.5x the file); "
                   "tokenize in memory too up to the largest")
    p.add_argument("--tokenize-mb", type=float, default=10)
    p.add_argument("--stats-rows", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["first-page", "read", "tokenize", "stats"])
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="big-data-"))
    if a.only in (None, "first-page"):
        first_page(folder, a.size_mb, a.repeats)
    if a.only in (None, "read"):
        read_whole(folder, a.read_mb, a.before_mb)
    if a.only in (None, "tokenize"):
        tokenize(folder, a.tokenize_mb, a.before_mb)
    if a.only in (None, "stats"):
        stats(folder, a.stats_rows)


if __name__ == "__main__":
    main()
