"""An evaluation in words: the one-line headline the Live log, the CLI and the Evaluation tab print, the
task checks as "identity 9/10 (base 0/10)" for the Runs table, and the preference figures in a line."""

from __future__ import annotations


def checks_text(result: dict | None) -> str:
    """"identity 9/10 (base 0/10); control 8/10 (base 9/10)": tuned vs base, from evaluation.json."""
    by_kind = ((result or {}).get("checks") or {}).get("by_kind") or {}

    def slots(c: dict) -> str:  # " [name 7/8, maker 8/8]" for rows with named slots
        named = [f"{slot} {t['tuned_passed']}/{t['n']}" for slot, t in (c.get("slots") or {}).items()]
        return f" [{', '.join(named)}]" if named else ""
    return "; ".join(f"{kind} {c['tuned_passed']}/{c['n']} (base {c['base_passed']}/{c['n']}){slots(c)}"
                     for kind, c in by_kind.items())


def headline(result: dict) -> str:
    """One line for the Live tab's log and the CLI."""
    parts = []
    if result.get("eval_loss") is not None:
        # each figure only when the file has it: an evaluation written by hand or by an older version
        # may lack the base's figures or the perplexity, and must not break the page that shows it
        def pair(name: str, key: str, digits: int) -> str:
            base = result.get(f"base_{key}")
            value = result.get(key)
            return "" if value is None else (f"{name} {value:.{digits}f}"
                                             + (f" (base {base:.{digits}f})" if base is not None else ""))
        parts.append(", ".join(p for p in (pair("held-out loss", "eval_loss", 3), pair("perplexity", "perplexity", 1)) if p))
    checks = checks_text(result)
    if checks:
        parts.append(checks)
    if result.get("preference"):
        parts.append(preference_text(result["preference"]))
    return "; ".join(parts) or "no held-out data"


def preference_text(figures: dict | None) -> str:
    """One line from evaluation.json's preference figures (tuning/train/preference.py computes them)."""
    if not figures:
        return ""
    if figures.get("kind") == "kto":
        return f"implicit reward right on {figures['reward_accuracy']:.0%} of {figures['rows']} held-out answers"
    return (f"held-out preference accuracy {figures['tuned_accuracy']:.0%} (base {figures['base_accuracy']:.0%}) "
            f"on {figures['rows']} pairs, margin {figures['tuned_margin']:+.2f} (base {figures['base_margin']:+.2f}); "
            f"implicit reward accuracy {figures['reward_accuracy']:.0%}, margin {figures['reward_margin']:+.2f}")
