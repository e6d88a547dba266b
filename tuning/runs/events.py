"""The format of a run's event log (tuning/runs/ names the file and hands out the log): the
trainer appends, everyone else reads.

One JSON object a line, each with `event` (start, log, eval, checkpoint, end, error, choice, phase),
`time` (unix seconds) and, where it applies, step, max_steps, loss, eval_loss, learning_rate,
tokens_per_second, message. A `phase` event says what the run is doing from then on (`phase`, one
of PHASES) and, for a phase with countable work, how far it is (`done` of `total`; the evaluation
writes one after each of its checks). The file is the truth about a run: a page reload or an app
restart rebuilds everything from it, so readers tolerate a half-written last line.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

# "choice": after the run, a person chose a checkpoint as the final adapter (record.choose_checkpoint)
# "phase": what the run does from now on (PHASES), written at each change and as an evaluation progresses
EVENT_KINDS = ("start", "log", "eval", "checkpoint", "end", "error", "choice", "phase")
# In order: loading the model, preparing the data, training (step n of N, from the `log` events),
# evaluating (check k of K), saving (the adapter, a checkpoint); stopping when a Stop arrived. The
# `end` or `error` event closes the run (completed, stopped, failed).
LOADING, PREPARING, TRAINING, EVALUATING, SAVING, STOPPING = (
    "loading", "preparing", "training", "evaluating", "saving", "stopping")
PHASES = (LOADING, PREPARING, TRAINING, EVALUATING, SAVING, STOPPING)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; keep the line parseable and say what it was.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class EventLog:
    """Append-only writer. Each append is one write() of one whole line, flushed and fsynced,
    so a kill -9 leaves at most one partial last line, which readers skip."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event!r}")
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items() if v is not None})
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return record


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Read whole lines from byte `offset` on. Returns the events and the offset to continue
    from; a trailing partial line is left for the next call. Garbage lines are skipped."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # only whole lines
    events = []
    for raw in data[:end].splitlines():
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events, offset + end
