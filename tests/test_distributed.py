"""Two CPU processes (gloo) through torch.distributed.run on the tiny Llama: both ranks train,
rank 0 alone writes events and the adapter, and the adapter has the shapes of a one-process run."""

import subprocess
import sys
from collections import Counter

import pytest
from safetensors.torch import load_file

from tuning.train import distributed
from tuning import runs
from tuning.train import trainer as train
from tuning.config import ConfigError
from tuning.runs.events import read_events


def test_launch_command_is_list_form_torchrun():
    cmd = distributed.launch_command(2, ["--workspace", "/w", "--existing-run", "a"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and "--standalone" in cmd
    assert cmd[-6:] == ["tuning", "train", "--workspace", "/w", "--existing-run", "a"]


def test_bad_distributed_choices_are_refused(tiny_config):
    with pytest.raises(ConfigError, match="distributed"):
        tiny_config.replace(distributed="zero3")
    with pytest.raises(ConfigError, match="fsdp"):
        distributed.check(tiny_config.replace(num_processes=2, distributed="fsdp", method="qlora"))
    with pytest.raises(ConfigError, match="deepspeed"):
        distributed.check(tiny_config.replace(num_processes=2, distributed="deepspeed-zero2"))
    assert distributed.num_processes(tiny_config.replace(num_processes=0)) == 1  # auto on a CPU machine


@pytest.mark.slow
def test_two_cpu_processes_train_once(tmp_path, tiny_config):
    # 24 rows, no eval split, batch 4, one epoch: 6 steps in one process, 3 when two ranks share the data.
    cfg = tiny_config.replace(max_steps=-1, num_epochs=1.0, eval_split=0.0, save_steps=2, method="lora")
    preset = tmp_path / "preset.yaml"
    preset.write_text(cfg.to_yaml())
    workspace = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "tuning", "train", "--workspace", str(workspace),
                           "--preset", str(preset), "--set", "num_processes=2"],
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert output.count("start: 3 steps") == 2, output[-3000:]  # each rank printed its own start

    (run_path,) = (workspace / "runs").iterdir()
    events, _ = read_events(run_path / "events.jsonl")
    kinds = Counter(e["event"] for e in events)
    assert kinds["start"] == 1 and kinds["end"] == 1 and kinds["error"] == 0
    assert next(e for e in events if e["event"] == "start")["max_steps"] == 3
    log_steps = [e["step"] for e in events if e["event"] == "log"]
    assert log_steps == [1, 2, 3]  # no step twice
    ckpt_steps = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert len(ckpt_steps) == len(set(ckpt_steps)) and ckpt_steps
    assert runs.summarize(run_path).status == runs.COMPLETED, runs.summarize(run_path).message
    multi = load_file(run_path / "adapter" / "adapter_model.safetensors")

    single_dir = tmp_path / "single"
    single_dir.mkdir()
    assert train.run(cfg, single_dir, tmp_path) == 0
    single = load_file(single_dir / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in multi.items()} == {k: v.shape for k, v in single.items()}
    single_events, _ = read_events(single_dir / "events.jsonl")
    assert next(e for e in single_events if e["event"] == "start")["max_steps"] == 6
