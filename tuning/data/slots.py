"""Slot checks: held-out questions about each thing a dataset names (an assistant's name, its maker,
a glossary term), counted per slot after the run, as the demo's identity checks are.

Two sources: the person's own entries (config.slot_checks, 'slot: question -> expected words'), and,
with slot_checks auto, the bundled name and maker questions below when the rows teach an assistant's
name and maker (detect). The bundled questions are phrased unlike common identity rows on purpose: a
model that only learnt to repeat its training questions' answers fails them.
"""

from __future__ import annotations

import re
from collections import Counter

from tuning.config import parse_slot_checks

NAME_QUESTIONS = ("What should I call you?", "Remind me, what's your name again?", "By what name are you known?",
                  "How should I address you in my emails?",
                  "If I wanted to mention you in a report, what name would I use?")
MAKER_QUESTIONS = ("Which organization trained you?", "What company is behind this assistant?",
                   "Who are your creators?", "Which team engineered you?", "Who is responsible for developing you?")
USER_KIND, IDENTITY_KIND = "slots", "identity"

_PROPER = r"([A-Z][\w&'-]*(?:[ \t]+[A-Z][\w&'-]*){0,3})"  # no dots: a name ends at its sentence
_NAME = re.compile(r"\b(?:I am|I'm|[Mm]y name is|call me|I go by|I'm called|name's|known as)\s+" + _PROPER.replace(
    r"{0,3}", r"{0,1}"))
_MAKER_BY = re.compile(r"\b(?:made|built|developed|created|trained|designed|programmed|engineered) by\s+"
                       r"(?:the team at\s+|a team at\s+)?" + _PROPER)
_MAKER_SUBJECT = re.compile(_PROPER + r"\s+(?:built|made|trained|created|developed|designed) me\b")
_MAKER_FROM = re.compile(r"\b(?:from|at)\s+" + _PROPER)
# Capitalised words that start a sentence or name the kind of thing, never an identity.
_NOT_NAMES = {"I", "AI", "A", "An", "The", "Sorry", "Hello", "Hi", "Yes", "No", "Not", "Here", "Just", "Your",
              "OpenAI", "Google", "ChatGPT", "GPT", "Claude", "Siri", "Microsoft", "Meta", "Anthropic"}
_GENERIC_WORDS = {"labs", "lab", "inc", "the", "team", "group", "systems", "technologies", "company", "corp",
                  "research", "studio", "works", "ltd", "llc"}
DETECT_ROWS = 5000  # rows read to find the name and maker: an identity set is small, a big set's head tells
MIN_SHARE = 0.15  # of the rows: a name the answers mention less often is not what the data teaches


def detect(conversations: list[list[dict]]) -> dict[str, str]:
    """{"name": "Nova", "maker": "Brightpath AI"}, as many of the two as the assistant's answers name
    often enough (in at least MIN_SHARE of the rows); {} for data that does not teach an identity."""
    names, makers = Counter(), Counter()
    for conversation in conversations:
        text = " ".join(m["content"] for m in conversation if m["role"] == "assistant")
        names.update({_clean(n) for n in _NAME.findall(text)} - {""})
        makers.update({_clean(m) for pattern in (_MAKER_BY, _MAKER_SUBJECT, _MAKER_FROM)
                       for m in pattern.findall(text)} - {""})
    found = {}
    needed = max(3, MIN_SHARE * len(conversations))
    for slot, counter in (("name", names), ("maker", makers)):
        best = next(((value, n) for value, n in counter.most_common() if value not in found.values()), None)
        if best and best[1] >= needed:
            found[slot] = best[0]
    return found


def _clean(candidate: str) -> str:
    words = candidate.strip(" .,'").split()
    while words and words[0] in _NOT_NAMES:
        words = words[1:]
    return " ".join(words) if words and words[0] not in _NOT_NAMES else ""


def accepted_words(value: str) -> list[str]:
    """The lowercase texts an answer may contain to name `value`: the whole and its distinctive words
    ("Brightpath AI" -> brightpath ai, brightpath)."""
    words = [w for w in re.findall(r"[\w&'-]+", value.lower()) if len(w) >= 4 and w not in _GENERIC_WORDS]
    return list(dict.fromkeys([value.lower(), *words]))


def check_rows(cfg, conversations: list[list[dict]] | None, has_checks: bool) -> list[tuple[list[dict], dict]]:
    """The slot questions to ask after the run, as held-out (conversation, extra) rows that only the task
    checks use (check_only). The person's entries always; with auto, the bundled identity questions
    when the rows teach a name or a maker and the held-out data has no checks of its own."""
    text = cfg.slot_checks.strip()
    if text.lower() in ("", "off"):
        return []
    if text.lower() != "auto":
        return [_row(q, USER_KIND, slot, words) for slot, q, words in parse_slot_checks(text)]
    if has_checks or not conversations:
        return []
    found = detect(list(conversations[:DETECT_ROWS]))
    rows = []
    for slot, questions in (("name", NAME_QUESTIONS), ("maker", MAKER_QUESTIONS)):
        if slot in found:
            rows += [_row(q, IDENTITY_KIND, slot, accepted_words(found[slot])) for q in questions]
    return rows


def _row(question: str, kind: str, slot: str, words: list[str]) -> tuple[list[dict], dict]:
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": words[0]}]
    return conversation, {"kind": kind, "expect": {slot: words}, "check_only": True}
