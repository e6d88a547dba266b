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
- BucketCollator: a padding-free batch (one row, every step another token count) padded up to a
  multiple of TOKEN_BUCKET tokens by one extra sequence that has no labels. On a CPU every new
  token count is a new shape for every matrix product, and the math libraries keep state per shape
  (oneDNN's primitives, glibc's heap pieces of those sizes): with a different count at every step a
  run's RSS kept growing by 80-300 MB a step. Rounded up, the few shapes repeat. The loss, its
  gradients and each row's loss are the same (the extra sequence attends only to itself and has no
  labels; tests/test_memory.py); the padding costs ~TOKEN_BUCKET / 2 tokens of compute a step.
- share_lora_inputs: the activations a LoRA step keeps for its backward, less. PEFT computes
  lora_A(dropout(x)) on an fp32 copy of x, so autograd keeps, for every adapter, the dropped-out copy
  (in bf16 under autocast) and the dropout's mask: q, k and v each keep their own although x is
  the same. Here lora_A draws its dropout mask itself and keeps only x (one tensor for q, k and v)
  and the random generator's state; the backward draws the same mask again. Same forward, same
  gradients (tests/test_memory.py). On a 576-token batch of the quickstart autograd kept 538 MiB,
  259 of them the adapters' copies and masks; this keeps ~146 MiB less (bench/RESULTS.md, Memory).
- share_mlp_activation: a gated MLP's silu(gate) * up keeps gate and up and computes silu(gate) again in
  the backward, where autograd keeps silu(gate) as well: one tensor of the MLP's width less per layer
  (51 MiB of the 538 above). Same loss and gradients, bit for bit (tests/test_memory.py).
- contiguous_head_input: the LM head gets a contiguous input. Generation asks for the last position's
  logits only (logits_to_keep=1), so the head sees hidden_states[:, -1:, :], a strided view; torch
  2.13's CPU bf16 linear on such a 3-D view broadcasts the weight to every row (a batched matmul over
  rows copies of the 49,152 x 576 head): for the end-of-run checks' 32 rows that is +1.7 GiB and 1.3 s
  per prompt pass, against 8 MiB and 5 ms on a contiguous copy of the same 32 x 576 numbers (fp32: 122
  ms against a few). Same logits, bit for bit (tests/test_memory.py).
- narrow_lm_head_chunks: TRL's fused LM head scores 32,768 vocabulary columns at a time; on a CPU each
  such tile of the trained tokens is copied to fp32 several times in its forward and backward (the
  softmax terms, the gradient, the weight chunk for the fp32 product): ~250 MiB above the step's
  activations for ~300 trained tokens. 4,096 columns at a time: the same numbers up to the order of
  fp32 additions, a quickstart step's peak ~250 MiB lower and no slower (2.39 vs 2.63 s a step,
  interleaved on the same batches; bench/RESULTS.md, Memory).
- recompute_norms: an RMSNorm computes in fp32 and autograd keeps that fp32 copy of its input for the
  backward (2 norms a layer: 76 of the 345 MiB a 576-token step keeps). Run through torch's own
  activation checkpointing, a norm keeps only its bf16 input and computes itself again in the
  backward (a few element-wise passes over one hidden-state tensor). Same ops: the same loss and
  gradients, bit for bit (tests/test_memory.py).
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


def _glibc():
    """The C library if it is glibc (it has mallopt and malloc_trim), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim). False where there is no glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


# glibc's mallopt parameters (malloc.h) and the values a training or generating process runs with:
# one heap for the main thread and one for the math threads, instead of one per thread. Not set: a low
# mmap threshold (128 KiB) cut a quickstart step's RSS growth but halved the training speed (every big
# tensor became a fresh zero-filled mapping: 95 vs 200 tokens/s, side by side, bench/RESULTS.md,
# Memory); the trainer instead gives freed heap pages back after every step (trim_callback).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ALLOCATOR = {  # parameter: (value, the environment variable that sets it at process start)
    M_ARENA_MAX: (2, "MALLOC_ARENA_MAX"),
}


def tune_allocator() -> bool:
    """Set glibc's allocator for a process that trains or generates (ALLOCATOR), where the
    environment does not already set a parameter. Call it before the model is loaded: blocks
    allocated before keep their old placement. False (nothing changed) where there is no glibc."""
    import os

    libc = _glibc()
    if libc is None:
        return False
    for param, (value, env) in ALLOCATOR.items():
        if env not in os.environ:
            libc.mallopt(param, value)
    return True


# --- bucketed token counts for padding-free batches ---------------------------------------------------

TOKEN_BUCKET = 64  # a padding-free batch's token count is rounded up to a multiple of this


def bucket_batch(batch: dict, multiple: int, pad_token_id: int) -> tuple[dict, int]:
    """(batch, tokens added): a padding-free batch (TRL's collator with padding_free: one row,
    position ids restarting at each example, cu_seq_lens) grown to a multiple of `multiple` tokens
    by one more sequence of pad tokens: positions 0..k-1, labels -100, its own cu_seq_lens entry and
    seq_idx. TRL's own pad_to_multiple_of pads positions with 0, which makes every pad token a
    sequence of its own (one attention call each). Any other batch comes back unchanged."""
    import torch

    ids = batch.get("input_ids")
    cu = batch.get("cu_seq_lens_q")
    if multiple <= 1 or ids is None or cu is None or "position_ids" not in batch or ids.shape[0] != 1:
        return batch, 0
    length = ids.shape[1]
    extra = -length % multiple
    if extra == 0:
        return batch, 0
    out = dict(batch)
    out["input_ids"] = torch.cat([ids, ids.new_full((1, extra), pad_token_id)], dim=1)
    if "labels" in batch:
        out["labels"] = torch.cat([batch["labels"], batch["labels"].new_full((1, extra), -100)], dim=1)
    positions = batch["position_ids"]
    out["position_ids"] = torch.cat([positions, torch.arange(extra, dtype=positions.dtype)[None]], dim=1)
    bounds = torch.cat([cu, torch.tensor([length + extra], dtype=cu.dtype)])
    out["cu_seq_lens_q"] = bounds
    if "cu_seq_lens_k" in batch:
        out["cu_seq_lens_k"] = bounds
    for key in ("max_length_q", "max_length_k"):
        if key in batch:
            out[key] = max(int(batch[key]), extra)
    if "seq_idx" in batch:
        seq_idx = batch["seq_idx"]
        out["seq_idx"] = torch.cat([seq_idx, seq_idx.new_full((1, extra), len(cu) - 1)], dim=1)
    return out, extra


PADDING_KEY = "bucket_padding"  # the batch key saying how many pad tokens bucket_batch added


class BucketCollator:
    """A padding-free collator whose batches are bucket_batch'ed; a padded batch carries the count
    of pad tokens under PADDING_KEY, which BucketTokens takes off the batch before the model sees it."""

    def __init__(self, inner, pad_token_id: int, multiple: int = TOKEN_BUCKET):
        self.inner, self.pad_token_id, self.multiple = inner, pad_token_id, multiple

    def __call__(self, examples: list[dict]) -> dict:
        batch, extra = bucket_batch(self.inner(examples), self.multiple, self.pad_token_id)
        if extra:
            batch[PADDING_KEY] = extra
        return batch


def bucket_tokens(trainer, multiple: int = TOKEN_BUCKET) -> int:
    """Bucket the trainer's padding-free batches (BucketCollator) and keep its count of tokens seen
    (tokens/s in the events) to the real tokens: the Trainer counts every input id it is given, so a
    forward pre-hook takes each training batch's padding count off the batch and a callback takes it
    off state.num_input_tokens_seen at the end of the step. Returns the multiple."""
    from transformers import TrainerCallback

    pad = trainer.processing_class.pad_token_id
    trainer.data_collator = BucketCollator(trainer.data_collator, pad if pad is not None else 0, multiple)

    class BucketTokens(TrainerCallback):
        def __init__(self):
            self.pending = 0

        def pre_hook(self, module, args, kwargs):
            extra = kwargs.pop(PADDING_KEY, 0)
            if module.training:
                self.pending += extra
            return args, kwargs

        def on_step_end(self, args, state, control, **kwargs):
            state.num_input_tokens_seen -= self.pending
            self.pending = 0

    callback = BucketTokens()
    trainer.model.register_forward_pre_hook(callback.pre_hook, with_kwargs=True)
    trainer.add_callback(callback)
    return multiple


def trim_callback():
    """A TrainerCallback that gives the heap's free pages back (release_freed_memory) after every
    step and every evaluation: what a step freed in the middle of the heap stays otherwise counted."""
    from transformers import TrainerCallback

    class ReleaseFreedMemory(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            release_freed_memory()

        def on_evaluate(self, args, state, control, **kwargs):
            release_freed_memory()

    return ReleaseFreedMemory()


# --- LoRA's dropout and A matrix in one step that keeps only its input ---------------------------------

_KEEP_BITS = 16  # random bits per element of the dropout mask, as tuning/cpu_speed.FastDropout draws them


def _draw_keep(x, threshold: int, generator=None):
    """The dropout mask FastDropout (tuning/levers/cpu_speed.py) draws for x: 16 random bits per element
    (four per 64-bit draw), kept where they are >= threshold. From `generator`, or torch's default."""
    import torch

    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None,
                                                                                 generator=generator)
    return words.view(torch.int16)[:n].view(x.shape) >= threshold


class _DropoutLoraA:
    """lora_A(dropout(x)) as one autograd function (built lazily: torch is imported on first use)."""

    fn = None

    @classmethod
    def get(cls):
        if cls.fn is None:
            cls.fn = cls._build()
        return cls.fn

    @staticmethod
    def _build():
        import torch

        class DropoutLoraA(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, weight, threshold, scale, dtype):
                state = torch.get_rng_state() if scale is not None else None
                keep = _draw_keep(x, threshold) if scale is not None else None
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
                    keep = _draw_keep(x, ctx.threshold, generator)
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

        return DropoutLoraA


def _dropped(x, keep, scale, dtype):
    """dropout(x) in dtype, computed as PEFT's path computes it: on x in fp32, then cast."""
    import torch

    if keep is None:
        return x.to(dtype)
    return torch.where(keep, x.float() * scale, 0.0).to(dtype)


def _lora_a_forward(self, x):
    """lora_A's forward after share_lora_inputs: while training, the dropout (moved here from the
    layer's lora_dropout) and the product in one autograd function; otherwise the plain product."""
    import torch

    if not self.training:  # eval: the dropout is an identity
        return torch.nn.functional.linear(x, self.weight)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.weight.dtype
    threshold, scale = self.shared_dropout
    return _DropoutLoraA.get().apply(x, self.weight, threshold, scale, dtype)


def _cast_unless_autocast(self, x, dtype):
    """PEFT casts a layer's input to the adapter's dtype (fp32) before the adapter: a copy of x per
    adapter. Under autocast the product casts anyway, so the adapters get x itself."""
    import torch

    if x is not None and self.training and torch.is_autocast_enabled(x.device.type):
        return x
    return type(self)._cast_input_dtype(self, x, dtype)


def share_lora_inputs(model) -> int:
    """Give every plain LoRA adapter of a PeftModel the combined dropout + A step (_lora_a_forward):
    its lora_dropout becomes an identity and lora_A draws the same mask (FastDropout's 16-bit draw,
    p rounded to a multiple of 1/65536) itself. Adapters with a variant (DoRA) keep PEFT's path.
    Returns how many adapters changed."""
    import types

    import torch

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
            steps = round(p * 2 ** _KEEP_BITS)
            if steps:
                a.shared_dropout = (steps - 2 ** (_KEEP_BITS - 1), 1.0 / (1.0 - steps / 2 ** _KEEP_BITS))
            else:
                a.shared_dropout = (0, None)
            a.forward = types.MethodType(_lora_a_forward, a)
            dropouts[name] = torch.nn.Identity()
            module._cast_input_dtype = types.MethodType(_cast_unless_autocast, module)
            changed += 1
    return changed


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


_SILU_MUL = []


def _gated_mlp_forward(self, x):
    """A Llama-style MLP, down(silu(gate(x)) * up(x)), with the product as SiluMul while training
    (gate before up, as the model's own forward calls them: LoRA's dropout draws in that order)."""
    if not self.training:
        return self._memory_forward(x)
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
        silu = isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            continue
        if not silu or "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" not in source:
            continue  # another shape of MLP: its own forward stays
        module._memory_forward = module.forward
        module.forward = types.MethodType(_gated_mlp_forward, module)
        changed += 1
    return changed


# --- the LM head's input, contiguous -------------------------------------------------------------------

def _contiguous_input(module, args):
    x = args[0]
    return None if x.is_contiguous() else (x.contiguous(), *args[1:])


def contiguous_head_input(model) -> bool:
    """Make the model's LM head copy a strided input (the last position of a prompt) to a contiguous
    tensor before its matmul (see the module's docstring). False when the model has no output embeddings."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_contiguous_input", False):
        return False
    head.register_forward_pre_hook(_contiguous_input)
    head._contiguous_input = True
    return True


# --- TRL's fused LM head, a narrower vocabulary tile --------------------------------------------------

LM_HEAD_VOCAB_CHUNK = 4096  # vocabulary columns per tile of TRL's fused LM head, on a CPU


def narrow_lm_head_chunks(columns: int = LM_HEAD_VOCAB_CHUNK) -> int | None:
    """Make TRL's fused LM head (read at each call from trl.trainer.utils) score `columns` vocabulary
    columns per tile. Returns the width set, or None when this TRL has no such setting."""
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        return None
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = columns
    return columns


# --- RMSNorm: keep the bf16 input, not the fp32 copy ------------------------------------------------

def _checkpointed_norm_forward(self, hidden_states):
    import torch

    if not (self.training and torch.is_grad_enabled()) or hidden_states.dtype == torch.float32:
        return self._memory_forward(hidden_states)  # an fp32 input is the copy autograd would keep anyway
    # no random numbers in a norm: nothing to preserve between the two runs
    return torch.utils.checkpoint.checkpoint(self._memory_forward, hidden_states, use_reentrant=False,
                                             preserve_rng_state=False)


def recompute_norms(model) -> int:
    """Give every RMSNorm of the model (a module whose class name ends in RMSNorm and that has a weight
    and an epsilon) the checkpointed forward while training. Returns how many."""
    import types

    changed = 0
    for module in model.modules():
        if not type(module).__name__.endswith("RMSNorm") or hasattr(module, "_memory_forward"):
            continue
        if not hasattr(module, "weight") or not any(hasattr(module, n) for n in ("variance_epsilon", "eps")):
            continue
        module._memory_forward = module.forward
        module.forward = types.MethodType(_checkpointed_norm_forward, module)
        changed += 1
    return changed
