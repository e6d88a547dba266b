"""LoRA's forward in training, with fewer passes and less kept for the backward. PEFT's Linear casts its
input to the adapter's dtype (fp32) before the dropout and lora_A, so under bf16 autocast every adapted
layer copies its bf16 input to fp32 and autocast copies it back for the product, and autograd keeps, for
each adapter, the dropped-out copy and the dropout's mask (q, k and v each their own, although their
input is the same). Two levers: the lean forward keeps the input's dtype and scales the rank-r product
instead of the full-width output (the same values, bit for bit when alpha / r is a power of two);
share_lora_inputs makes lora_A draw its dropout mask itself (dropout.draw_keep) and keep only x and the
generator's state, drawing the same mask again in the backward (same forward, same gradients). Figures:
bench/RESULTS.md, Evidence behind the levers ("less kept for the backward": ~146 MiB of a 576-token
step's 538 MiB). Proofs: tests/test_perf_cpu.py, tests/test_memory.py. Switch: `speedups: off`.
"""

from __future__ import annotations

import types

import torch

from tuning.levers.dropout import draw_keep, keep_rule


# --- the lean forward -------------------------------------------------------------------------------

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
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_lean_lora_forward, module)
            patched += 1
    return patched


# --- LoRA's dropout and A matrix in one step that keeps only its input ---------------------------------

class _DropoutLoraA(torch.autograd.Function):
    """lora_A(dropout(x)): the forward draws the mask and keeps x and the generator's state, the
    backward draws the same mask again."""

    @staticmethod
    def forward(ctx, x, weight, threshold, scale, dtype):
        state = torch.get_rng_state() if scale is not None else None
        keep = draw_keep(x, threshold) if scale is not None else None
        out = torch.nn.functional.linear(_dropped(x, keep, scale, dtype), weight.to(dtype))
        ctx.save_for_backward(x, weight)  # x: the tensor the layer's other adapters see too
        ctx.state, ctx.threshold, ctx.scale, ctx.dtype = state, threshold, scale, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        keep = None
        if ctx.scale is not None:  # the forward's mask, drawn again from the generator's state then
            generator = torch.Generator()
            generator.set_state(ctx.state)
            keep = draw_keep(x, ctx.threshold, generator)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:  # as autograd's mm backward computes it for a transposed weight
            dropped = _dropped(x, keep, ctx.scale, ctx.dtype)
            grad_w = flat_grad.t().mm(dropped.reshape(-1, dropped.shape[-1])).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = flat_grad.mm(weight.to(ctx.dtype)).view(*x.shape[:-1], weight.shape[1])
            if keep is not None:  # the dropout's backward, in fp32 like PEFT's path
                grad_x = torch.where(keep, grad_x.float(), 0.0) * ctx.scale
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_w, None, None, None


def _dropped(x, keep, scale, dtype):
    """dropout(x) in dtype, computed as PEFT's path computes it: on x in fp32, then cast."""
    if keep is None:
        return x.to(dtype)
    return torch.where(keep, x.float() * scale, 0.0).to(dtype)


def _lora_a_forward(self, x):
    """lora_A's forward after share_lora_inputs: while training, the dropout (moved here from the
    layer's lora_dropout) and the product in one autograd function; otherwise the plain product."""
    if not self.training:  # eval: the dropout is an identity
        return torch.nn.functional.linear(x, self.weight)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.weight.dtype
    threshold, scale = self.shared_dropout
    return _DropoutLoraA.apply(x, self.weight, threshold, scale, dtype)


def _cast_unless_autocast(self, x, dtype):
    """PEFT casts a layer's input to the adapter's dtype (fp32) before the adapter: a copy of x per
    adapter. Under autocast the product casts anyway, so the adapters get x itself."""
    if x is not None and self.training and torch.is_autocast_enabled(x.device.type):
        return x
    return type(self)._cast_input_dtype(self, x, dtype)


def share_lora_inputs(model) -> int:
    """Give every plain LoRA adapter of a PeftModel the combined dropout + A step (_lora_a_forward):
    its lora_dropout becomes an identity and lora_A draws the same mask (dropout.draw_keep, p rounded
    to a multiple of 1/65536) itself. Adapters with a variant (DoRA) keep PEFT's path. Returns how many
    adapters changed."""
    changed = 0
    for module in model.modules():
        dropouts, lora_a = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not isinstance(dropouts, torch.nn.ModuleDict) or not isinstance(lora_a, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            a = lora_a[name] if name in lora_a else None
            if type(a) is not torch.nn.Linear or a.bias is not None or name in getattr(module, "lora_variant", {}):
                continue
            p = getattr(dropout, "p", 0.0) if isinstance(dropout, torch.nn.Module) else 0.0
            drop_steps, threshold, scale = keep_rule(p)
            a.shared_dropout = (threshold, scale) if drop_steps else (0, None)
            a.forward = types.MethodType(_lora_a_forward, a)
            dropouts[name] = torch.nn.Identity()
            module._cast_input_dtype = types.MethodType(_cast_unless_autocast, module)
            changed += 1
    return changed

