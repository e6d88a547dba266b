"""More than one process: launch through torch.distributed.run (torchrun), never our own engine.

`python -m tuning train` stays the one entry point, two ways:
- Our launcher (one machine): when the config asks for more than one process, that command creates
  the run folder (once), then starts `python -m torch.distributed.run --standalone --nproc_per_node N
  -m tuning train --config ...` as a list-form child in the same process group and waits. Its
  workers know (OWN_LAUNCH in their environment) that the folder exists and the launcher holds it.
- Any other launcher (torchrun single or multi-node, `accelerate launch`, a Slurm `srun` of one task
  per process, mpirun): every process runs the same `python -m tuning train --preset ...`. Slurm and
  MPI ranks are read into RANK/WORLD_SIZE/LOCAL_RANK first (adopt_launcher_env). The processes join
  one process group (gloo for this exchange; NCCL too on GPUs, which the Trainer then uses); rank 0
  alone creates the run folder (or finds it, for --resume) in the shared workspace and records itself
  as the trainer; it broadcasts the run id; every other rank checks that it sees that very folder (the
  token rank 0 wrote in process.json) and reads the config from it. A rank that cannot see it means
  the workspace is not shared: every rank says so in one line and exits 2, and rank 0 removes the
  folder it made. `--run-id ID` (or TUNING_RUN_ID) names the run instead of the time.
Either way only rank 0 writes events, COMPLETE markers and the final adapter (the Trainer itself
saves checkpoints once), and a Stop (SIGTERM) that reaches any rank stops all of them after the
same step (any_rank), so no rank waits forever for a step the others skipped.

- ddp (default): every process holds a full copy of the (4-bit or full) base; gradients of the
  adapter are all-reduced. Simplest and what LoRA usually needs: the adapter is small.
- fsdp: parameters, gradients and optimizer state sharded across processes (FSDP2), for bases that
  do not fit one GPU in full precision. Not for 4-bit bases, and GPUs only (on CPU processes accelerate
  drops the FSDP plugin and wraps DDP).
- deepspeed-zero2: optimizer state and gradients sharded by DeepSpeed ZeRO stage 2; needs
  `pip install deepspeed` and CUDA.
On CPU the processes talk over gloo; on GPUs over NCCL.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tuning.config import ConfigError, TrainConfig
from tuning.paths import PROJECT_DIR

# Environment variables torchrun sets in every worker.
WORKER_MARKERS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")
# Set by our own launcher for its workers: the run folder exists and the launcher is its recorded process.
OWN_LAUNCH = "TUNING_LAUNCHED_RUN"
RUN_ID_ENV = "TUNING_RUN_ID"  # the run id, given instead of made (e.g. slurm-$SLURM_JOB_ID)
# How long a rank waits for the run folder rank 0 made to show up (a shared filesystem may lag).
SHARED_FS_WAIT_S = 10.0
# Where MPI launchers put the rank (the order accelerate reads them in), then Slurm's srun.
MPI_VARIABLES = {"RANK": ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"),
                 "WORLD_SIZE": ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"),
                 "LOCAL_RANK": ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"),
                 "LOCAL_WORLD_SIZE": ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")}


class LaunchError(ValueError):
    """The processes of a launch cannot train one run together (a one-line message, exit 2)."""


def adopt_launcher_env(env=None) -> str | None:
    """Turn a Slurm step's or an MPI launcher's rank variables into the RANK / WORLD_SIZE /
    LOCAL_RANK / LOCAL_WORLD_SIZE that torch.distributed, accelerate and this module read. Only
    where no launcher below them set RANK already (srun running torchrun leaves torchrun's). Returns
    the launcher's name, or None. Slurm counts only inside a step of several tasks: a batch script
    itself also has SLURM_PROCID=0 and SLURM_NTASKS, but no SLURM_STEP_NUM_TASKS."""
    env = os.environ if env is None else env
    if env.get("RANK") is not None:
        return None
    found = {name: next((env[v] for v in names if env.get(v) is not None), None)
             for name, names in MPI_VARIABLES.items()}
    source = "mpi"
    if found["RANK"] is None and env.get("SLURM_PROCID") is not None:
        per_node = re.match(r"^(\d+)(\(x\d+\))?$", env.get("SLURM_STEP_TASKS_PER_NODE", ""))
        found = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS"),
                 "LOCAL_RANK": env.get("SLURM_LOCALID"), "LOCAL_WORLD_SIZE": per_node and per_node.group(1)}
        source = "slurm"
    if found["RANK"] is None or not found["WORLD_SIZE"] or int(found["WORLD_SIZE"]) <= 1:
        return None
    if not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        raise LaunchError(f"{source} started {found['WORLD_SIZE']} processes but MASTER_ADDR and MASTER_PORT are "
                          "not set: export them (rank 0's host and a free port) before the launch, as "
                          "scripts/slurm.sbatch does")
    for name, value in found.items():
        if value is not None:
            env[name] = str(value)
    env.setdefault("LOCAL_RANK", "0")
    return source


def check_launch(env=None) -> None:
    """Refuse a launch that silently gave fewer processes than asked. `accelerate launch` with a
    multi-CPU config starts several processes only through mpirun (--mpirun_hostfile); without it
    accelerate starts one process and only sets MASTER_ADDR/MASTER_PORT (which it does only when more
    than one process was asked for)."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and env.get("MASTER_ADDR") and not is_worker(env):
        raise LaunchError("accelerate launched 1 process for a multi-CPU config: accelerate starts several CPU "
                          "processes only through mpirun (--mpirun_hostfile); for several processes on this "
                          "machine use distributed_type: MULTI_GPU with use_cpu: true, or torchrun")


def is_worker(env=None) -> bool:
    """True inside a process started by a launcher with others (torchrun, accelerate, or Slurm/MPI
    once adopt_launcher_env has read their variables)."""
    env = os.environ if env is None else env
    return any(env.get(name) is not None for name in WORKER_MARKERS)


def launched_by_us() -> bool:
    return bool(os.environ.get(OWN_LAUNCH))


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


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
    """Refuse combinations that cannot work, with a message naming the key. Under a launcher the
    launcher decided the number of processes (num_processes is ours alone)."""
    n = world_size() if is_worker() else num_processes(cfg)
    gpus = gpu_count()
    if n > 1 and gpus and n > gpus and not is_worker():
        raise ConfigError(f"num_processes: {n} processes but only {gpus} GPUs on this machine")
    if n > 1 and cfg.distributed == "fsdp" and cfg.method == "qlora":
        raise ConfigError("distributed: fsdp cannot shard a 4-bit base here; use method=lora with fsdp, or ddp")
    if n > 1 and cfg.distributed == "fsdp" and not gpus:
        # Measured (tests/test_launchers.py tries it): accelerate runs CPU processes as MULTI_CPU and
        # drops the FSDP plugin, so the Trainer would wrap DDP and call it fsdp.
        raise ConfigError("distributed: fsdp shards across GPUs only; on CPU processes accelerate ignores it "
                          "(the Trainer would run ddp under its name): use distributed=ddp")
    if n > 1 and cfg.distributed == "deepspeed-zero2":
        import importlib.util

        missing = [what for what, absent in (("the deepspeed package (pip install deepspeed)",
                                              importlib.util.find_spec("deepspeed") is None),
                                             ("CUDA GPUs", not gpus)) if absent]
        if missing:
            raise ConfigError(f"distributed: deepspeed-zero2 runs on CUDA GPUs with DeepSpeed; this machine lacks "
                              f"{' and '.join(missing)}: use distributed=ddp")


def launch_command(n: int, train_args: list[str]) -> list[str]:
    """The torchrun command line, list-form. `train_args` are our own flags (paths we resolved,
    run ids we validated), each a separate argument: nothing passes through a shell."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(n)),
            "-m", "tuning", "train", *train_args]


def init_group() -> None:
    """Join the launch's process group (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE). Gloo
    carries Python objects between CPUs; on GPUs NCCL is added for tensors on them, and the Trainer
    (accelerate) reuses this group instead of making its own."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _sees(run_path: Path, launch: str | None) -> bool:
    """Whether this process sees the run folder rank 0 recorded itself in (same launch token)."""
    from tuning import runs

    deadline = time.time() + SHARED_FS_WAIT_S
    while True:
        if runs.read_process_info(run_path).get("launch") == launch:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.2)


def agree_on_run(workspace: Path, open_run) -> tuple[Path, bool]:
    """Every rank of an external launch: rank 0 calls `open_run()` -> (run folder, resume, created);
    the others learn the run id through the process group and check they see the same folder.
    Returns (run folder, resume) on every rank; raises on every rank when rank 0 could not open the
    run (rank 0 re-raises its own error) or a rank cannot see the folder (LaunchError)."""
    import torch.distributed as dist

    from tuning import runs
    from tuning.runs import runner

    me, host = rank(), socket.gethostname()
    failure, created, box = None, False, [None]
    if me == 0:
        try:
            run_path, resume, created = open_run()
            box[0] = {"run_id": run_path.name, "resume": resume, "host": host,
                      "launch": runs.read_process_info(run_path).get("launch")}
        except Exception as exc:  # noqa: BLE001 - the others must hear of it, or they wait forever
            failure, box[0] = exc, {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    dist.broadcast_object_list(box, src=0)
    agreed = box[0]
    if failure is not None:
        raise failure
    if "error" in agreed:
        raise LaunchError(f"rank 0 could not start the run: {agreed['error']}")
    run_path = runs.run_dir(workspace, agreed["run_id"])
    views: list = [None] * world_size()
    dist.all_gather_object(views, (me, host, me == 0 or _sees(run_path, agreed["launch"])))
    blind = [(r, h) for r, h, seen in views if not seen]
    if blind:
        if me == 0 and created:
            runner.discard_new_run(run_path)
        ranks = ", ".join(f"rank {r} on {h}" for r, h in blind)
        raise LaunchError(f"the workspace is not shared: {ranks} cannot see the run folder {agreed['run_id']} that "
                          f"rank 0 on {agreed['host']} made; give every node the same workspace on a shared "
                          "filesystem (--workspace or TUNING_WORKSPACE). Nothing was trained")
    return run_path, agreed["resume"]


@contextmanager
def main_process_first():
    """Rank 0 runs the block first, then the other ranks: what writes into the shared workspace (the
    embedded model converted once into models/, a download) is done once, and the others find it."""
    import torch.distributed as dist

    together = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if together and not is_main_process():
        any_rank(False, device="cpu")  # waits for rank 0's, below (a barrier over gloo)
    try:
        yield
    finally:
        if together and is_main_process():
            any_rank(False, device="cpu")


def any_rank(flag: bool, device=None) -> bool:
    """True on every rank when `flag` is true on any (a Stop that reached one rank); one tiny
    all-reduce per step, only with several processes."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def trainer_kwargs(cfg: TrainConfig) -> dict:
    """Extra SFTConfig arguments for a multi-process run (empty for one process)."""
    import torch

    if not is_worker() or world_size() <= 1:
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

    from tuning import runs

    run_path, workspace = Path(run_path), Path(workspace)
    env = {**os.environ, OWN_LAUNCH: run_path.name}
    train_args = ["--workspace", str(workspace)]
    train_args += ["--resume" if resume else "--existing-run", run_path.name]
    command = launch_command(n, train_args)
    print(f"launching {n} processes: {' '.join(command)}", flush=True)
    # A function handler (not SIG_IGN) so the child starts with default handlers after exec.
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=str(PROJECT_DIR),
                                env=env)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0:
        # A worker other than rank 0 (or torchrun itself) may have failed silently from the events'
        # point of view: make sure the run ends with an error event the dashboard can show.
        events, _ = runs.read_run_events(run_path)
        if runs.EventSummary().extend(events).final is None:
            runs.event_log(run_path).append(
                "error", kind="DistributedFailure",
                message=f"a training process failed (torch.distributed.run exit code {code}); see train.log")
    return code
