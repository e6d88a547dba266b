"""The run folder's owner (tuning/runs/): safe writes under contention, a checkpoint marker that
comes after its files reach the disk, one event summary and status rule, listing filters, and a
loaded-adapter cache that notices when a resumed run rewrites adapter/."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning import config as config_mod
from tuning.infer import playground
from tuning import runs
from tuning.evaluation import headlines
from tuning.runs import files as run_files
from tuning.runs.events import EventLog


def test_concurrent_atomic_writes_never_fail_and_leave_one_whole_file(tmp_path):
    """The trainer's checkpoint callback and a page can both write probes.json at once: with a fixed
    temp name the second replace() failed. Eight writers, forty writes each, all succeed."""
    errors: list[BaseException] = []
    values = [[f"writer {w} probe {i}" for i in range(3)] for w in range(8)]

    def writer(value):
        try:
            for _ in range(40):
                runs.write_json(tmp_path / runs.PROBES, value)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert runs.read_probes(tmp_path) in values  # one writer's whole value, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == [runs.PROBES]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    runs.write_json(tmp_path / runs.EVALUATION, {"step": 1})

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files.os, "replace", full_disk)
    with pytest.raises(OSError):
        runs.write_json(tmp_path / runs.EVALUATION, {"step": 2})
    assert runs.read_evaluation(tmp_path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [runs.EVALUATION]


def test_checkpoint_files_reach_the_disk_before_the_complete_marker(tmp_path, monkeypatch):
    ckpt = runs.checkpoint_dir(tmp_path, 4)
    (ckpt / "nested").mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "nested/rng_state.pth"):
        (ckpt / name).write_bytes(b"x" * 10)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(run_files.os, "fsync", spy)
    runs.mark_complete(ckpt)
    marker_at = next(i for i, p in enumerate(synced) if Path(p).name.startswith(f".{runs.COMPLETE_MARKER}."))
    written = {str(ckpt / n) for n in ("adapter_model.safetensors", "optimizer.pt", "nested/rng_state.pth")}
    assert written <= set(synced[:marker_at]), "every checkpoint file is fsynced before the marker is written"
    assert str(ckpt) in synced[:marker_at], "and the folder holding them"
    assert synced[-1] == str(ckpt), "the folder is fsynced after the marker's rename"
    assert runs.complete_checkpoints(tmp_path) == [ckpt]


def _run(workspace: Path, run_id: str, events: list[tuple[str, dict]], **cfg) -> Path:
    path = runs.run_dir(workspace, run_id)
    path.mkdir(parents=True)
    runs.write_config(path, config_mod.TrainConfig(**cfg))
    log = EventLog(runs.events_path(path))
    for kind, fields in events:
        log.append(kind, **fields)
    return path


def test_one_summary_of_a_resumed_run(tmp_path):
    path = _run(tmp_path, "r1", [
        ("start", {"step": 0, "max_steps": 6}),
        ("log", {"step": 2, "loss": 2.0, "learning_rate": 1e-4, "tokens_per_second": 100.0}),
        ("eval", {"step": 2, "eval_loss": 1.9}),
        ("end", {"status": "stopped", "step": 2, "message": "stopped at step 2"}),
        ("start", {"step": 2, "max_steps": 6}),
        ("log", {"step": 4, "loss": 1.0, "learning_rate": 5e-5, "tokens_per_second": 120.0}),
    ])
    (path / runs.PROCESS).write_text(json.dumps({"pid": 999999999, "create_time": 0.0}))
    summary = runs.summarize(path)
    progress = summary.progress
    assert (summary.step, summary.max_steps, summary.loss, summary.eval_loss) == (4, 6, 1.0, 1.9)
    assert progress.train == [(2, 2.0), (4, 1.0)] and progress.evals == [(2, 1.9)]
    assert progress.rates == [100.0, 120.0]
    # The resume opened a new segment that never closed: interrupted, not "stopped".
    assert summary.status == runs.INTERRUPTED and progress.final is None
    assert "resume" in summary.message

    EventLog(runs.events_path(path)).append("end", status="completed", step=6, max_steps=6, message="done")
    with open(runs.events_path(path), "a") as fh:
        fh.write('{"event": "log", "step": 7')  # a kill mid-write
    summary = runs.summarize(path)
    assert summary.status == runs.COMPLETED and summary.step == 6
    assert "half-written line" in summary.message


def test_status_rule(tmp_path):
    empty = runs.EventSummary()
    assert runs.status_from(empty, alive=True) == runs.STARTING
    assert runs.status_from(empty, alive=False) == runs.INTERRUPTED
    failed = runs.EventSummary().extend([{"event": "start"}, {"event": "error", "message": "boom"}])
    assert runs.status_from(failed, alive=False) == runs.FAILED and failed.error["message"] == "boom"
    # A live process is busy even after its last event: the one-run-at-a-time rule must hold.
    assert runs.status_from(failed, alive=True) == runs.RUNNING


def test_list_runs_filters_and_tolerates_a_damaged_folder(tmp_path):
    _run(tmp_path, "a", [("start", {}), ("end", {"status": "completed"})], method="lora", base_model="m1")
    _run(tmp_path, "b", [("start", {}), ("end", {"status": "completed"})], method="qlora", base_model="m1")
    damaged = runs.run_dir(tmp_path, "c")
    damaged.mkdir(parents=True)
    runs.config_path(damaged).write_text("learning_rate: [not a number\n")
    assert [s.run_id for s in runs.list_runs(tmp_path)] == ["c", "b", "a"]
    assert runs.summarize(damaged).status == runs.DAMAGED
    assert [s.run_id for s in runs.list_runs(tmp_path, method="lora")] == ["a"]
    assert [s.run_id for s in runs.list_runs(tmp_path, base_model="m1", statuses=(runs.COMPLETED,))] == ["b", "a"]
    assert runs.default_run(tmp_path) == "c" and runs.run_ids(tmp_path) == ["c", "b", "a"]


def _save_adapter(tiny_model_dir, folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)


def test_a_rewritten_adapter_is_reloaded_not_served_from_the_cache(tiny_model_dir, tmp_path):
    """A stopped run that is resumed writes adapter/ again: the Playground and the evaluation must
    answer with the new weights, not the ones cached from the first load."""
    adapter = tmp_path / "adapter"
    _save_adapter(tiny_model_dir, adapter, seed=1)
    comparer = playground.Comparer(str(tiny_model_dir), "lora", torch.float32)
    first = comparer.attach(adapter)
    assert comparer.attach(adapter) == first  # unchanged weights: the cached copy

    def lora_b(name):
        return next(p.detach().clone() for n, p in comparer.peft.named_parameters() if f"lora_B.{name}." in n)

    old = lora_b(first)
    time.sleep(0.01)  # a distinct modification time on coarse clocks
    _save_adapter(tiny_model_dir, adapter, seed=2)
    second = comparer.attach(adapter)
    assert second != first
    assert not torch.equal(lora_b(second), old)
    assert first not in comparer.adapters and len(comparer.adapters) == 1  # the stale copy is dropped


def test_headline_of_an_evaluation_without_some_figures():
    """An evaluation.json written by hand or by an older version may lack the perplexity or the base's
    figures: the headline shows what is there instead of failing the page that reads it."""
    full = {"eval_loss": 0.335, "base_eval_loss": 3.566, "perplexity": 1.4, "base_perplexity": 35.4}
    assert headlines.headline(full).startswith("held-out loss 0.335 (base 3.566), perplexity 1.4 (base 35.4)")
    assert headlines.headline({"eval_loss": 0.335, "base_eval_loss": 3.566}).startswith("held-out loss 0.335 (base 3.566)")
    assert "perplexity" not in headlines.headline({"eval_loss": 0.335})
