"""More than one process: launch through torch.distributed.run (torchrun), never our own engine.

`python -m tuning train` stays the one entry point. When the config asks for more than one
process, that command becomes a launcher: it creates the run folder (once), then starts
`python -m torch.distributed.run --standalone --nproc_per_node N -m tuning train --config ...`
as a list-form child in the same process group and waits. Each worker sees RANK/LOCAL_RANK in its
environment, skips the run-folder bookkeeping the launcher already did, and trains; only rank 0
writes events, COMPLETE markers and the final adapter (the Trainer itself saves checkpoints once).

- ddp (default): every process holds a full copy of the (4-bit or full) base; gradients of the
  adapter are all-reduced. Simplest and what LoRA usually needs: the adapter is small.
- fsdp: parameters, gradients and optimizer state sharded across processes (FSDP2), for bases that
  do not fit one GPU in full precision. Not for 4-bit bases.
- deepspeed-zero2: optimizer state and gradients sharded by DeepSpeed ZeRO stage 2; needs
  `pip install deepspeed` and CUDA.
On CPU the processes talk over gloo; on GPUs over NCCL.
"""

from __future__ import annotations

import os
import sys

from tuning.config import ConfigError, TrainConfig

# Environment variables torchrun sets in every worker.
WORKER_MARKERS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def is_worker() -> bool:
    """True inside a process started by torch.distributed.run."""
    return any(os.environ.get(name) is not None for name in WORKER_MARKERS)


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    return rank() == 0


def num_processes(cfg: TrainConfig) -> int:
    """How many processes to launch: the config's number, or with 0 ("auto") one per visible GPU
    (so a multi-GPU machine uses all its GPUs without being told) and one on CPU."""
    if cfg.num_processes > 0:
        return cfg.num_processes
    return max(1, gpu_count())


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check(cfg: TrainConfig) -> None:
    """Refuse combinations that cannot work, with a message naming the key."""
    n = num_processes(cfg)
    gpus = gpu_count()
    if n > 1 and gpus and n > gpus:
        raise ConfigError(f"num_processes: {n} processes but only {gpus} GPUs on this machine")
    if n > 1 and cfg.distributed == "fsdp" and cfg.method == "qlora":
        raise ConfigError("distributed: fsdp cannot shard a 4-bit base here; use method=lora with fsdp, or ddp")
    if n > 1 and cfg.distributed == "deepspeed-zero2":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("distributed: deepspeed-zero2 needs the deepspeed package (pip install deepspeed)")
        if not gpus:
            raise ConfigError("distributed: deepspeed-zero2 needs CUDA GPUs; use ddp on CPU")


def launch_command(n: int, train_args: list[str]) -> list[str]:
    """The torchrun command line, list-form. `train_args` are our own flags (paths we resolved,
    run ids we validated), each a separate argument: nothing passes through a shell."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(n)),
            "-m", "tuning", "train", *train_args]


def trainer_kwargs(cfg: TrainConfig) -> dict:
    """Extra SFTConfig arguments for a multi-process run (empty for one process)."""
    import torch

    if not is_worker() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return {}
    kwargs: dict = {"ddp_backend": "nccl" if torch.cuda.is_available() else "gloo",
                    # LoRA freezes most of the model: DDP must not wait for gradients that never come.
                    "ddp_find_unused_parameters": False}
    if cfg.distributed == "fsdp":
        kwargs.update(fsdp=True, fsdp_config={"version": 2, "state_dict_type": "FULL_STATE_DICT"})
    elif cfg.distributed == "deepspeed-zero2":
        kwargs["deepspeed"] = {
            "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
        }
    return kwargs


class NullEventLog:
    """What ranks other than 0 write events to: nothing (rank 0 speaks for the run)."""

    def append(self, event: str, **fields) -> dict:
        return {}


def launch(n: int, run_path, workspace, resume: bool = False) -> int:
    """Run the training of `run_path` in `n` processes and wait; returns the exit code.

    The caller (`python -m tuning train`, itself started by the runner in its own process group)
    stays the run's recorded process, so Stop's SIGTERM to the group reaches torchrun and every
    worker directly; here it is only noted, and we keep waiting for the workers to save and end."""
    import signal
    import subprocess
    from pathlib import Path

    from tuning import record

    run_path, workspace = Path(run_path), Path(workspace)
    train_args = ["--workspace", str(workspace)]
    train_args += ["--resume", run_path.name] if resume else ["--config", str(record.config_path(run_path))]
    command = launch_command(n, train_args)
    print(f"launching {n} processes: {' '.join(command)}", flush=True)
    # A function handler (not SIG_IGN) so the child starts with default handlers after exec.
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parent.parent))
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        # A worker other than rank 0 (or torchrun itself) may have failed silently from the events'
        # point of view: make sure the run ends with an error event the dashboard can show.
        events, _ = record.read_run_events(run_path)
        if record.EventSummary().extend(events).final is None:
            record.event_log(run_path).append(
                "error", kind="DistributedFailure",
                message=f"a training process failed (torch.distributed.run exit code {code}); see train.log")
    return code
