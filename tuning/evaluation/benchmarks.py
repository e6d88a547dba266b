"""Standard benchmarks, base against tuned: what did the fine-tune do to MMLU, HellaSwag, ARC, GSM8K or
a suite of your own? lm-evaluation-harness (`lm-eval`, an optional install: requirements-eval.txt) is
the engine, driven in this process on the run's own model: the base is that model with its adapter
switched off (4-bit for QLoRA, as trained), the tuned one the same weights with it on, so there is
never a second copy of the base in memory.

What may be asked, comma-separated (`parse`):
  bundled               the suite shipped in tuning/evaluation/bench_suite/ (offline; about a minute on 2
                        cores for the embedded model)
  hellaswag, arc_easy   any lm-eval task, group or tag name: its data from the Hub, or from the local
                        Hugging Face cache with HF_HUB_OFFLINE=1
  path/to/task.yaml     a task (or group) YAML of your own; its local data files are read relative to it
A `limit` asks only the first N questions of each task, and the results then say they are a sample.

Each task runs base then tuned, a chunk of requests at a time: between chunks the progress (task,
questions, ETA) is reported and a Stop is honoured; the model's lock is held per chunk only, so the
Playground is not shut out for the whole run. Per task: each side's score and the standard error
lm-eval reports, the difference, and whether it is larger than the noise (bench_report.py says how).
benchmarks.json (through tuning/runs/) keeps the newest result of every task asked so far; the
Evaluation tab, `python -m tuning eval --benchmarks`, Compare and the model card read it.
"""

from __future__ import annotations

import copy
import difflib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuning import runs
from tuning.evaluation.bench_report import BASE, TUNED, clock, summarize

SUITE_DIR = Path(__file__).resolve().parent / "bench_suite"
SUITE = "bundled"  # the name that asks for every task of the bundled suite
INSTALL = "pip install -r requirements-eval.txt"
NOT_INSTALLED = f"lm-eval is not installed: {INSTALL} (in the app's virtual environment), then restart the app"
# Sequences per forward, and requests between two looks at the Stop flag (8 forward batches). A CPU:
# the logits of 8 x 700 tokens (MMLU 5-shot) x 49k vocab stay near 1 GB. A GPU: a fixed 32, as lm-eval's
# batch_size=auto would measure again at every chunk.
CPU_BATCH, GPU_BATCH = 8, 32
SEED = 1234  # lm-eval's own default seed for its few-shot sampler: runs with the same tasks ask the same prompts


class BenchError(runs.RunError):
    """A benchmark request that cannot run (unknown task, missing file, bad limit, no lm-eval); the
    message says what to change. A RunError: the CLI exits 2 and the page shows it in its box."""


class BenchmarksStopped(Exception):
    """A Stop arrived between two chunks: the tasks finished on both sides are kept."""


# --- the engine ---------------------------------------------------------------------------------

def engine_version() -> str | None:
    """lm-eval's version, or None when it is not installed (nothing is imported to find out)."""
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def require_engine() -> str:
    version = engine_version()
    if version is None:
        raise BenchError(NOT_INSTALLED)
    return version


# --- what to run --------------------------------------------------------------------------------

def check_limit(value) -> int | None:
    """Questions per task: None (all of them) or a whole number from 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        limit = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        limit = None
    if limit is None or limit < 1:
        raise BenchError(f"limit: expected a whole number of questions per task (1 or more), got {value!r}")
    return limit


@dataclass(frozen=True)
class TaskSpec:
    """One item of what was asked: an lm-eval name, or a task YAML file."""
    text: str  # as typed
    name: str | None = None
    yaml: Path | None = None

    @property
    def source(self) -> str:
        if self.yaml is None:
            return "lm-eval"
        return "bundled" if self.yaml.parent == SUITE_DIR else self.yaml.name


SUITE_TASKS = ("general", "arithmetic")  # the bundled suite's YAML files, in the order they run


def suite() -> list[TaskSpec]:
    """The bundled suite's tasks, one YAML each."""
    return [TaskSpec(stem, yaml=SUITE_DIR / f"{stem}.yaml") for stem in SUITE_TASKS]


def _looks_like_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text


def parse(text: str, resolve_path: Callable[[str], Path] | None = None) -> list[TaskSpec]:
    """The tasks named in `text` (comma-separated), in order, each once. A file is resolved by
    `resolve_path` (the page: under its allowed folders) or against the working directory."""
    items = [t.strip() for t in str(text or "").split(",") if t.strip()]
    if not items:
        raise BenchError(f"benchmarks: name at least one task: {SUITE} (the suite shipped here), an lm-eval task "
                         "name such as hellaswag or arc_easy, or a task .yaml file")
    bundled = {s.yaml.stem: s for s in suite()} | {_task_name(s.yaml): s for s in suite()}
    specs: list[TaskSpec] = []
    for item in items:
        if item == SUITE:
            found = suite()
        elif item in bundled:
            found = [bundled[item]]
        elif _looks_like_file(item):
            path = resolve_path(item) if resolve_path else Path(item).expanduser().resolve()
            if not Path(path).is_file():
                raise BenchError(f"benchmark task file {item!r} does not exist")
            found = [TaskSpec(item, yaml=Path(path))]
        else:
            found = [TaskSpec(item, name=item)]
        specs += [s for s in found if s not in specs]
    return specs


def _task_name(path: Path) -> str | None:
    """The `task:` (or `group:`) a YAML declares, read as plain data (no code runs)."""
    import yaml

    class Plain(yaml.SafeLoader):
        pass

    Plain.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function tags: not needed here
    try:
        # yaml.safe_load refuses lm-eval's `!function` tags; a SafeLoader that reads them as None builds
        # plain data only, as safe_load does
        loader = Plain(Path(path).read_text(encoding="utf-8"))
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("task") or value.get("group")
    return name if isinstance(name, str) else None


# --- loading the tasks (lm-eval) ----------------------------------------------------------------

@dataclass
class LoadedSpec:
    """A spec's tasks as lm-eval built them, and how many questions each side will be asked."""
    spec: TaskSpec
    name: str  # the row's name: the task, or the group whose aggregate score is shown
    task_dict: dict
    counts: dict[str, tuple[int, int]]  # task -> (questions asked, questions it holds)

    @property
    def questions(self) -> int:
        return sum(asked for asked, _ in self.counts.values())

    @property
    def total(self) -> int:
        return sum(held for _, held in self.counts.values())


_MANAGERS: dict[bool, object] = {}  # lm-eval's index of its ~15,000 task names takes seconds: built once


def task_manager(defaults: bool):
    """lm-eval's TaskManager, with its own tasks indexed (defaults) or only what we hand it."""
    if defaults not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        _MANAGERS[defaults] = TaskManager(include_defaults=defaults)
    return _MANAGERS[defaults]


def _yaml_config(path: Path) -> dict:
    """A task YAML as lm-eval reads it (includes and !function resolved), its relative local data files
    made relative to the YAML (lm-eval would read them from the working directory)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(path)
    except Exception as exc:  # noqa: BLE001 - any parse or import failure is the file's problem
        raise BenchError(f"{path.name}: not a readable lm-eval task YAML ({_first_line(exc)})") from None
    if not isinstance(config.get("task"), str) and not isinstance(config.get("group"), str):
        raise BenchError(f"{path.name}: an lm-eval task YAML names its task (a `task:` line)")
    if is_group(config):  # its member tasks declared in YAMLs beside it go in whole, their data resolved too
        beside = {name: p for p in sorted(path.parent.glob("*.y*ml")) if p != path and (name := _task_name(p))}
        members = config["task"] if isinstance(config["task"], list) else [config["task"]]
        config["task"] = [_yaml_config(beside[m]) if isinstance(m, str) and m in beside else m for m in members]
        return config
    kwargs = config.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if files:
        def near(value):
            if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
                return str(path.parent / value)
            return value
        if isinstance(files, dict):
            files = {split: [near(v) for v in value] if isinstance(value, list) else near(value)
                     for split, value in files.items()}
        else:
            files = [near(v) for v in files] if isinstance(files, list) else near(files)
        config["dataset_kwargs"] = {**kwargs, "data_files": files}
    return config


def _group(config: dict, manager):
    """A group YAML's Group, its members built one by one (lm-eval's loader hands an inline group's own
    keys down to its member tasks, which refuse them): a member YAML beside it as read by _yaml_config,
    a name from lm-eval's own tasks."""
    import dataclasses

    from lm_eval.api.group import Group
    from lm_eval.config.group import GroupConfig

    members = config["task"]
    names = [m["task"] if isinstance(m, dict) else m for m in members]
    known = {f.name for f in dataclasses.fields(GroupConfig)}
    group = Group.from_config({k: v for k, v in config.items() if k in known} | {"task": names})
    for member in members:
        if isinstance(member, dict):
            children = list(manager.load([member])["tasks"].values())
        else:
            built = task_manager(defaults=True).load([member])
            groups = built.get("groups", {})
            children = [groups[member]] if member in groups else list(built["tasks"].values())
        for child in children:
            group.add(child)
    return group


def is_group(config: dict) -> bool:
    """A group YAML names a group and lists its tasks (a task YAML names one task)."""
    return isinstance(config.get("group"), str) and not isinstance(config.get("task"), str)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _unknown(name: str, known: list[str]) -> BenchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else "; lm-eval's task names: python -m lm_eval ls tasks"
    return BenchError(f"unknown benchmark task {name!r}: not an lm-eval task, group or tag, nor a .yaml file{hint}")


def _data_problem(label: str, exc: BaseException) -> BenchError:
    import os

    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "YES", "yes")
    hint = (" (offline: only data already in the Hugging Face cache can be read)" if offline else
            " (no network? with HF_HUB_OFFLINE=1 the data already in the Hugging Face cache is used)")
    return BenchError(f"benchmark {label}: its questions could not be loaded{hint}: {_first_line(exc)}")


def load(specs: list[TaskSpec], limit: int | None) -> list[LoadedSpec]:
    """Every spec's tasks built by lm-eval (and their data read) before any model time is spent, so a
    bad name or unreachable data fails at once."""
    require_engine()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task INFO lines would drown the CLI's
    named = [s for s in specs if s.name is not None]
    manager = task_manager(defaults=bool(named))
    loaded = []
    for spec in specs:
        if spec.name is not None:
            if spec.name not in manager.all_tasks:
                raise _unknown(spec.name, manager.all_tasks)
            request, label = spec.name, spec.name
        else:
            request = _yaml_config(spec.yaml)
            label = request["group"] if is_group(request) else request["task"]
        try:
            task_dict = manager.load([_group(request, manager) if is_group(request) else request])
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - the datasets library raises many kinds
            raise _data_problem(label, exc) from None
        counts = {}
        for task_name, task in task_dict["tasks"].items():
            if task.get_config("num_fewshot") is None:  # as lm_eval.simple_evaluate does
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=SEED)
            held = len(task.eval_docs)
            counts[task_name] = (min(held, limit) if limit else held, held)
        if label in task_dict.get("groups", {}) or len(counts) == 1:
            loaded.append(LoadedSpec(spec, label if len(counts) > 1 else next(iter(counts)), task_dict, counts))
        else:  # a tag: a row for each of its tasks
            loaded += [LoadedSpec(spec, name, {"tasks": {name: task}, "groups": {}, "group_map": {}},
                                  {name: counts[name]}) for name, task in task_dict["tasks"].items()]
    return loaded


# --- running them on the run's model ------------------------------------------------------------

@dataclass
class Progress:
    """Where a benchmark run stands, for the page and the CLI."""
    task: str = ""
    side: str = ""
    done: int = 0  # questions of this task and side with every request answered
    questions: int = 0
    overall_done: int = 0  # over every task and both sides
    overall: int = 0
    elapsed: float = 0.0
    finished: list[str] = field(default_factory=list)

    @property
    def eta(self) -> float | None:
        if not self.overall_done:
            return None
        return self.elapsed / self.overall_done * max(0, self.overall - self.overall_done)

    def text(self) -> str:
        eta = self.eta
        left = f", about {clock(eta)} left" if eta is not None else ""
        return (f"{self.task}, {self.side} model: {self.done}/{self.questions} questions; overall "
                f"{self.overall_done}/{self.overall} ({clock(self.elapsed)} so far{left})")


def watched(inner, lock, switch, on_chunk, stopped):
    """An lm-eval LM that hands `inner` (an HFLM) 8 batches of requests at a time, each under `lock` and with
    `switch()` choosing base or tuned; `on_chunk(requests)` after each; BenchmarksStopped when
    `stopped()` says so between two chunks."""
    from lm_eval.api.model import LM

    class Watched(LM):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def _chunked(self, method: str, requests: list) -> list:
            answers, size = [], 8 * inner.batch_size_per_gpu
            for i in range(0, len(requests), size):
                if stopped():
                    raise BenchmarksStopped()
                chunk = requests[i:i + size]
                with lock, switch():
                    answers += getattr(self.inner, method)(chunk, disable_tqdm=True)
                on_chunk(chunk)
            return answers

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._chunked("loglikelihood", requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._chunked("loglikelihood_rolling", requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._chunked("generate_until", requests)

        def __getattr__(self, name):  # tokenizer_name, apply_chat_template, ...: the inner model's
            return getattr(self.__dict__["inner"], name)

    return Watched()


def evaluate_side(lm, loaded: LoadedSpec, limit: int | None) -> dict:
    """lm-eval's results for one spec on one side (the LM's switch decides which)."""
    import contextlib
    import sys

    from lm_eval import evaluator

    # lm-eval prints notes ("bootstrapping for stddev"): stdout stays the results' (`eval --json`)
    with contextlib.redirect_stdout(sys.stderr):
        return evaluator.evaluate(
            lm=lm, task_dict=loaded.task_dict, limit=limit, bootstrap_iters=1000, log_samples=True)


def run(run_dir: Path, workspace: Path, text: str, limit=None, *, resolve_path=None, checkpoint: str | None = None,
        progress: Callable[[Progress], None] | None = None, stopped: Callable[[], bool] | None = None) -> dict:
    """Benchmark a run's model, base and tuned, on the tasks `text` names; write and return the
    record (benchmarks.json). A Stop (or Ctrl-C) keeps the tasks finished on both sides, the record
    then saying it is partial. Nothing is written when no task finished."""
    from tuning.infer import generation, playground

    run_dir = Path(run_dir)
    limit = check_limit(limit)
    specs = parse(text, resolve_path)
    version = require_engine()
    try:
        cfg = runs.read_config(run_dir)
    except Exception as exc:  # noqa: BLE001 - a ConfigError names the file
        raise BenchError(f"run {run_dir.name}: {exc}") from None
    adapter = runs.current_adapter(run_dir, checkpoint)
    started = time.time()
    loaded = load(specs, limit)
    stopped = stopped or (lambda: False)
    comparer = playground.comparer_for_run(run_dir, workspace)
    with comparer.lock:  # HFLM puts the shared model in eval mode and ties its weights: not under a generation
        name = comparer.attach(adapter)
        lm = _hf_model(comparer)
    step = runs.adapter_step(run_dir, adapter)
    model_ready = time.time()
    state = Progress(overall=2 * sum(s.questions for s in loaded))
    rows, stopped_at = [], None

    def report() -> None:
        state.elapsed = time.time() - model_ready
        if progress is not None:
            progress(state)

    for spec in loaded:
        sides = {}
        for side in (BASE, TUNED):
            seen: set = set()
            state.task, state.side, state.done, state.questions = spec.name, side, 0, spec.questions
            report()

            def on_chunk(requests) -> None:
                seen.update((r.task_name, r.doc_id) for r in requests)
                state.overall_done += len(seen) - state.done
                state.done = len(seen)
                report()

            def switch(side=side):
                return generation.active_adapter(comparer.peft, generation.BASE if side == BASE else name)

            t0 = time.time()
            try:
                result = evaluate_side(watched(lm, comparer.lock, switch, on_chunk, stopped), spec, limit)
            except (BenchmarksStopped, KeyboardInterrupt):
                stopped_at = f"{spec.name} ({side})"
                break
            sides[side] = (result, round(time.time() - t0, 1))
        if stopped_at:
            break
        seconds = {BASE: sides[BASE][1], TUNED: sides[TUNED][1]}
        rows += [row | {"seconds": seconds, "step": step, "time": round(time.time(), 3)}
                 for row in summarize(spec, sides[BASE][0], sides[TUNED][0], limit)]
        state.finished.append(spec.name)
    if not rows:
        if stopped_at:
            raise BenchError(f"benchmarks stopped before the first task finished ({stopped_at}): nothing was saved")
        raise BenchError("benchmarks: no task ran")
    record = {
        "engine": f"lm-eval {version}", "time": round(time.time(), 3), "step": step,
        "adapter": str(adapter.relative_to(run_dir)) if adapter.is_relative_to(run_dir) else adapter.name,
        "method": cfg.method, "base_precision": comparer.precision_label, "limit": limit,
        "batch_size": lm.batch_size_per_gpu, "device": str(lm.device), "threads": _threads(),
        "partial": stopped_at is not None, "stopped_at": stopped_at,
        # load: the tasks' data and the model (the model is cached between runs in the app)
        "seconds": {"load": round(model_ready - started, 1), "total": round(time.time() - started, 1)},
    }
    return save(run_dir, record, rows)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _hf_model(comparer):
    """lm-eval's HFLM around the Comparer's PeftModel (no copy of its weights) with a copy of the tokenizer
    (lm-eval may set its pad token and padding side, which the Playground's generation relies on)."""
    from lm_eval.models.huggingface import HFLM

    device = next(comparer.peft.parameters()).device
    batch = GPU_BATCH if device.type == "cuda" else CPU_BATCH
    return HFLM(pretrained=comparer.peft, tokenizer=copy.deepcopy(comparer.tokenizer), batch_size=batch)


def save(run_dir: Path, record: dict, rows: list[dict]) -> dict:
    """benchmarks.json: this run's rows first, then the newest row of every other task run before."""
    previous = runs.read_benchmarks(run_dir) or {}
    names = {r["task"] for r in rows}
    kept = [r for r in previous.get("tasks", []) if isinstance(r, dict) and r.get("task") not in names]
    record = {**record, "tasks": rows + kept}
    runs.write_benchmarks(run_dir, record)
    return record
