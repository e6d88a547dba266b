"""LoRA dropout on a CPU: one cheaper mask. PEFT's LoRA dropout is torch.nn.Dropout, which on a CPU
draws one float per element from torch's Mersenne Twister (about 10 ms for a 1583 x 576 activation, 7
adapters a layer: 28% of a training step of the embedded model). draw_keep takes 16 random bits per
element instead, four from each 64-bit draw: 6x cheaper, the same distribution with p rounded to a
multiple of 1/65536 (bench/RESULTS.md, Evidence behind the levers). It is the one mask of the project:
FastDropout draws it in the forward, and lora_forward.share_lora_inputs draws it inside lora_A and again
in the backward from the saved generator state. tests/test_perf_cpu.py proves FastDropout is dropout;
tests/test_memory.py that both users draw the same numbers. Switch: `speedups: off` (or
`lora_dropout: 0`, which draws nothing).
"""

from __future__ import annotations

import torch

KEEP_BITS = 16  # random bits per element: p is rounded to a multiple of 1 / 2**16


def keep_rule(p: float) -> tuple[int, int, float]:
    """(drop steps, threshold, scale) of dropout probability p: p rounded to drop_steps / 2**16; an
    element is kept where its 16 random bits (an int16, uniform over [-32768, 32767]) are >= threshold,
    and scaled by 1 / (1 - p)."""
    steps = 2 ** KEEP_BITS
    drop_steps = round(p * steps)
    return drop_steps, drop_steps - steps // 2, 1.0 / (1.0 - drop_steps / steps)


def draw_keep(x: torch.Tensor, threshold: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The keep-mask for x: 16 random bits per element (four per 64-bit draw), kept where they are
    >= threshold. From `generator`, or torch's global generator (the Trainer's set_seed seeds it)."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None,
                                                                                 generator=generator)
    return words.view(torch.int16)[:n].view(x.shape) >= threshold


class FastDropout(torch.nn.Module):
    """Inverted dropout (zero with probability p, scale the rest by 1 / (1 - p)) with draw_keep's mask.
    Uses torch's global generator, so seeding makes it reproducible."""

    def __init__(self, p: float):
        super().__init__()
        self.drop_steps, self.threshold, self.scale = keep_rule(p)
        self.p = self.drop_steps / 2 ** KEEP_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_steps == 0:
            return x
        return torch.where(draw_keep(x, self.threshold), x * self.scale, 0.0)

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
