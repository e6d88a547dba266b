"""Memory: where the RSS of a training run goes, and the peak RSS of the quickstart CLI.

    python bench/memory.py breakdown --steps 10      # stage by stage, in one process (~1-2 min)
    python bench/memory.py cli --steps 10            # peak RSS of `python -m tuning train` (a child)
    python bench/memory.py cli                       # the whole quickstart, as shipped
    python bench/memory.py imports                   # RSS of `import torch` and of the libraries alone
    python bench/memory.py cli --set gradient_checkpointing=true --steps 10   # one lever at a time
    python bench/memory.py saved                     # what autograd keeps for one step's backward, by module

`breakdown` runs the real CLI path (`python -m tuning train --preset presets/quickstart.yaml`) inside
this process with probes around each stage: the libraries' import, the data (load, tokenize), the base
weights, the Trainer with its LoRA adapters, every training step (the optimizer state appears at step
1), the Trainer's evaluation loop, and the end-of-run evaluation (held-out loss, then generation for the
probes and task checks). For each stage it prints the RSS after it and the highest RSS during it: Linux
keeps the high-water mark (VmHWM) and lets a process reset it (`echo 5 > /proc/self/clear_refs`), so
each stage's peak is exact, not sampled. Next to the measurements, the sizes that follow from the
tensors: base weights, LoRA weights, their gradients and AdamW's two moments, and the LM head's logits
for the largest batch (tokens x vocabulary x 4 bytes in fp32).

`cli` measures a child's peak RSS the way /usr/bin/time -v does (getrusage of the waited child:
ru_maxrss, exact), in a fresh workspace whose models/ links to the converted embedded model.
Memory figures are not disturbed by other processes sharing the CPU (time figures are).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load  # noqa: E402

MiB = 2 ** 20
PRESET = ROOT / "presets" / "quickstart.yaml"


# --- reading this process's memory ------------------------------------------------------------------

def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next read is this stage's own peak."""
    Path("/proc/self/clear_refs").write_text("5")


class Stages:
    """Each stage: RSS before, the peak during it (VmHWM since its start), RSS after."""

    def __init__(self):
        self.rows: list[dict] = []

    def begin(self, name: str) -> dict:
        reset_peak()
        row = {"stage": name, "before": status_kib("VmRSS") * 1024}
        self.rows.append(row)
        return row

    def end(self, row: dict) -> None:
        row["after"] = status_kib("VmRSS") * 1024
        row["peak"] = status_kib("VmHWM") * 1024
        print(f"[memory] {row['stage']}: before {mib(row['before'])}, peak {mib(row['peak'])}, "
              f"after {mib(row['after'])} MiB", flush=True)  # as it happens, should the run not finish

    def wrap(self, owner, attr: str, name: str) -> None:
        """Make owner.attr record a stage each time it is called."""
        original = getattr(owner, attr)
        stages = self

        def probed(*args, **kwargs):
            row = stages.begin(name)
            try:
                return original(*args, **kwargs)
            finally:
                stages.end(row)

        setattr(owner, attr, probed)


def mib(n: float) -> str:
    return f"{n / MiB:,.0f}"


# --- breakdown ---------------------------------------------------------------------------------------

def breakdown(a) -> None:
    stages = Stages()
    start = {"stage": "python interpreter", "before": 0, "after": status_kib("VmRSS") * 1024,
             "peak": status_kib("VmHWM") * 1024}
    stages.rows.append(start)
    row = stages.begin("import torch")
    import torch
    stages.end(row)
    row = stages.begin("import transformers, peft, trl, datasets, tuning")
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from tuning import __main__ as cli
    from tuning import data as data_mod
    from tuning import models
    from tuning.evaluation import evaluate
    from tuning.train import trainer as train
    stages.end(row)

    facts: dict = {}
    stages.wrap(data_mod, "prepare", "data: load + tokenize (data.prepare)")
    stages.wrap(models, "load_base_for_training", "base weights (models.load_base_for_training)")
    stages.wrap(trl.SFTTrainer, "__init__", "SFTTrainer + LoRA adapters")
    stages.wrap(evaluate, "heldout_loss", "end: held-out loss (one pass per side)")
    stages.wrap(evaluate, "answer_pairs", "end: generation (probes, task checks)")
    original_build = train.build_trainer

    def build_and_probe(*args, **kwargs):
        trainer, tokenizer = original_build(*args, **kwargs)
        trainer.add_callback(step_probe(stages, facts))
        stages.wrap(trainer, "evaluate", "Trainer evaluation loop (eval_loss)")
        facts["model"] = trainer.model
        facts["vocab"] = trainer.model.get_output_embeddings().weight.shape[0]
        return trainer, tokenizer

    train.build_trainer = build_and_probe
    workspace = fresh_workspace()
    argv = ["train", "--workspace", str(workspace), "--preset", str(PRESET), "--set", f"max_steps={a.steps}"]
    for item in a.set:
        argv += ["--set", item]
    code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"training failed with {code}")
    report(stages, facts, torch)


def step_probe(stages: Stages, facts: dict):
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.row = stages.begin(f"training step {state.global_step + 1}")

        def on_step_end(self, args, state, control, **kwargs):
            stages.end(self.row)

    return StepProbe()


def tensor_sizes(model) -> dict[str, int]:
    import torch

    base = lora = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        if p.requires_grad:
            lora += size
        else:
            base += size
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"base": base, "lora": lora, "grads": lora, "adam": 2 * trainable * torch.float32.itemsize}


def report(stages: Stages, facts: dict, torch) -> None:
    print(f"\nbreakdown ({time.strftime('%Y-%m-%d %H:%M')}, {machine_load()}), MiB:")
    print(f"| stage | RSS before | peak during | RSS after | peak - before |")
    print("| --- | --- | --- | --- | --- |")
    steps = [r for r in stages.rows if r["stage"].startswith("training step")]
    for r in stages.rows:
        if r in steps[2:-1]:
            continue  # the first two and the last step say it all; the rest are summarised below
        print(f"| {r['stage']} | {mib(r['before'])} | {mib(r['peak'])} | {mib(r['after'])} | "
              f"{mib(r['peak'] - r['before'])} |")
    if steps:
        print(f"| training steps (all {len(steps)}): highest peak | | {mib(max(r['peak'] for r in steps))} | | "
              f"{mib(max(r['peak'] - r['before'] for r in steps))} |")
    overall = max(r["peak"] for r in stages.rows)
    print(f"\nwhole process peak: {mib(overall)} MiB")
    sizes = tensor_sizes(facts["model"])
    print("from the tensors: " + ", ".join(f"{k} {mib(v)} MiB" for k, v in sizes.items()))
    print(f"LM head logits, fp32, per 1000 positions: {mib(1000 * facts['vocab'] * 4)} MiB "
          f"(vocabulary {facts['vocab']})")
    print(json.dumps({"stages": stages.rows, "sizes": sizes, "peak": overall}))


def fresh_workspace() -> Path:
    """A new workspace whose models/ links to the converted embedded model (no conversion timed)."""
    from tuning import models

    shared = Path(os.environ.get("TUNING_TEST_MODEL_CACHE", Path(tempfile.gettempdir()) / "tuning-bench"))
    models.embedded_model_dir(shared)  # converts once, if it is not there yet
    workspace = Path(tempfile.mkdtemp(prefix="mem-"))
    (workspace / "models").symlink_to((shared / "models").resolve())
    return workspace


# --- peak RSS of a child -----------------------------------------------------------------------------

# Linux starts a child's ru_maxrss at its parent's high-water RSS (exec records the mm it replaces, a
# copy of the parent's or, after vfork, the parent's own: fs/exec.c), so a parent that once held a model
# would report its own peak for every child. A small wrapper process sits in between: the command's
# figure is then the command's own.
_PEAK_WRAPPER = ("import os, subprocess, sys\n"
                 "proc = subprocess.Popen(sys.argv[2:])\n"
                 "_, status, usage = os.wait4(proc.pid, 0)\n"
                 "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
                 "sys.exit(os.waitstatus_to_exitcode(status))\n")


def child_peak(cmd: list[str], env: dict | None = None) -> tuple[int, float, str]:
    """(peak RSS in bytes, wall seconds, output) of a child: ru_maxrss of the waited process, the
    figure /usr/bin/time -v prints as 'Maximum resident set size'. Raises when the command fails."""
    started = time.time()
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak_file:
        proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, peak_file.name, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        peak_kib = int(Path(peak_file.name).read_text() or 0)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}:\n{text[-3000:]}")
    return peak_kib * 1024, time.time() - started, text


def cli(a) -> None:
    workspace = fresh_workspace()
    cmd = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace), "--preset", str(PRESET)]
    if a.steps:
        cmd += ["--set", f"max_steps={a.steps}"]
    for item in a.set:
        cmd += ["--set", item]
    peak, wall, out = child_peak(cmd)
    end = [line for line in out.splitlines() if line.startswith(("evaluation", "completed"))]
    print("\n".join(end))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}: `{' '.join(cmd[1:])}`: peak RSS {mib(peak)} MiB, "
          f"{wall:.0f} s wall ({machine_load()})")
    print(json.dumps({"peak_rss": peak, "wall": wall, "steps": a.steps, "set": a.set}))


def imports(a) -> None:
    """Peak RSS of a bare interpreter, then of importing each library, each in a fresh child."""
    for what in ("pass", "import torch", "import torch, transformers",
                 "import torch, transformers, peft, trl, datasets", "import tuning.train.trainer, trl, peft, datasets"):
        peak, _, _ = child_peak([sys.executable, "-c", what])
        print(f"| `{what}` | {mib(peak)} MiB |")


# --- what autograd keeps for the backward -----------------------------------------------------------

def saved(a) -> None:
    """The bytes autograd keeps for the backward of one training forward on the quickstart's first
    batch (under the run's autocast), by the module that saved them, parameters aside: with the
    trainer as it is built, then with lora_forward.share_lora_inputs left out (LoRA's dropout as PEFT does
    it: each adapter keeps a dropped-out copy of its input and the mask)."""
    import collections

    import torch

    from tuning import config
    from tuning.levers import buckets, lora_forward
    from tuning.train import trainer as train

    cfg = config.load(PRESET)
    results = {}
    original = lora_forward.share_lora_inputs
    for label, share in (("as built (share_lora_inputs)", original), ("without share_lora_inputs", lambda m: 0)):
        lora_forward.share_lora_inputs = share
        workspace = fresh_workspace()
        run_dir = workspace / "runs" / "saved"
        run_dir.mkdir(parents=True)
        trainer, _ = train.build_trainer(cfg, run_dir, workspace, train.EventLog(run_dir / "events.jsonl"),
                                         train.StopRequested())
        lora_forward.share_lora_inputs = original
        model = trainer.model.train()
        where = ["?"]
        for module in model.modules():
            module.register_forward_pre_hook(lambda m, *_: where.append(type(m).__name__))
            module.register_forward_hook(lambda m, *_: where.pop() and None)  # a hook's non-None return replaces the output
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept, by = {}, collections.Counter()

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr not in kept:
                kept[ptr] = t.untyped_storage().nbytes()
                by[(where[-1], str(t.dtype).removeprefix("torch."))] += kept[ptr]
            return t

        batch = next(iter(trainer.get_train_dataloader()))
        inputs = {k: v for k, v in trainer._prepare_inputs(batch).items()
                  if k not in (buckets.PADDING_KEY, "row_ids")}
        torch.manual_seed(cfg.seed)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(trainer.args.bf16)):
            trainer.compute_loss(model, inputs)
        tokens = batch["input_ids"].shape[1]
        total = sum(kept.values())
        results[label] = total
        print(f"\n{label}: {tokens} tokens, kept for the backward {mib(total)} MiB "
              f"({total / tokens / 1024:,.0f} KiB per token)")
        for (name, dtype), size in by.most_common(12):
            print(f"  {name} {dtype}: {mib(size)} MiB")
        del trainer, model
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} ({machine_load()}): " + ", ".join(
        f"{k} {mib(v)} MiB" for k, v in results.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("breakdown", "cli", "imports", "saved"))
    p.add_argument("--steps", type=int, default=0, help="max_steps (0: the preset's own, the whole quickstart)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config for the run")
    a = p.parse_args()
    if a.what == "breakdown":
        a.steps = a.steps or 10
    {"breakdown": breakdown, "cli": cli, "imports": imports, "saved": saved}[a.what](a)


if __name__ == "__main__":
    main()
