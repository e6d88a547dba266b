"""Liger's Triton kernels on CUDA: transformers' RoPE, RMSNorm and gated-MLP layers replaced by Liger's
fused kernels (less memory kept for the backward, fewer kernel launches), applied through transformers'
public entry point `transformers.integrations.liger.apply_liger_kernel`, the function `Trainer.train` calls
for `use_liger_kernel=True`.

Why not TRL's switch: TRL 1.16 deprecates `use_liger_kernel` on its trainers (a FutureWarning, removed in
TRL 2, pointing at the Hub kernels instead) and refuses Liger's fused linear cross-entropy, which replaces the
model's forward and so the fused LM head TRL adds to score only the labelled tokens in tiles (DPO and KTO
score through the same head; TRL 1.16 has no fused Liger preference loss of its own any more). So this lever
applies the layer kernels only, with `fused_linear_cross_entropy` off, as TRL's trainers do.

Where it applies: a CUDA device, the liger-kernel package installed (it needs Triton, which a CUDA build of
torch brings), and a model type Liger has kernels for (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3 among
them); elsewhere it is skipped and the log says why. Proof and figure: it has run on no GPU here yet
(bench/RESULTS.md, GPU: `bench/gpu_check.sh` trains every GPU preset's first steps with it when liger-kernel
is installed there). Switch: `speedups: off`, or `levers_off: liger_kernels` alone.
"""

from __future__ import annotations

import importlib.util

# Liger's layer kernels, not its fused linear cross-entropy: TRL's fused LM head keeps the loss.
LAYER_KERNELS_ONLY = {"fused_linear_cross_entropy": False}


def missing() -> str | None:
    """Why liger-kernel cannot be used in this process, or None when it imports."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as exc:
        return f"liger-kernel does not import ({exc})"
    return None


def supported_model_types() -> frozenset[str]:
    """The model types liger-kernel has kernels for (its own public table)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def use_liger_kernels(model) -> str | None:
    """Liger's layer kernels in `model` (a PEFT model or a plain one): its model type when applied, None
    when Liger has no kernels for it (transformers would only log that and change nothing)."""
    from transformers.integrations.liger import apply_liger_kernel

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in supported_model_types():
        return None
    apply_liger_kernel(model, dict(LAYER_KERNELS_ONLY))
    return model_type
