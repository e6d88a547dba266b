"""Big data: the Dataset tab's first page of a 1 GB JSONL file, its time and the app's memory above idle.

    python bench/big_data.py                    # a 1 GB file: the first page; the whole read on 100 MB
    python bench/big_data.py --size-mb 1000 --full-mb 0     # the first page only

Writes a seeded JSONL file of chat rows (~1 KB each) of --size-mb, then, in a fresh child process (so
nothing else is in its heap), imports the Dataset tab's modules (the idle RSS), and times what the tab
runs when a file is inspected: the first page (`dataset_tab.report(source, limit=QUICK_ROWS)`), with the
highest RSS above idle while it runs (VmHWM reset first). The whole read that follows in the tab (every
row parsed, for the statistics) and that training does (`data.load`) is measured on a --full-mb file:
it holds every row as Python objects, so on a 1 GB file it would take several GB on a shared machine.
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


def write_rows(path: Path, size_mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    target, written, rows = size_mb * MiB, 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            words = [rng.choice(WORDS) for _ in range(rng.randint(60, 300))]
            cut = len(words) // 4
            line = json.dumps({"messages": [{"role": "user", "content": " ".join(words[:cut]) + "?"},
                                            {"role": "assistant", "content": " ".join(words[cut:]) + "."}]}) + "\n"
            fh.write(line)
            written += len(line)
            rows += 1
    return rows


CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from memory import reset_peak, status_kib
from tuning import data
from tuning.ui import dataset_tab
idle = status_kib("VmRSS")
reset_peak()
started = time.perf_counter()
if {what!r} == "first page":
    rep = dataset_tab.report({path!r}, limit=dataset_tab.QUICK_ROWS)
    rows = rep["rows"]
else:
    rows = data.load({path!r}).rows_total
seconds = time.perf_counter() - started
print(json.dumps({{"idle": idle * 1024, "peak_above_idle": (status_kib("VmHWM") - idle) * 1024,
                  "seconds": seconds, "rows": rows}}))
"""


def measure(path: Path, what: str) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), path=str(path), what=what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1000)
    p.add_argument("--full-mb", type=int, default=100, help="file size for the whole read (0: skip it)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="big-data-"))
    big = folder / "big.jsonl"
    started = time.time()
    rows = write_rows(big, a.size_mb)
    print(f"{big}: {big.stat().st_size / MiB:,.0f} MiB, {rows:,} rows, written in {time.time() - started:.0f} s")
    results = [measure(big, "first page") for _ in range(a.repeats)]
    for r in results:
        print(f"  first page: {r['seconds']:.2f} s, {r['peak_above_idle'] / MiB:,.0f} MiB above idle "
              f"({r['idle'] / MiB:,.0f} MiB), {r['rows']:,} rows counted")
    best = min(results, key=lambda r: r["seconds"])
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} ({machine_load()}): first page of {a.size_mb} MB in "
          f"{best['seconds']:.2f} s (best of {a.repeats}), at most "
          f"{max(r['peak_above_idle'] for r in results) / MiB:,.0f} MiB above idle")
    if a.full_mb:
        small = folder / "full.jsonl"
        write_rows(small, a.full_mb, seed=1)
        r = measure(small, "whole read")
        print(f"whole read (data.load) of {a.full_mb} MB: {r['seconds']:.1f} s, {r['peak_above_idle'] / MiB:,.0f} MiB "
              f"above idle ({r['peak_above_idle'] / (a.full_mb * 1e6 / MiB) / MiB:.1f} MiB per MiB of file)")
    big.unlink()


if __name__ == "__main__":
    main()
