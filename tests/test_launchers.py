"""`python -m tuning train` under launchers other than our own, on the tiny Llama with gloo: two
torchrun "nodes" on this machine, `accelerate launch` with two CPU processes, the ranks of a Slurm
step (srun's variables, set here by hand: there is no Slurm on this machine), a workspace the
nodes do not share, FSDP and DeepSpeed on CPU, and the real quickstart preset under torchrun.

Each launch is real: separate processes that meet in one process group. The ranks agree on one run
folder, rank 0 alone writes events and the adapter, and a run stopped under one launcher resumes
under another."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tuning import paths
from tuning.train import distributed
from tuning import runs
from tuning.train import trainer as train
from tuning.runs.events import read_events

WAIT = 600  # seconds any launch may take on a busy 2-core machine

# Launcher variables a test process may have inherited; each launch here sets its own.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    distributed.RUN_ID_ENV, distributed.OWN_LAUNCH, "TUNING_TEST_FAULT")
LAUNCH_PREFIXES = ("SLURM_", "PMI_", "OMPI_", "MV2_", "TORCHELASTIC_", "ACCELERATE_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith(LAUNCH_PREFIXES)}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def slurm_task(task: int, tasks: int, port: int, **extra: str) -> dict:
    """The variables `srun --ntasks N` gives task `task` of a one-node step (and MASTER_* as
    scripts/slurm.sbatch exports them)."""
    return clean_env(SLURM_JOB_ID="4242", SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_NODEID="0",
                     SLURM_NTASKS=str(tasks), SLURM_STEP_NUM_TASKS=str(tasks), SLURM_STEP_TASKS_PER_NODE=str(tasks),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **extra)


class Launch:
    """Processes started together, each writing to its own log file."""

    def __init__(self, tmp_path: Path, commands: list[tuple[list[str], dict]]):
        self.logs = [tmp_path / f"launch-{time.monotonic_ns()}-{i}.log" for i in range(len(commands))]
        self.procs = []
        for (command, env), log in zip(commands, self.logs):
            with open(log, "wb") as fh:
                # Own session: a launch that overruns is ended with all its workers.
                self.procs.append(subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, cwd=paths.PROJECT_DIR,
                                                   start_new_session=True))

    def wait(self, timeout: float = WAIT) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]
        finally:
            for p in self.procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the launcher's workers too
                except ProcessLookupError:
                    pass
                p.wait()

    def output(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def all_output(self) -> str:
        return "\n".join(f"--- process {i}\n{self.output(i)[-4000:]}" for i in range(len(self.procs)))


def train_args(workspace: Path, *more: str) -> list[str]:
    return ["-m", "tuning", "train", "--workspace", str(workspace), *more]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def one_run(workspace: Path) -> Path:
    folders = [p for p in (workspace / "runs").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def assert_trained_once(run_path: Path, steps: int) -> list[dict]:
    """One start, one end (completed), every step logged once, each checkpoint once."""
    events, _ = read_events(runs.events_path(run_path))
    kinds = Counter(e["event"] for e in events)
    assert kinds["start"] == 1 and kinds["end"] == 1 and kinds["error"] == 0, kinds
    assert [e["step"] for e in events if e["event"] == "log"] == list(range(1, steps + 1))
    saved = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert saved and len(saved) == len(set(saved))
    assert runs.summarize(run_path).status == runs.COMPLETED
    return events


def adapter_shapes(folder: Path) -> dict:
    return {k: tuple(v.shape) for k, v in load_file(folder / runs.ADAPTER_WEIGHTS).items()}


@pytest.fixture
def preset(tmp_path, tiny_config) -> Path:
    """The tiny model: 4 steps of 4 rows a process, a checkpoint every 2, no held-out split."""
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config.replace(max_steps=4, eval_split=0.0, save_steps=2).to_yaml())
    return path


@pytest.fixture
def single_process_shapes(tmp_path, tiny_config) -> dict:
    """The adapter tensors of the same config trained in one process (2 steps: shapes only)."""
    run_dir = tmp_path / "single"
    run_dir.mkdir()
    assert train.run(tiny_config.replace(max_steps=2, eval_split=0.0, save_steps=2), run_dir, tmp_path) == 0
    return adapter_shapes(runs.adapter_dir(run_dir))


# --- reading the launcher's variables (no processes) ----------------------------------------------

def test_slurm_step_variables_become_torch_ranks():
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4",
           "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert distributed.adopt_launcher_env(env) == "slurm"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert distributed.is_worker(env)


def test_a_batch_script_or_a_launcher_under_srun_is_left_alone():
    # The batch script itself: SLURM_PROCID and SLURM_NTASKS, but no step of several tasks.
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}
    assert distributed.adopt_launcher_env(batch) is None and "RANK" not in batch
    assert not distributed.is_worker(batch)
    # srun started torchrun, which set RANK: torchrun's ranks win.
    under = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert distributed.adopt_launcher_env(under) is None and under["RANK"] == "5"
    # One task: nothing to agree on.
    alone = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert distributed.adopt_launcher_env(alone) is None and not distributed.is_worker(alone)


def test_mpi_ranks_are_read_and_a_missing_master_address_is_one_line():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.adopt_launcher_env(env) == "mpi"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "2", "1")
    with pytest.raises(distributed.LaunchError, match="MASTER_ADDR and MASTER_PORT") as refused:
        distributed.adopt_launcher_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})
    assert "\n" not in str(refused.value)


def test_accelerate_multi_cpu_without_mpirun_is_named():
    # What `accelerate launch` gives the one process it starts for a MULTI_CPU config of 2 processes.
    with pytest.raises(distributed.LaunchError, match="mpirun"):
        distributed.check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    distributed.check_launch({"ACCELERATE_USE_CPU": "True"})  # one process asked for: fine
    distributed.check_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "x", "RANK": "0", "LOCAL_RANK": "0"})


# --- real launches --------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_torchrun_nodes_train_one_run(tmp_path, preset, single_process_shapes):
    """`torchrun --nnodes 2 --node-rank 0/1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`,
    one CPU worker a node, one shared workspace."""
    workspace, port = tmp_path / "ws", free_port()

    def node(rank: int) -> tuple[list[str], dict]:
        return ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                 "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                 "--rdzv-id", "two-nodes", *train_args(workspace, "--preset", str(preset))], clean_env())

    launch = Launch(tmp_path, [node(0), node(1)])
    assert launch.wait() == [0, 0], launch.all_output()
    run_path = one_run(workspace)
    events = assert_trained_once(run_path, 4)
    assert next(e for e in events if e["event"] == "start")["max_steps"] == 4
    both = launch.output(0) + launch.output(1)
    assert both.count("start: 4 steps") == 2, launch.all_output()  # both nodes trained
    assert both.count(f"run {run_path.name} in") == 1  # rank 0 alone opened the run
    assert adapter_shapes(runs.adapter_dir(run_path)) == single_process_shapes
    info = runs.read_process_info(run_path)
    assert info["host"] == runs.this_host() and info.get("ended")  # rank 0 recorded itself, then its end


def accelerate_launch(tmp_path, workspace, preset, distributed_type: str) -> "Launch":
    """`accelerate launch --config_file F -m tuning train ...` for 2 CPU processes of `distributed_type`."""
    config = tmp_path / "accelerate.yaml"
    config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: {distributed_type}\nuse_cpu: true\n"
                      f"num_processes: 2\nnum_machines: 1\nmachine_rank: 0\nmain_process_ip: 127.0.0.1\n"
                      f"main_process_port: {free_port()}\nmixed_precision: 'no'\n")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return Launch(tmp_path, [([accelerate, "launch", "--config_file", str(config),
                               *train_args(workspace, "--preset", str(preset))], clean_env())])


@pytest.mark.slow
def test_accelerate_launch_with_two_cpu_processes(tmp_path, preset, single_process_shapes):
    """`accelerate launch --config_file F -m tuning train ...` with 2 processes on the CPU. The
    config accelerate starts 2 CPU processes from: MULTI_GPU with use_cpu (its torchrun launcher);
    a MULTI_CPU config starts them only through mpirun, and without it we say so (next test)."""
    workspace = tmp_path / "ws"
    launch = accelerate_launch(tmp_path, workspace, preset, "MULTI_GPU")
    assert launch.wait() == [0], launch.all_output()
    run_path = one_run(workspace)
    assert_trained_once(run_path, 4)
    assert launch.output(0).count("start: 4 steps") == 2, launch.all_output()
    assert adapter_shapes(runs.adapter_dir(run_path)) == single_process_shapes


def test_accelerate_multi_cpu_config_says_it_started_one_process(tmp_path, preset):
    workspace = tmp_path / "ws"
    launch = accelerate_launch(tmp_path, workspace, preset, "MULTI_CPU")
    assert launch.wait() != [0]
    (line,) = error_lines(launch.output(0))
    assert "accelerate launched 1 process for a multi-CPU config" in line and "mpirun" in line
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


@pytest.mark.slow
def test_slurm_ranks_stop_together_and_resume_under_torchrun(tmp_path, tiny_config, single_process_shapes):
    """Two srun tasks (Slurm's variables) name their run; a SIGTERM that reaches rank 1 alone (as a
    scheduler's might) stops both after the same step with a checkpoint; torchrun then resumes the
    run to its end: one run folder, each step once."""
    workspace, port = tmp_path / "ws", free_port()
    preset = tmp_path / "six.yaml"
    preset.write_text(tiny_config.replace(max_steps=6, eval_split=0.0, save_steps=2).to_yaml())
    command = [sys.executable, *train_args(workspace, "--preset", str(preset), "--run-id", "slurm-4242")]
    hold = {"TUNING_TEST_FAULT": "hold_at_step:2"}  # both ranks wait before step 3 for release-fault
    launch = Launch(tmp_path, [(command, slurm_task(i, 2, port, **hold)) for i in range(2)])
    run_path = workspace / "runs" / "slurm-4242"
    deadline = time.time() + WAIT
    while not any(e.get("step") == 2 and e["event"] == "log" for e in read_events(runs.events_path(run_path))[0]):
        assert time.time() < deadline and all(p.poll() is None for p in launch.procs), launch.all_output()
        time.sleep(0.5)
    launch.procs[1].send_signal(signal.SIGTERM)  # rank 1 only
    time.sleep(1.0)  # its handler has run before the ranks go on
    (run_path / "release-fault").touch()
    assert launch.wait() == [0, 0], launch.all_output()
    events, _ = read_events(runs.events_path(run_path))
    assert events[-1]["event"] == "end" and events[-1]["status"] == runs.STOPPED and events[-1]["step"] == 3
    assert runs.latest_checkpoint(run_path).name == "checkpoint-3"
    assert runs.summarize(run_path).status == runs.STOPPED

    resume = Launch(tmp_path, [([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", *train_args(workspace, "--resume", "slurm-4242")], clean_env())])
    assert resume.wait() == [0], resume.all_output()
    events, _ = read_events(runs.events_path(run_path))
    starts = [e for e in events if e["event"] == "start"]
    assert [e["step"] for e in starts] == [0, 3] and "resumed at step 3" in starts[1]["message"]
    assert [e["step"] for e in events if e["event"] == "log"] == [1, 2, 3, 4, 5, 6]  # no step twice
    assert [e["status"] for e in events if e["event"] == "end"] == [runs.STOPPED, runs.COMPLETED]
    assert runs.summarize(run_path).status == runs.COMPLETED
    assert [p.name for p in (workspace / "runs").iterdir()] == ["slurm-4242"]
    assert adapter_shapes(runs.adapter_dir(run_path)) == single_process_shapes


@pytest.mark.slow
def test_nodes_without_a_shared_workspace_say_so_and_leave_nothing(tmp_path, preset):
    """Each "node" has its own workspace folder, as on machines without a shared filesystem."""
    port = free_port()
    workspaces = [tmp_path / "node0", tmp_path / "node1"]
    launch = Launch(tmp_path, [([sys.executable, *train_args(workspaces[i], "--preset", str(preset))],
                                slurm_task(i, 2, port)) for i in range(2)])
    assert launch.wait() == [2, 2], launch.all_output()
    for i in range(2):
        (line,) = error_lines(launch.output(i))
        assert "the workspace is not shared: rank 1" in line and "Nothing was trained" in line
        assert "Traceback" not in launch.output(i)
    for workspace in workspaces:  # rank 0 removed the folder it had made
        assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_deepspeed_zero2_without_deepspeed_or_cuda_says_so_at_start(tmp_path, preset):
    """Under our launcher and under srun's ranks alike: exit 2, one line, no run folder."""
    import importlib.util

    import torch

    if importlib.util.find_spec("deepspeed") is not None and torch.cuda.is_available():
        pytest.skip("this machine has DeepSpeed and CUDA: deepspeed-zero2 would start")
    workspace, port = tmp_path / "ws", free_port()
    settings = ["--preset", str(preset), "--set", "distributed=deepspeed-zero2"]
    ours = subprocess.run([sys.executable, *train_args(workspace, *settings, "--set", "num_processes=2")],
                          capture_output=True, text=True, env=clean_env(), cwd=paths.PROJECT_DIR, timeout=WAIT)
    assert ours.returncode == 2, ours.stdout + ours.stderr
    assert ours.stderr.strip().count("\n") == 0 and "deepspeed-zero2 runs on CUDA GPUs with DeepSpeed" in ours.stderr
    launch = Launch(tmp_path, [([sys.executable, *train_args(workspace, *settings)], slurm_task(i, 2, port))
                               for i in range(2)])
    assert launch.wait() == [2, 2], launch.all_output()
    for i in range(2):
        (line,) = error_lines(launch.output(i))
        assert "deepspeed-zero2 runs on CUDA GPUs with DeepSpeed" in line
        assert "Traceback" not in launch.output(i)
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


FSDP_PROBE = """
import os, sys
from pathlib import Path
from tuning import config
from tuning.train import distributed, trainer as train
cfg = config.load(sys.argv[1]).replace(max_steps=1, distributed="fsdp")
run_dir = Path(sys.argv[2]) / f"rank-{os.environ['RANK']}"
run_dir.mkdir(parents=True)
trainer, _ = train.build_trainer(cfg, run_dir, Path(sys.argv[2]), distributed.NullEventLog(), train.StopRequested())
print(f"fsdp={trainer.is_fsdp_enabled} as={trainer.accelerator.state.distributed_type}", flush=True)
trainer.train()
print(f"wrapped={type(trainer.model_wrapped).__name__}", flush=True)
"""


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes(tmp_path, preset):
    """Tried for real: the Trainer built with distributed=fsdp in 2 CPU processes (gloo), bypassing
    our start check. Where FSDP does not engage, the start check must refuse fsdp on CPU (exit 2,
    one line), and the test is skipped with what the attempt showed."""
    import torch

    probe = tmp_path / "fsdp_probe.py"
    probe.write_text(FSDP_PROBE)
    launch = Launch(tmp_path, [([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", str(probe), str(preset), str(tmp_path / "probe")],
                                clean_env(PYTHONPATH=str(paths.PROJECT_DIR)))])
    codes = launch.wait()
    said = [line for line in launch.output(0).splitlines() if line.startswith(("fsdp=", "wrapped="))]
    if codes == [0] and "fsdp=True" in said[0]:
        pytest.fail("FSDP now engages on CPU processes here: lift the CPU refusal in distributed.check and "
                    f"train the fsdp path in this test ({said})")
    if torch.cuda.is_available():
        pytest.skip(f"FSDP did not engage on CPU processes ({said or launch.all_output()[-500:]})")
    refused = subprocess.run([sys.executable, *train_args(tmp_path / "ws", "--preset", str(preset), "--set",
                                                          "num_processes=2", "--set", "distributed=fsdp")],
                             capture_output=True, text=True, env=clean_env(), cwd=paths.PROJECT_DIR, timeout=WAIT)
    assert refused.returncode == 2 and error_lines(refused.stderr) == [refused.stderr.strip()], refused.stderr
    assert "fsdp shards across GPUs only" in refused.stderr
    pytest.skip("FSDP cannot run on CPU processes here: the Trainer built with fsdp in 2 gloo processes reported "
                f"{' '.join(said) or 'nothing'} (accelerate runs CPU processes as MULTI_CPU and drops the FSDP "
                "plugin: DDP under another name); python -m tuning train refuses fsdp on CPU at start")


@pytest.mark.slow
def test_quickstart_preset_under_torchrun(tmp_path):
    """The command from the issue, cut to 2 steps: `python -m torch.distributed.run --nproc_per_node 2
    -m tuning train --preset presets/quickstart.yaml --set max_steps=2` (held-out evaluation off), in a
    fresh workspace as a new user has it: the embedded model is converted into it once, by rank 0,
    while rank 1 waits (both converting at once broke the folder)."""
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               *train_args(workspace, "--preset", "presets/quickstart.yaml", "--set", "max_steps=2",
                           "--set", "eval_split=0", "--set", "per_device_batch_size=2", "--set", "max_length=128",
                           "--set", "save_steps=2")]
    launch = Launch(tmp_path, [(command, clean_env())])
    assert launch.wait() == [0], launch.all_output()
    run_path = one_run(workspace)
    events = assert_trained_once(run_path, 2)
    assert [e["status"] for e in events if e["event"] == "end"] == [runs.COMPLETED]
    assert runs.has_final_adapter(run_path)


def test_a_run_on_another_host_is_followed_by_its_heartbeat(tmp_path, tiny_config):
    """The dashboard on the head node sees a run whose rank 0 trains on another node: alive while
    process.json is touched and the run has not recorded its end; Stop says where to stop it."""
    from tuning.runs import runner

    workspace = tmp_path / "ws"
    with runner.workspace_lock(workspace):
        run_path = runner.create_run(workspace, tiny_config)
    info = {"pid": 1, "create_time": 0.0, "pgid": None, "host": "node-b", "launch": "x"}
    (run_path / runs.PROCESS).write_text(json.dumps(info))
    assert runs.remote_host(run_path) == "node-b" and runs.training_process(run_path) is None
    assert runs.process_alive(run_path) and runs.summarize(run_path).status == runs.STARTING
    assert [s.run_id for s in runs.active_runs(workspace)] == [run_path.name]  # one run at a time holds
    with pytest.raises(runs.RunError, match="trains on node-b"):
        runner.stop(workspace, run_path.name)
    stale = time.time() - runs.REMOTE_STALE_S - 5
    os.utime(run_path / runs.PROCESS, (stale, stale))
    assert not runs.process_alive(run_path)  # its heartbeat stopped: gone
    (run_path / runs.PROCESS).write_text(json.dumps({**info, "ended": time.time()}))
    assert not runs.process_alive(run_path)  # fresh, but it recorded its end
    assert runner.stop(workspace, run_path.name) is False


@pytest.mark.slow
def test_a_grpo_run_under_torchrun_with_two_cpu_processes(tmp_path, tiny_config):
    """GRPO in 2 processes: each samples answers to its share of the step's prompts, the rewards are
    logged once (rank 0), and the run ends completed with its adapter, each step once."""
    from conftest import write_jsonl

    sums = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + 2?", "answer": i + 2} for i in range(16)])
    preset = tmp_path / "grpo.yaml"
    preset.write_text(tiny_config.replace(objective="grpo", dataset=str(sums), rewards="answer,length:1-8*0.5",
                                          num_generations=2, max_completion_length=8, max_steps=2, save_steps=2,
                                          eval_split=0.0, probe_every_checkpoint=False).to_yaml())
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *train_args(workspace, "--preset", str(preset))]
    launch = Launch(tmp_path, [(command, clean_env())])
    assert launch.wait() == [0], launch.all_output()
    assert launch.output(0).count("start: 2 steps") == 2, launch.all_output()  # both processes trained
    run_path = one_run(workspace)
    events = assert_trained_once(run_path, 2)
    logs = [e for e in events if e["event"] == "log"]
    assert all("rewards/answer/mean" in e["objective"] and e["samples"] for e in logs)
    assert [e["status"] for e in events if e["event"] == "end"] == [runs.COMPLETED]
    assert runs.has_final_adapter(run_path)
