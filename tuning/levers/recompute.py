"""Two small activations computed again in the backward instead of kept. A gated MLP's silu(gate) * up
keeps gate and up, and autograd keeps silu(gate) as well: SiluMul keeps the two inputs and computes the
activation again in the backward (one tensor of the MLP's width less per layer: 51 MiB of the 538 a
576-token step of the quickstart keeps). An RMSNorm computes in fp32 and autograd keeps that fp32 copy
of its input (2 norms a layer: 76 MiB); run through torch's own activation checkpointing, a bf16 norm
keeps only its bf16 input and computes itself again (a few element-wise passes over one hidden-state
tensor). The same ops either way: the same loss and gradients, bit for bit (tests/test_memory.py).
Figures: bench/RESULTS.md, Evidence behind the levers ("less kept for the backward"). Switch:
`speedups: off` (`gradient_checkpointing: true` keeps even less, ~30% slower).
"""

from __future__ import annotations


# --- the MLP's SiLU product keeps its two inputs, not the activation as well ---------------------------

def _build_silu_mul():
    import torch

    class SiluMul(torch.autograd.Function):
        """silu(gate) * up that keeps gate and up for the backward and computes silu(gate) again there;
        autograd keeps silu's input and both factors of the product (one tensor more per layer). The
        backward is autograd's own: MulBackward (grad * other) and aten.silu_backward."""

        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return torch.nn.functional.silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            grad_gate = grad_up = None
            if ctx.needs_input_grad[0]:
                grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
            if ctx.needs_input_grad[1]:
                grad_up = grad * torch.nn.functional.silu(gate)
            return grad_gate, grad_up

    return SiluMul


_SILU_MUL = []  # built on first use: torch is imported then


def _gated_mlp_forward(self, x):
    """A Llama-style MLP, down(silu(gate(x)) * up(x)), with the product as SiluMul while training
    (gate before up, as the model's own forward calls them: LoRA's dropout draws in that order)."""
    if not self.training:
        return self._library_forward(x)
    if not _SILU_MUL:
        _SILU_MUL.append(_build_silu_mul())
    gate = self.gate_proj(x)
    return self.down_proj(_SILU_MUL[0].apply(gate, self.up_proj(x)))


def share_mlp_activation(model) -> int:
    """Give every Llama-style gated MLP (gate_proj, up_proj, down_proj and a SiLU act_fn, the
    forward down(act(gate(x)) * up(x))) the SiluMul product while training. Returns how many."""
    import inspect
    import types

    import torch

    changed = 0
    for module in model.modules():
        act = getattr(module, "act_fn", None)
        if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) or act is None:
            continue
        if hasattr(module, "_library_forward"):
            continue  # once
        silu = isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            continue
        if not silu or "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" not in source:
            continue  # another shape of MLP: its own forward stays
        module._library_forward = module.forward
        module.forward = types.MethodType(_gated_mlp_forward, module)
        changed += 1
    return changed


# --- RMSNorm: keep the bf16 input, not the fp32 copy ------------------------------------------------

def _checkpointed_norm_forward(self, hidden_states):
    import torch

    if not (self.training and torch.is_grad_enabled()) or hidden_states.dtype == torch.float32:
        return self._library_forward(hidden_states)  # an fp32 input is the copy autograd would keep anyway
    # no random numbers in a norm: nothing to preserve between the two runs
    return torch.utils.checkpoint.checkpoint(self._library_forward, hidden_states, use_reentrant=False,
                                             preserve_rng_state=False)


def recompute_norms(model) -> int:
    """Give every RMSNorm of the model (a module whose class name ends in RMSNorm and that has a weight
    and an epsilon) the checkpointed forward while training. Returns how many."""
    import types

    changed = 0
    for module in model.modules():
        if not type(module).__name__.endswith("RMSNorm") or hasattr(module, "_library_forward"):
            continue
        if not hasattr(module, "weight") or not any(hasattr(module, n) for n in ("variance_epsilon", "eps")):
            continue
        module._library_forward = module.forward
        module.forward = types.MethodType(_checkpointed_norm_forward, module)
        changed += 1
    return changed
