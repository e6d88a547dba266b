"""Attention for padding-free batches. Training concatenates a batch's examples into one row with
per-sequence position ids and no padding (a padded batch of 20-400-token rows is 1.57-1.76x its real
tokens). Plain SDPA would need a block-diagonal mask over the whole row and compute every block of it;
sdpa_varlen attends within each sequence, one sequence at a time (the diagonal blocks only, like
flash-attention's varlen kernel on a GPU), cut with torch.split (a slice's backward built a zeroed
whole-row gradient per sequence: 18% of a profiled step). On a CPU in bf16 it also keeps the number of
attention shapes small: torch's CPU flash attention keeps a ~8 MiB kernel for every length it meets.
Figures: bench/RESULTS.md, Evidence behind the levers ("padding-free batches", "attention shapes").
Proofs: tests/test_perf_packing.py (each example's logits, loss and gradients as if alone),
tests/test_memory.py (bf16 attention against fp32), tests/test_families.py (a sliding window, as Mistral,
Phi-3 and Gemma 3 have, kept within each sequence). Switch: `speedups: off` (transformers' own SDPA
then builds the block mask from the position ids).
"""

from __future__ import annotations

import torch

VARLEN_SDPA = "sdpa_varlen"


def _sdpa_varlen(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """SDPA that attends within each sequence of a padding-free batch, one sequence at a time.

    Training concatenates a batch into one row (no padding) and passes the sequence boundaries
    as cu_seq_lens_q, e.g. [0, 88, 256] for rows of 88 and 168 tokens. Plain SDPA would need a
    block-diagonal mask over the whole row and compute every block of it: for 8 rows of ~200
    tokens that is (8 x 200)^2 = 2.6M scores against 8 x 200^2 = 0.3M that matter. Slicing keeps
    it to the diagonal blocks with is_causal=True, like flash-attention's varlen kernel on a GPU.
    The sequences are cut with torch.split, not slicing: the backward of each slice writes its
    gradient into a zeroed tensor of the whole row and those are summed (8 sequences: 8 full-size
    zero-fills and additions per tensor per layer: 18% of a profiled CPU step), while split's
    backward is one concatenation.
    Anything else (padded batches, generation with a cache) goes to the ordinary SDPA path.

    On a CPU in bf16/fp16 each sequence goes through _cpu_half_attention, which keeps the number of
    attention shapes small (see there)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = [] if cu_seq_lens_q is None else cu_seq_lens_q.tolist()
    if query.shape[0] != 1 or query.shape[2] != key.shape[2] or bounds[:1] != [0] or bounds[-1] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    attend = _cpu_half_attention if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16) \
        else _causal_attention
    pieces = [attend(module, q, k, v, **kwargs)
              for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value))) if q.shape[2]]
    return torch.cat(pieces, dim=1), None  # (1, tokens, heads, head_dim), like sdpa_attention_forward


# torch 2.13's CPU flash attention in bf16 builds and keeps (per thread, never freed) a kernel for every
# sequence length it meets: ~8 MiB each, so a run whose batches hold ever new lengths grew its RSS by
# 15-50 MiB a step (100 lengths: +800 MiB; bench/RESULTS.md, Memory). The math backend keeps nothing
# per shape and, up to SDPA_MATH_MAX tokens, is also faster on a CPU (fwd+bwd, 9 heads of 64, 2 cores:
# 64 tokens 0.64 vs 1.06 ms, 128: 1.44 vs 1.98; 256: 5.9 vs 4.2, 1024: 118 vs 35) and keeps only
# length^2 probabilities per head for the backward. Longer sequences keep flash attention, with their
# length padded up to a multiple of SDPA_BUCKET at the end: under a causal mask no real query sees the
# padded keys, and the lengths flash meets are a few.
SDPA_MATH_MAX = 128
SDPA_BUCKET = 64


def _causal_attention(module, query, key, value, sliding_window=None, **kwargs):
    """Causal SDPA of one sequence, (1, heads, length, dim) in, (1, length, heads, dim) out. A layer with a
    sliding window (Mistral, Phi-3, the Gemmas' local layers: the model passes `sliding_window`) gets the
    window as transformers' mask has it, when the sequence is longer than the window: is_causal alone would
    let every token see the whole sequence (the loss and gradients of `speedups: off` no longer)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if sliding_window is not None and length > sliding_window:
        return sdpa_attention_forward(module, query, key, value, _window_mask(length, sliding_window, query.device),
                                      **kwargs)[0]
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)[0]


def _window_mask(length: int, window: int, device) -> torch.Tensor:
    """transformers' sliding-window causal mask of one sequence (masking_utils: kv <= q and kv > q - window),
    (1, 1, length, length), True where a query attends."""
    q = torch.arange(length, device=device)[:, None]
    kv = torch.arange(length, device=device)[None, :]
    return ((kv <= q) & (kv > q - window))[None, None]


def _cpu_half_attention(module, query, key, value, **kwargs):
    """_causal_attention on a CPU in bf16/fp16, through few shapes (see above)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    length = query.shape[2]
    if length <= SDPA_MATH_MAX:
        with sdpa_kernel(SDPBackend.MATH):
            return _causal_attention(module, query, key, value, **kwargs)
    pad = -length % SDPA_BUCKET
    if pad:
        query, key, value = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    return _causal_attention(module, query, key, value, **kwargs)[:, :length]


def use_varlen_sdpa(model) -> bool:
    """Switch a model that uses SDPA to the per-sequence variant (a no-op for other attention
    implementations, e.g. flash-attention, which handles padding-free batches itself).
    The mask function stays SDPA's, so padded batches and generation keep their masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(VARLEN_SDPA, _sdpa_varlen)
    AttentionMaskInterface.register(VARLEN_SDPA, ALL_MASK_ATTENTION_FUNCTIONS.get("sdpa", sdpa_mask))
    model.set_attn_implementation(VARLEN_SDPA)
    return True
