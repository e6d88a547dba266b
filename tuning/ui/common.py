"""What every tab shares: the app context (workspace, allowed roots, who may train), user-path
checks, and the wrapper that turns any exception into a readable message instead of a traceback."""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuning import paths
from tuning.ship import space

log = logging.getLogger("tuning.ui")

# Errors whose message is written for the user (they name the key, file, row or run).
def user_errors() -> tuple[type[BaseException], ...]:
    from tuning.config import ConfigError
    from tuning.data import DataError
    from tuning.ship.export import ExportError
    from tuning.runs import RunError

    found = [ConfigError, DataError, ExportError, RunError, paths.PathError]
    try:  # models imports torch: only pay for it when a handler already has
        import sys
        if "tuning.models" in sys.modules:
            found.append(sys.modules["tuning.models"].ModelError)
    except Exception:  # noqa: BLE001
        pass
    return tuple(found)


@dataclass
class AppContext:
    """What the page may touch: the workspace and the folders paths may be read from; and, on a
    Space, who may act (tuning/ship/space.py decides; tuning/ui/access.py keeps, in memory only, until
    when each unlocked browser session stays unlocked and its upload pass, recent password attempts
    and the generations in flight)."""
    workspace: Path
    data_dirs: list[Path] = field(default_factory=list)
    settings: space.SpaceSettings | None = None
    unlocked: dict[str, float] = field(default_factory=dict, repr=False)
    owner_passes: dict[str, float] = field(default_factory=dict, repr=False)  # upload cookie -> expiry (upload_gate)
    guesses: deque = field(default_factory=lambda: deque(maxlen=256), repr=False)  # wrong passwords' times
    busy: set = field(default_factory=set, repr=False)
    stopping: set = field(default_factory=set, repr=False)  # sessions whose Playground turn was asked to stop
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()
        self.data_dirs = [Path(d).resolve() for d in self.data_dirs]
        self.settings = self.settings or space.space_settings(workspace=self.workspace)

    @property
    def roots(self) -> list[Path]:
        """Workspace first (relative paths resolve against it), then uploads, then --data-dir."""
        from gradio.utils import get_upload_folder

        return [self.workspace, Path(get_upload_folder()).resolve(), *self.data_dirs]


def friendly(exc: BaseException) -> str:
    """One readable line for any exception; the traceback goes to the server log only."""
    if isinstance(exc, user_errors()):
        return str(exc)
    log.exception("handler failed")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"Something went wrong ({type(exc).__name__}{': ' + text if text else ''}). Details are in the app's log."


def check_source(ctx: AppContext, value: str, *, what: str, keep: tuple[str, ...] = ()) -> str:
    """A dataset or model named on the page: a keyword (demo, embedded:...), a Hub id, or a path.

    One rule decides (paths.is_hub_id): org/name in the Hub's characters, with no file suffix, that
    names nothing on this machine (relative to the working directory, the project folder or the
    workspace) is a Hub id, returned as typed; nothing local is read for it. Anything else is a path
    and must exist under the allowed roots (returned absolute, so the training process finds it):
    `somedir/file.jsonl` is a path, resolved against the workspace, never read from wherever the
    app happens to run."""
    value = (value or "").strip()
    if not value:
        raise paths.PathError(f"{what}: empty")
    if value in keep:
        return value
    if paths.is_hub_id(value, bases=ctx.roots[:1]):
        return value  # a Hub id: nothing on this machine is read
    resolved = paths.resolve_under(value, ctx.roots, what=what)
    if not resolved.exists():
        hint = "" if Path(value).expanduser().is_absolute() else f" (a relative path is read from {ctx.roots[0]})"
        raise paths.PathError(f"{what}: {value!r} does not exist{hint}")
    return str(resolved)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def number(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals (losses read 3, perplexities 2); "—" when there is none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def picked_number(value, what: str, count: int) -> int:
    """The 1-based row (or pair) number typed in a box, checked against the `count` there are."""
    try:
        number = int(value or 1)
    except (TypeError, ValueError):
        raise paths.PathError(f"{what}: expected a {what} number, got {value!r}") from None
    if not 1 <= number <= count:
        raise paths.PathError(f"{what}: pick a {what} between 1 and {count}")
    return number


def guarded(fn):
    """Wrap a handler so any exception reaches the page as a short gr.Error message (an API
    client gets the same message), never as a traceback. For the API-only endpoints (gr.api) and
    events whose tab has no box: a page's own events go through `boxed`, since a gr.Error puts an
    "Error" badge on every output of its event, over results that no longer describe anything."""
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                import gradio as gr
                if isinstance(exc, gr.Error):
                    raise
                raise gr.Error(friendly(exc), print_exception=False) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the page shows the message, the log the traceback
            import gradio as gr
            if isinstance(exc, gr.Error):
                raise
            raise gr.Error(friendly(exc), print_exception=False) from None
    return wrapper


# --- empty states and the tab's error box ------------------------------------------------------------
#
# An output whose input does not exist yet (no run picked, nothing inspected) shows what to do next;
# that is not an error. An error the person did cause (a bad upload, a bad path, a refused delete) goes
# to the tab's one persistent box, and the results it no longer describes are emptied.

NO_RUNS = "No runs yet: start one in **Train**."


def no_run_text(ctx: AppContext, pick: str = "Pick a run above.") -> str:
    """What an output about a run says while none is picked: start one, or pick one."""
    from tuning import runs

    return pick if runs.run_ids(ctx.workspace) else NO_RUNS


def error_box():
    """The tab's one error box: hidden until something the person did fails, then it stays (a toast
    fades) until their next good action hides it."""
    import gradio as gr

    return gr.Markdown(visible=False, elem_classes=["error-box"])


def error_text(exc: BaseException) -> str:
    """The readable line of a user error (or of a gr.Error a handler raised), else friendly()'s."""
    import gradio as gr

    return exc.message if isinstance(exc, gr.Error) else friendly(exc)


def box_shown(text: str) -> dict:
    import gradio as gr

    return gr.update(value=f"**Could not do that:** {text}", visible=True)


def box_hidden() -> dict:
    import gradio as gr

    return gr.update(value="", visible=False)


def boxed(fn, clears=None, *, box: str = "error", hides: bool = True):
    """`fn` (returning or yielding a dict keyed by output name) with the tab's error box named `box`:
    an exception shows its message in the box (and as a passing warning, for a page scrolled away
    from it) and sets each output of `clears` to its empty state, so nothing on screen describes what
    failed; a result hides the box unless `hides` is False (a later step of one action must not hide
    what its first step showed). `clears` is a dict or a function returning one (read when it fails).
    The event's outputs must include the box and every key of `clears`."""
    import inspect

    clears = clears or {}

    def failed(exc: BaseException) -> dict:
        import gradio as gr

        text = error_text(exc)
        gr.Warning(text)
        return {**(clears() if callable(clears) else clears), box: box_shown(text)}

    def done(values: dict) -> dict:
        return {**values, box: box_hidden()} if hides else values

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                for values in fn(*args, **kwargs):
                    yield done(values)
            except Exception as exc:  # noqa: BLE001 - the box shows the message, the log the traceback
                yield failed(exc)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return done(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the box shows the message, the log the traceback
            return failed(exc)
    return wrapper


# --- what several tabs show ------------------------------------------------------------------------

def run_picker_update(ctx: AppContext, run_id: str | None = None):
    """A run dropdown that knows every run in the workspace, with `run_id` selected."""
    import gradio as gr

    from tuning import runs

    return gr.update(choices=runs.run_ids(ctx.workspace), value=run_id)


def _rounded(value, digits: int = 4):
    return round(value, digits) if isinstance(value, (int, float)) else None


def loss_rows(result: dict | None) -> list[list]:
    if not result or result.get("eval_loss") is None:
        return []
    rows = []
    for label, key in (("held-out loss", "eval_loss"), ("perplexity", "perplexity")):
        base, tuned = result.get(f"base_{key}"), result.get(key)
        rows.append([label, _rounded(base), _rounded(tuned), _rounded(tuned - base) if None not in (base, tuned) else None])
    pref = result.get("preference") or {}
    if pref.get("kind") == "pairs":  # a preference run: held-out pairs ranked, base vs tuned
        for label, key in (("preference accuracy", "accuracy"), ("preference margin", "margin")):
            base, tuned = pref[f"base_{key}"], pref[f"tuned_{key}"]
            rows.append([label, _rounded(base), _rounded(tuned), _rounded(tuned - base)])
    return rows


def check_rows(result: dict | None) -> list[list]:
    """One row per kind of task check, then one per named slot of it ("identity · name")."""
    def row(name: str, s: dict) -> list:
        base, tuned = s["base_passed"] / s["n"], s["tuned_passed"] / s["n"]
        return [name, s["n"], s["base_passed"], round(100 * base, 1), s["tuned_passed"], round(100 * tuned, 1),
                round(100 * (tuned - base), 1)]

    rows = []
    for kind, s in (((result or {}).get("checks") or {}).get("by_kind") or {}).items():
        rows.append(row(kind, s))
        rows += [row(f"{kind} · {slot}", t) for slot, t in (s.get("slots") or {}).items()]
    return rows



DOWNLOAD_TTL_S = 3600.0  # a served copy lives this long (a download button readied at a pick waits for its click)


def served_copy(path: Path) -> str:
    """A copy of `path` in a folder Gradio serves downloads from (its upload/temp folder), so a
    download works whatever the workspace: Gradio refuses files outside the working directory, the
    temp folder and allowed_paths, and /data/tuning on a Space is outside all three. Each copy has a
    folder of its own (an unguessable name: only the page it was sent to knows it); copies older than
    DOWNLOAD_TTL_S are removed here, so readying a download at every pick fills no disk."""
    import shutil
    import tempfile

    root = prune_served_copies()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=root))
    return str(shutil.copy2(path, folder / Path(path).name))  # gr.File takes a str, not a Path


def prune_served_copies() -> Path:
    """Remove the served copies older than DOWNLOAD_TTL_S (at each new copy, and on app.py's schedule,
    so copies nobody asks for again go too); returns the folder they live in."""
    import shutil

    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder())
    for old in root.glob("download-*"):
        try:
            if old.is_dir() and time.time() - old.stat().st_mtime > DOWNLOAD_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return root


# --- what the Dataset and Train tabs both read -----------------------------------------------------

OPENING_PRESET = "quickstart"  # on a CPU: the embedded model and the demo data, minutes on 2 cores
SMALL_GPU_PRESET = "quickstart-qlora"  # on a GPU smaller than every sized preset


@functools.lru_cache(maxsize=1)
def gpu_memory_gib() -> int | None:
    """The first GPU's memory in whole GiB as its maker rounds it (24 for a 24 GB card), from
    nvidia-smi, which answers in milliseconds where importing torch at page build would cost seconds;
    None without an NVIDIA GPU."""
    import shutil
    import subprocess

    tool = shutil.which("nvidia-smi")
    if not tool:
        return None
    try:
        out = subprocess.run([tool, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return round(int(out.split()[0]) / 1024)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def opening_preset(gpu_gib: int | None = None) -> str:
    """The preset the Train form opens on for this machine: on a GPU the largest single-GPU preset
    whose name says it fits the card (...-8gb, -16gb, -24gb), on a CPU the quickstart."""
    import re

    gpu_gib = gpu_memory_gib() if gpu_gib is None else gpu_gib
    if not gpu_gib:
        return OPENING_PRESET
    sized = [(int(m.group(1)), p.stem) for p in paths.PRESETS_DIR.glob("*.yaml")
             if (m := re.search(r"-(\d+)gb$", p.stem)) and not p.stem.startswith("multi-gpu")]
    fitting = [s for s in sized if s[0] <= gpu_gib]
    return max(fitting)[1] if fitting else SMALL_GPU_PRESET


def opening_config():
    """The config the page opens on: the preset the Train form opens on, so the Dataset tab counts
    tokens for the same base model and max_length the form shows."""
    from tuning import config as config_mod

    path = paths.PRESETS_DIR / f"{opening_preset()}.yaml"
    return config_mod.load(path) if path.is_file() else config_mod.TrainConfig()


def source_mtime(source: str) -> float:
    """A file's version for the readers' caches (0 for a name that is not a file: a Hub id, a demo)."""
    try:
        return Path(source).stat().st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, fmt: str, column_map: str, mtime: float, limit: int | None, workspace: str | None):
    from tuning.data import arrow_data
    from tuning import data

    if limit is None and arrow_data.wanted(source, workspace):  # a big file: rows stay on disk, memory-mapped
        return arrow_data.load(source, fmt, column_map or None, workspace)
    return data.load_preview(source, fmt, column_map or None, limit=limit)


def load_dataset(source: str, fmt: str = "auto", column_map: str = "", limit: int | None = None,
                 workspace: Path | str | None = None):
    """The dataset as the page reads it (data.load_preview: a Hub dataset streams its first rows, never
    the whole), cached per file version (the mtime), format and map: the Dataset tab's pages and
    statistics and the Train tab's estimate share one read. With the workspace, a big local file is
    read whole through its Arrow cache there (tuning/data/arrow_data.py) instead of into memory."""
    return _load_cached(source, fmt or "auto", (column_map or "").strip(), source_mtime(source), limit,
                        None if workspace is None else str(workspace))


# --- wiring a handler to a build function's components ---------------------------------------------

def bind(fn, *args, **kwargs):
    """functools.partial(fn, *args, **kwargs) under fn's own name and docstring: Gradio names an
    event after its function (tests and the API page read it)."""
    bound = functools.partial(fn, *args, **kwargs)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__
    return bound


def into(name: str, fn):
    """`fn` (returning one output's value) as a handler returning {name: value}, under fn's own name:
    what boxed and keyed take."""
    @functools.wraps(fn)
    def one(*args, **kwargs):
        return {name: fn(*args, **kwargs)}
    return one


def keyed(fn, components: dict):
    """An event function for a handler that returns (or yields) a dict keyed by output name: Gradio
    gets the same values keyed by `components[name]`, so what a handler updates is matched by name,
    never by a tuple's order. Every component it may name must be in the event's outputs; an empty
    dict changes nothing."""
    import inspect

    def by_component(values: dict):
        import gradio as gr

        return {components[name]: value for name, value in values.items()} if values else gr.skip()

    if inspect.isgeneratorfunction(fn):  # sees through a partial
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            for values in fn(*args, **kwargs):
                yield by_component(values)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return by_component(fn(*args, **kwargs))
    return wrapper

