"""The LM head: the widest product of a small model (49,152 vocabulary columns for SmolLM2), and where a
CPU loses the most to shapes chosen for GPUs. Four levers. Scoring only the trained tokens: TRL's fused
LM head scores every position on devices without Triton (fixed tile shapes for compilers such as
Neuron's); on a CPU nothing is compiled and with completion-only loss a third to a half of the positions
are prompt tokens whose scores are thrown away (+20% tokens/s). Narrow tiles: the fused head scores
32,768 columns a tile, each tile copied to fp32 several times in its forward and backward; 4,096 keep a
step's peak ~250 MiB lower and no slower. The held-out loss in slices (token_losses): the evaluation's
own loss pass projects the labelled positions through the head CHUNK_BYTES of logits at a time instead
of a batch's full fp32 logits (8 rows of 200 tokens: 315 MB, and cross-entropy makes two more).
A contiguous head input: generation asks for the last position's logits only, a strided view on which
torch's CPU bf16 linear copies the head once per row (+1.7 GiB and 1.3 s on 32 rows, against 8 MiB and
5 ms contiguous). Figures: bench/RESULTS.md, Evidence behind the levers. Proofs: tests/test_perf_cpu.py,
tests/test_memory.py. Switch: `speedups: off`.
"""

from __future__ import annotations

CHUNK_BYTES = 32 * 2**20  # fp32 logits per slice of the LM head: 170 positions of a 49,152 vocabulary
LM_HEAD_VOCAB_CHUNK = 4096  # vocabulary columns per tile of TRL's fused LM head, on a CPU
# Config fields that make a model's logits more than hidden_states @ lm_head.T (soft-capping, scales):
# such models keep the full forward, whose own code applies them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


# --- TRL's fused LM head in training ------------------------------------------------------------------

def score_trained_tokens_only() -> bool:
    """Make TRL's fused LM head score only the positions that have a label on a CPU too (it
    decides by its private `_use_triton(device)`, read when each batch is scored). Returns False,
    changing nothing, if this TRL has no such switch: tests/test_perf_cpu.py then fails loudly."""
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "scores_cpu_compact", False):
        return True

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.scores_cpu_compact = True
    trl_utils._use_triton = compact_on_cpu
    return True


def narrow_lm_head_chunks(columns: int = LM_HEAD_VOCAB_CHUNK) -> int | None:
    """Make TRL's fused LM head (read at each call from trl.trainer.utils) score `columns` vocabulary
    columns per tile. Returns the width set, or None when this TRL has no such setting."""
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        return None
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = columns
    return columns


# --- the held-out loss, a slice of the head at a time ---------------------------------------------------

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


def full_token_losses(model, input_ids, attention_mask, labels):
    """Each position's next-token cross-entropy from the model's own logits over the whole vocabulary,
    shape (rows, length - 1), 0 where the next label is -100. Call under torch.no_grad()."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="none").view(targets.shape)


def token_losses(model, input_ids, attention_mask, labels, chunk_bytes: int = CHUNK_BYTES):
    """What full_token_losses gives, with at most chunk_bytes of logits alive at a time: the backbone's
    hidden states at the labelled positions, through the head a slice at a time. Models whose logits
    are transformed (_LOGIT_TRANSFORMS) take the full path. Call under torch.no_grad()."""
    import torch
    import torch.nn.functional as F

    parts = _backbone_and_head(model)
    if parts is None:
        return full_token_losses(model, input_ids, attention_mask, labels)
    targets = labels[:, 1:]
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


# --- the head's input in generation, contiguous ----------------------------------------------------------

def _contiguous_input(module, args):
    x = args[0]
    return None if x.is_contiguous() else (x.contiguous(), *args[1:])


def contiguous_head_input(model) -> bool:
    """Make the model's LM head copy a strided input (the last position of a prompt) to a contiguous
    tensor before its matmul (see the module's docstring). False when the model has no output
    embeddings or already has the hook."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_contiguous_input", False):
        return False
    head.register_forward_pre_hook(_contiguous_input)
    head._contiguous_input = True
    return True
