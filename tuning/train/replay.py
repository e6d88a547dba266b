"""The general rows' answers, from the run's own base model: its greedy answers to the bundled general
questions (tuning/data/general.py), generated once per base in the workspace and mixed into the training
rows.

Why the base's own answers and not the bundled ones: training on the bundled answers alone (written
from a 4-bit GGUF copy of the embedded model and cut by hand) moved the model off four of the 23 control
questions it had right (bench/recipe.md), so they were teaching something new. The run's own greedy
answers are what the model says already: training on them holds the general answers where they are
while the new facts go in, for any base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from tuning import config as config_mod
from tuning import runs
from tuning.data import general

MAX_NEW_TOKENS = 96  # the demo's general answers were generated to this length
BATCH = 16
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def cache_path(cfg: config_mod.TrainConfig, workspace: Path, dtype: str) -> Path:
    """One file per base, method (a 4-bit base answers differently), dtype and question list."""
    key = json.dumps([cfg.base_model, cfg.method, dtype, general.questions_digest(), MAX_NEW_TOKENS])
    return Path(workspace) / "general" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def rows(cfg: config_mod.TrainConfig, model, tokenizer, workspace: Path, dtype: str) -> list[list[dict]]:
    """The general conversations with the base's own answers: read from the workspace, or generated
    (29-30 s for the embedded model on one CPU core) and kept there for the next run."""
    path = cache_path(cfg, workspace, dtype)
    stored = runs.read_json(path)
    if isinstance(stored, dict) and isinstance(stored.get("answers"), list):
        answers = stored["answers"]
    else:
        print(f"general rows: answering {len(general.questions())} general questions with the base model "
              "(once for this base, kept in the workspace)", flush=True)
        answers = [finished(a, n) for a, n in _generate(model, tokenizer, general.questions())]
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(path, {"base_model": cfg.base_model, "method": cfg.method, "dtype": dtype,
                               "max_new_tokens": MAX_NEW_TOKENS, "answers": answers})
    return general.conversations(answers)


def finished(answer: str, tokens: int) -> str:
    """An answer cut by the token limit ends at its last whole sentence (a half sentence would teach
    the model to stop mid-way); "" (left out) when it has none."""
    if tokens < MAX_NEW_TOKENS:
        return answer.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(answer)]
    return answer[:ends[-1]].strip() if ends else ""


@contextlib.contextmanager
def _training_mode(model):
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def _four_bit_on_cpu(model) -> bool:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return next(model.parameters()).device.type == "cpu" and any(isinstance(m, Linear4bit) for m in model.modules())


def _generate(model, tokenizer, prompts: list[list[dict]]) -> list[tuple[str, int]]:
    """(greedy answer, its new tokens) of each prompt, batched, as the run's evaluation generates."""
    import torch

    from tuning.infer import generation

    out: list[tuple[str, int]] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # bitsandbytes repacks a 4-bit layer's weight for CPU inference on its first forward in eval mode
    # without grad, and training through the repacked layout then fails (an in-place bias add on a leaf
    # that needs grad): before training, a 4-bit model on a CPU answers in training mode (these bases'
    # dropout is 0, and the answers are greedy either way).
    mode = _training_mode(model) if _four_bit_on_cpu(model) else generation.inference(model)
    with torch.no_grad(), mode:
        for i in range(0, len(prompts), BATCH):
            batch = generation.encode(tokenizer, prompts[i:i + BATCH])
            batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
            new = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=pad,
                                 use_cache=True)[:, batch["input_ids"].shape[1]:]
            for row in new:
                kept = [t for t in row.tolist() if t != pad]
                out.append((tokenizer.decode(kept, skip_special_tokens=True), len(row) if row[-1] != pad else len(kept)))
    return out
