"""Three things that make LoRA work on a CPU faster without changing what is computed, each
measured on the reference 2-core machine (bench/RESULTS.md) and proven by tests/test_perf_cpu.py.
train.build_trainer applies the first two when training on a CPU, playground.Comparer the third;
on a GPU, PEFT's, TRL's and torch's own paths are already fast and stay as they are.

1. FastDropout. PEFT's LoRA dropout is torch.nn.Dropout, which on a CPU draws one float per
   element from torch's Mersenne Twister: about 10 ms for a 1583 x 576 activation, and a model
   with all-linear adapters draws 7 per layer. That was 28% of a training step of the embedded
   model. FastDropout draws 16 random bits per element (one 64-bit draw gives four), 6x cheaper,
   with the same distribution up to p being rounded to a multiple of 1/65536.
2. Scoring only the trained tokens. TRL's fused LM head scores every position (a log-softmax over
   the whole vocabulary) on devices without Triton, to keep tile shapes fixed for compilers such as
   Neuron's, and only the positions with a label on CUDA. On a CPU nothing is compiled, and with
   completion-only loss a third to a half of the positions are prompt tokens whose scores are
   thrown away: score the trained ones only. Same loss and gradients; about 20% faster steps.
3. Linear layers that see a few rows at a time (generation: one new token per row, and the
   Playground's base and tuned rows in one batch). For 2 to 4 rows, torch's x @ W.T in fp32 takes
   MKL's general GEMM path with the weight transposed, which was slower for 2 rows than for 1 (61 vs
   37 ms over a decoding step's 30 layers); W @ x.T reads the weight once and took 21 ms for 2 rows.
   That is what lets one batch for both columns cost less than two calls (bench/side_by_side.py).
   playground.Comparer applies it on a CPU.
4. A lean LoRA forward for training. PEFT's Linear casts its input to the adapter's dtype (fp32)
   before the dropout and lora_A, so under bf16 autocast every adapted layer copies its bf16 input
   to fp32 and autocast copies it back to bf16 for the product (forward and backward), and it
   multiplies the full-width output by the scaling. The lean forward keeps the input's dtype
   (autocast still computes lora_A/lora_B in bf16, as before) and scales the rank-r product
   instead: the same values (bit for bit when alpha / r is a power of two), fewer passes over
   the activations. train.build_trainer applies it on a CPU; bench/RESULTS.md has the effect.
"""

from __future__ import annotations

import torch

_KEEP_BITS = 16  # random bits per element: p is rounded to a multiple of 1 / 2**16
# Row counts for which W @ x.T beat x @ W.T (fp32, 2 cores, SmolLM2-135M shapes, 2026-11-27):
# 1 row 38 vs 37 ms, 2: 21 vs 61, 3: 21 vs 66, 4: 23 vs 51, 6: 44 vs 40, 8: 57 vs 46.
FEW_ROWS = range(2, 5)


class FastDropout(torch.nn.Module):
    """Inverted dropout (zero with probability p, scale the rest by 1 / (1 - p)), the keep-mask
    drawn from 16 random bits per element. Uses torch's global generator, so seeding (the
    Trainer's set_seed) makes it reproducible."""

    def __init__(self, p: float):
        super().__init__()
        steps = 2 ** _KEEP_BITS
        self.drop_steps = round(p * steps)
        self.p = self.drop_steps / steps
        # int16 values are uniform over [-32768, 32767]: keep those >= threshold
        self.threshold = self.drop_steps - steps // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_steps == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Swap every LoRA layer's nn.Dropout for FastDropout with the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                fast = FastDropout(dropout.p)
                fast.train(dropout.training)
                dropouts[name] = fast
                swapped += 1
    return swapped


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

    def compact_on_cpu(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.scores_cpu_compact = True
    trl_utils._use_triton = compact_on_cpu
    return True


def _few_rows_linear(self, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if rows not in FEW_ROWS or x.dtype != torch.float32:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.matmul(self.weight, x.reshape(rows, x.shape[-1]).T).T
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.out_features)


def use_few_rows_linear(model) -> int:
    """Give every plain fp32 nn.Linear of the model (on a CPU) the few-rows product; returns how
    many. Quantized layers (bitsandbytes) and other dtypes keep their own forward."""
    import types

    patched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 \
                and module.weight.device.type == "cpu":
            module.forward = types.MethodType(_few_rows_linear, module)
            patched += 1
    return patched


def _lean_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = self.active_adapters
    name = adapters[0] if len(adapters) == 1 else None
    if (args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant
            or (x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type))):
        return self._peft_forward(x, *args, **kwargs)  # anything but plain LoRA: PEFT's own forward
    result = self.base_layer(x)
    rank_r = self.lora_A[name](self.lora_dropout[name](x)) * self.scaling[name]
    return result + self.lora_B[name](rank_r)


def use_lean_lora_forward(model) -> int:
    """Give every PEFT LoRA Linear (the plain, full-precision kind) the lean forward; returns how
    many. Layers with a variant (DoRA), several adapters, merged weights or extra arguments fall
    back to PEFT's forward call by call; 4-bit layers (a different class) keep theirs."""
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_lean_lora_forward, module)
            patched += 1
    return patched
