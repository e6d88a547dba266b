"""Standard benchmarks in figures and words: a row of benchmarks.json from lm-eval's results for the
base and the tuned side (the score and standard error of each, the difference, the verdict), and the
record as the Evaluation tab's table and chart, the terminal, Compare and the model card show it.
Reads plain dicts only: nothing here needs lm-eval installed (tuning/evaluation/benchmarks.py runs it).
"""

from __future__ import annotations

import math

# A difference counts as larger than the noise when it passes twice the combined standard error of the
# two scores, sqrt(se_base^2 + se_tuned^2): a rough 95% rule. The two sides answer the same questions,
# so the paired standard error (kept too, `paired_stderr`) is usually smaller: this rule is the cautious one.
NOISE_SES = 2.0
PERCENT_METRICS = ("acc", "acc_norm", "exact_match", "mc1", "mc2", "pass@1")  # shown as percentages
BASE, TUNED = "base", "tuned"


def clock(seconds: float) -> str:
    m, s = divmod(int(max(0, seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


# --- figures --------------------------------------------------------------------------------------

def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def primary_metric(entry: dict) -> str | None:
    """The first scored "metric,filter" of an lm-eval results entry (the task's first metric, on its
    first filter: acc for ARC and MMLU, exact_match on strict-match for GSM8K)."""
    for key, value in entry.items():
        if "," in key and not key.split(",")[0].endswith("_stderr") and _number(value) is not None:
            return key
    return None


def paired_stderr(base_samples: list[dict], tuned_samples: list[dict], metric: str, filter_key: str) -> float | None:
    """The standard error of the per-question difference, tuned minus base, on the same questions."""
    def scores(samples):
        return {s["doc_id"]: float(s[metric]) for s in samples or []
                if s.get("filter") == filter_key and _number(s.get(metric)) is not None}

    base, tuned = scores(base_samples), scores(tuned_samples)
    ids = sorted(set(base) & set(tuned))
    if len(ids) < 2:
        return None
    diffs = [tuned[i] - base[i] for i in ids]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(variance / len(diffs))


def verdict(difference: float | None, stderr: float | None, higher_is_better: bool = True) -> tuple[str, bool | None]:
    """(the verdict in words, whether the difference is larger than the noise)."""
    if difference is None:
        return "no score", None
    if stderr is None:
        return "no standard error (too few questions): run more to judge", None
    if abs(difference) > NOISE_SES * stderr:
        better = (difference > 0) == higher_is_better
        return f"{'better' if better else 'worse'}: larger than the noise", True
    return "within the noise", False


def summarize(loaded, base: dict, tuned: dict, limit: int | None) -> list[dict]:
    """The rows of benchmarks.json for one spec from lm-eval's results for the two sides: one for a
    task or a group with an aggregate score, one a task for a group without one."""
    results = base["results"]
    if loaded.name in results and primary_metric(results[loaded.name]):
        names = [loaded.name]
    else:
        names = [n for n in loaded.counts if n in results and primary_metric(results[n])]
    return [_row(loaded, name, base, tuned, limit) for name in names]


def _row(loaded, name: str, base: dict, tuned: dict, limit: int | None) -> dict:
    entry_b, entry_t = base["results"][name], tuned["results"].get(name, {})
    key = primary_metric(entry_b) or ""
    metric, _, filter_key = key.partition(",")
    stderr_key = f"{metric}_stderr,{filter_key}"
    b, t = _number(entry_b.get(key)), _number(entry_t.get(key))
    sb, st = _number(entry_b.get(stderr_key)), _number(entry_t.get(stderr_key))
    difference = t - b if None not in (b, t) else None
    combined = math.sqrt(sb ** 2 + st ** 2) if None not in (sb, st) else None
    higher = (base.get("higher_is_better") or {}).get(name, {}).get(metric, True) is not False
    words, larger = verdict(difference, combined, higher)
    asked, held = loaded.counts.get(name, (loaded.questions, loaded.total))
    paired = paired_stderr((base.get("samples") or {}).get(name), (tuned.get("samples") or {}).get(name),
                           metric, filter_key)
    others = {k: {BASE: _number(v), TUNED: _number(entry_t.get(k))} for k, v in entry_b.items()
              if "," in k and k != key and not k.split(",")[0].endswith("_stderr") and _number(v) is not None}
    return {"task": name, "source": loaded.spec.source, "metric": metric, "filter": filter_key,
            "higher_is_better": higher, "n": asked, "total": held, "sampled": asked < held, "limit": limit,
            BASE: b, TUNED: t, "base_stderr": sb, "tuned_stderr": st, "difference": difference, "stderr": combined,
            "paired_stderr": paired, "larger_than_noise": larger, "verdict": words, "other_metrics": others}


# --- the record in words and tables ---------------------------------------------------------------

def percent(row: dict) -> bool:
    return row.get("metric") in PERCENT_METRICS


def shown(row: dict, key: str) -> str:
    """A score, difference or standard error as the tables show it: points of a percentage for
    accuracies, else the metric's own number."""
    value = _number(row.get(key))
    if value is None:
        return "—"
    if percent(row):
        return f"{100 * value:+.1f}" if key == "difference" else f"{100 * value:.1f}"
    return f"{value:+.4g}" if key == "difference" else f"{value:.4g}"


def sample_note(row: dict) -> str:
    if row.get("sampled"):
        return f"a sample: {row['n']} of {row['total']} questions"
    return f"all {row.get('n')} questions"


TABLE_HEADERS = ["task", "questions", "metric", "base", "tuned", "difference", "± stderr", "verdict"]


def table_rows(record: dict | None) -> list[list]:
    """One row a task, as the Evaluation tab and the model card show them."""
    rows = []
    for row in (record or {}).get("tasks", []):
        unit = " (%)" if percent(row) else ""
        rows.append([row.get("task"), sample_note(row), f"{row.get('metric')}{unit}", shown(row, BASE),
                     shown(row, TUNED), shown(row, "difference"), shown(row, "stderr"), row.get("verdict", "")])
    return rows


def chart_rows(record: dict | None) -> list[dict]:
    """Two bars a task (base, tuned), for a bar chart: {bar, model, score}."""
    out = []
    for row in (record or {}).get("tasks", []):
        for side in (BASE, TUNED):
            value = _number(row.get(side))
            if value is not None:
                out.append({"bar": f"{row['task']} · {side}", "model": side,
                            "score": round(100 * value, 2) if percent(row) else value})
    return out


def summary_text(record: dict | None) -> str:
    """What the table rests on, in a sentence or three."""
    if not record:
        return ""
    samples = [r["task"] for r in record.get("tasks", []) if r.get("sampled")]
    seconds = record.get("seconds") or {}
    adapter = "" if record.get("adapter") == "adapter" else f" ({record.get('adapter')})"  # a checkpoint
    parts = [f"{record.get('engine')}, adapter at step {record.get('step')}{adapter}, base "
             f"{record.get('base_precision')}; the newest run took {clock(seconds.get('total', 0))} on "
             f"{record.get('device')} ({record.get('threads')} threads)"]
    if samples:
        parts.append(f"On a sample (a limit of questions per task): {', '.join(samples)}; a quick look, not the "
                     "benchmark's full score")
    if record.get("partial"):
        parts.append(f"Stopped at {record.get('stopped_at')}: the tasks after it did not run")
    return ". ".join(parts) + "."


def lines(record: dict) -> list[str]:
    """The record for the terminal, a line a task."""
    out = []
    for row in record.get("tasks", []):
        out.append(f"{row['task']} ({row['metric']}, {sample_note(row)}): base {shown(row, BASE)}, tuned "
                   f"{shown(row, TUNED)}, difference {shown(row, 'difference')} ± {shown(row, 'stderr')}: "
                   f"{row['verdict']}")
    return out + [summary_text(record)]
