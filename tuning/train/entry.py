"""What a training process does around the training: open its run folder (a new one, the one the
dashboard or the queue made and names with --existing-run, or the one --resume names), record itself as the run's
process, train (here, or as the launcher of several processes, or as one of them), mark its end, and
hand the machine to the next queued run. `python -m tuning train` calls train() with what was typed;
every launcher (the runner, the queue, torchrun, srun) ends up here.

The run folder is always named, never guessed: a folder the runner made comes as `--existing-run RUN_ID`, a
resume as `--resume RUN_ID`; anything else makes a new run."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from tuning import config as config_mod
from tuning import runs
from tuning.runs import runner, seeds
from tuning.train import distributed


@dataclasses.dataclass
class TrainRequest:
    """What `python -m tuning train` was asked: where the config comes from and which run folder."""
    workspace: Path
    preset: str | None = None
    config: str | None = None
    set: list[str] = dataclasses.field(default_factory=list)
    run: str | None = None        # a run folder the runner made: train its config.yaml as it is
    resume: str | None = None     # a run to continue from its newest complete checkpoint
    run_id: str | None = None     # the id a new run gets
    seeds: int | None = None

    def with_overrides(self, extra: list[str]) -> TrainRequest:
        return dataclasses.replace(self, set=[*self.set, *extra])


def _record_trainer(run_path: Path) -> None:
    """This process trains the run: record it (pid, host, a fresh launch token) and keep the record
    fresh, so a dashboard on another host sees the run as alive."""
    runs.write_process_info(run_path, os.getpid())
    runs.start_heartbeat(run_path)


def _given_run_id(request: TrainRequest) -> str | None:
    given = request.run_id or os.environ.get(distributed.RUN_ID_ENV) or None
    return runs.check_run_id(given) if given else None


def _new_config(request: TrainRequest) -> config_mod.TrainConfig:
    source = request.config or request.preset
    cfg = config_mod.load(source) if source else config_mod.TrainConfig()
    return config_mod.apply_overrides(cfg, request.set)


def seed_overrides(request: TrainRequest) -> list[list[str]]:
    """The --set additions of each run this command trains: one run as given ([[]]), or, for a
    config with `seeds: N` that a person asked for (not a run folder the runner made), one per seed."""
    if request.resume or request.run:
        return [[]]
    cfg = _new_config(request)
    if cfg.seeds <= 1:
        return [[]]
    if request.run_id or os.environ.get(distributed.RUN_ID_ENV):
        raise runs.RunError(f"--run-id names one run; seeds: {cfg.seeds} makes {cfg.seeds} (named after their seeds)")
    return [[f"seed={one.seed}", f"run_name={one.run_name}"] for one in seeds.seed_configs(cfg)]


def open_run(request: TrainRequest):
    """Create the run folder (or find it: --resume, --existing-run) and record this process as its trainer,
    under the workspace lock. Returns (run folder, config, resume, created)."""
    workspace = request.workspace
    if request.resume or request.run:
        if request.preset or request.config or request.set or request.run_id or (request.resume and request.run):
            flag = "--resume" if request.resume else "--existing-run"
            raise runs.RunError(f"{flag} takes no --preset, --config, --set, --run-id or other run: a run keeps "
                                "its config")
        run_path = runs.existing_run_dir(workspace, request.resume or request.run)
        cfg = runs.read_config(run_path)
        distributed.check(cfg)
        if request.run:
            runner.await_finishing_parent(workspace)
        with runner.workspace_lock(workspace):
            runner.refuse_if_busy(workspace, except_run=run_path.name)
            if request.resume:
                runner.check_resumable(run_path)
            _record_trainer(run_path)
        return run_path, cfg, bool(request.resume), False
    cfg = _new_config(request)
    distributed.check(cfg)
    with runner.workspace_lock(workspace):
        runner.refuse_if_busy(workspace)
        run_path = runner.create_run(workspace, cfg, run_id=_given_run_id(request))
        _record_trainer(run_path)
    return run_path, cfg, False, True


def _train_worker(request: TrainRequest) -> int:
    """One process of several, started by a launcher (distributed.py says how they agree)."""
    from tuning.train import trainer

    def open_on_rank_0():
        run_path, _, resume, created = open_run(request)
        return run_path, resume, created

    workspace = request.workspace
    ours = distributed.launched_by_us()  # our launcher made the run folder and is its recorded process
    distributed.init_group()
    try:
        if ours:
            run_path = runs.existing_run_dir(workspace, request.resume or request.run)
            resume = bool(request.resume)
        else:
            run_path, resume = distributed.agree_on_run(workspace, open_on_rank_0)
            if distributed.is_main_process():
                print(f"run {run_path.name} in {run_path} ({distributed.world_size()} processes)", flush=True)
        code = trainer.run(runs.read_config(run_path), run_path, workspace, resume=resume)
        if distributed.is_main_process() and not ours:
            runs.mark_process_ended(run_path, os.getpid())
        return code
    finally:
        distributed.leave_group()


def train(request: TrainRequest) -> int:
    """`python -m tuning train`: one run, one run per seed, or this process's part of a run on several."""
    distributed.adopt_launcher_env()  # srun / mpirun ranks -> RANK, WORLD_SIZE, LOCAL_RANK
    if distributed.is_worker():
        return _train_worker(request)
    distributed.check_launch()
    if request.seeds:
        request = request.with_overrides([f"seeds={request.seeds}"])
    per_seed = seed_overrides(request)
    if len(per_seed) == 1:
        return train_one(request)[0]
    # One run per seed, one after another in this process; the queue waits until the last.
    codes, run_ids = [], []
    for extra in per_seed:
        code, run_id = train_one(request.with_overrides(extra), start_queued=extra is per_seed[-1])
        codes.append(code)
        run_ids.append(run_id)
    for group in seeds.seed_groups(request.workspace, run_ids):
        print(f"{group.name}: {len(group.seeds)} seeds ({', '.join(map(str, group.seeds))})", flush=True)
        for spread in group.spreads:
            print(f"  {spread.figure}: {spread.text()}", flush=True)
    return max(codes)


def train_one(request: TrainRequest, start_queued: bool = True) -> tuple[int, str]:
    """Train one run (this process, or the launcher of several); (exit code, run id)."""
    from tuning.train import trainer

    run_path, cfg, resume, _ = open_run(request)
    print(f"run {run_path.name} in {run_path}", flush=True)
    if distributed.num_processes(cfg) > 1:  # this process becomes the launcher of N workers
        code = distributed.launch(distributed.num_processes(cfg), run_path, request.workspace, resume=resume)
    else:
        code = trainer.run(cfg, run_path, request.workspace, resume=resume)
    runs.mark_process_ended(run_path, os.getpid())
    if start_queued:
        _start_next_queued(request.workspace, run_path.name)
    return code, run_path.name


def _start_next_queued(workspace: Path, finished: str) -> None:
    """The machine is free: the next queued run starts now (runner.start_next's lock makes this the
    one start even if the app looks at the same moment)."""
    try:
        started = runner.start_next(workspace, finished=finished)
    except Exception as exc:  # noqa: BLE001 - this run's result stands; the app retries the queue
        print(f"the next queued run did not start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    else:
        if started:
            print(f"started the next queued run: {started}", flush=True)
