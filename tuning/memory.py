"""Memory levers: the same numbers from less RAM. bench/memory.py measures where a run's memory goes
and what each lever saves; tests/test_memory.py proves each one computes what it replaces.

- token_losses: the held-out loss per token without the logits of the whole vocabulary. A causal
  LM's forward returns (rows x length x vocabulary) logits; for 8 rows of 200 tokens and SmolLM2's
  49,152-word vocabulary that is 315 MB in fp32, and cross-entropy over it makes two more of the same
  size. The loss needs only the labelled positions, and those one slice at a time: the backbone's
  hidden states are projected through the LM head CHUNK_BYTES of logits at a time. (TRL's fused LM
  head does the same for training; the evaluation's own loss pass is ours, so it is done here.)
- release_freed_memory: glibc keeps freed heap pages for reuse instead of giving them back, so a
  process's RSS stays at its highest point after a big temporary (the GGUF conversion, a training
  step's activations before the evaluation). malloc_trim(0) hands the free pages back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util

CHUNK_BYTES = 32 * 2**20  # fp32 logits per slice of the LM head: 170 positions of a 49,152 vocabulary
# Config fields that make a model's logits more than hidden_states @ lm_head.T (soft-capping, scales):
# such models keep the full forward, whose own code applies them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


def _backbone_and_head(model):
    """(backbone, lm_head) of a causal LM or a PeftModel around one, or None when the logits are not
    plain hidden_states @ lm_head (see _LOGIT_TRANSFORMS) or the model has no such parts."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    backbone = getattr(base, "base_model", None)
    if config is None or head is None or backbone is None or backbone is base:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return backbone, head


def token_losses(model, input_ids, attention_mask, labels, chunk_bytes: int = CHUNK_BYTES):
    """Each position's next-token cross-entropy, shape (rows, length - 1), 0 where the next label is
    -100: what F.cross_entropy(model(...).logits[:, :-1], labels[:, 1:], reduction="none") gives, with
    at most chunk_bytes of logits alive at a time. Call under torch.no_grad()."""
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:]
    parts = _backbone_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, reduction="none").view(targets.shape)
    backbone, head = parts
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    mask = targets != -100
    picked, wanted = hidden[:, :-1][mask], targets[mask]
    losses = torch.empty(len(wanted), dtype=torch.float32, device=hidden.device)
    step = max(1, chunk_bytes // (head.weight.shape[0] * 4))
    for i in range(0, len(wanted), step):
        losses[i:i + step] = F.cross_entropy(head(picked[i:i + step]).float(), wanted[i:i + step], reduction="none")
    out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    out[mask] = losses
    return out


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim). False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc.malloc_trim(0)) if libc is not None and hasattr(libc, "malloc_trim") else False
    except OSError:
        return False
