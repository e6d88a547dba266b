"""The time and peak memory each preset costs on this machine, for the Train tab's preset cards.

    python bench/preset_table.py --only first-run,quickstart   # measure these presets, write their rows
    python bench/preset_table.py                               # every preset this machine can run
    python bench/preset_table.py --table                       # print the table as it stands

Each preset is trained once, from the command to its end-of-run evaluation, exactly as a person runs
it: `/usr/bin/time -v python -m tuning train --preset presets/<name>.yaml --workspace <fresh>`. The
wall time and the peak RSS that /usr/bin/time reports go to presets/measured.json (rows of other
presets are kept), which the Train tab reads. The embedded model's one-time conversion from its GGUF
(~25 s, once per workspace) is done before and linked into each fresh workspace, so a row is what
every run costs, not the first one's extra.

On a CPU-only machine "every preset this machine can run" means the ones on the embedded model; a
preset that starts from another run (quickstart-dpo, init_from) is measured only when asked for,
with --set init_from=RUN_ID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load  # noqa: E402

from tuning import config as config_mod  # noqa: E402

TABLE = ROOT / "presets" / "measured.json"
MODELS = Path(tempfile.gettempdir()) / "preset-table-models"  # the converted embedded model, made once


def machine() -> str:
    """The machine's kind in words: its cores and its GPU, if any."""
    gpu = ""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip().splitlines()
        gpu = f", {len(out)} x {out[0]}" if out else ""
    return f"{os.cpu_count()} CPU cores{gpu or ', no GPU'}"


def runnable(name: str) -> bool:
    """Presets this machine can train without being told more: the embedded model on a CPU-only
    machine, and nothing that starts from another run."""
    cfg = config_mod.load(ROOT / "presets" / f"{name}.yaml")
    if cfg.init_from or cfg.objective != "sft":
        return False
    return shutil.which("nvidia-smi") is not None or cfg.base_model == config_mod.EMBEDDED_MODEL


def converted_models() -> Path:
    from tuning import models

    models.embedded_model_dir(MODELS)  # converts on the first call, then returns at once
    return MODELS / "models"


def parse_time(text: str) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) from /usr/bin/time -v's report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return seconds, rss


def measure(name: str, overrides: list[str]) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix=f"preset-{name}-"))
    (workspace / "models").mkdir()
    for model in converted_models().iterdir():
        (workspace / "models" / model.name).symlink_to(model)
    command = [sys.executable, "-m", "tuning", "train", "--preset", f"presets/{name}.yaml", "--workspace",
               str(workspace), *[a for o in overrides for a in ("--set", o)]]
    print(f"{name}: {machine_load()}", flush=True)
    load_before = os.getloadavg()[0]
    proc = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    wall, rss = parse_time(proc.stderr)
    print(f"{name}: {wall:.0f} s, peak RSS {rss:,} KiB; {machine_load()}; workspace {workspace}", flush=True)
    # The busier of the two 1-minute load averages, so a card can say its figure is a busy machine's.
    load = round(max(load_before, os.getloadavg()[0]), 1)
    return {"wall_s": round(wall, 1), "peak_rss_kib": rss, "peak_rss_gib": round(rss / 2**20, 2),
            "machine": machine(), "cores": os.cpu_count(), "load": load,
            "command": f"/usr/bin/time -v python -m tuning train --preset presets/{name}.yaml"
                       + "".join(f" --set {o}" for o in overrides)}


def read_table() -> dict:
    try:
        return json.loads(TABLE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"about": "Written by bench/preset_table.py; read by the Train tab's preset cards.", "presets": {}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated preset names (default: every preset this machine can run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to each run")
    parser.add_argument("--table", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    table = read_table()
    if not args.table:
        names = args.only.split(",") if args.only else sorted(p.stem for p in (ROOT / "presets").glob("*.yaml")
                                                              if runnable(p.stem))
        for name in names:
            table["presets"][name] = measure(name, args.set)
            TABLE.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")  # a row at a time
    for name, row in sorted(table["presets"].items()):
        print(f"{name:28} {row['wall_s']:8.1f} s {row['peak_rss_gib']:6.2f} GiB  {row['machine']}")


if __name__ == "__main__":
    main()
