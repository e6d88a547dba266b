"""Training, the levers, the Playground and the merged export on every model family users bring: Llama,
Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3, each a tiny random model (2 layers, hidden 64,
the SmolLM2 tokenizer; test_gguf_families.build_tiny) saved as a local folder, as `--set base_model=<folder>`
takes it.

- every family trains (LoRA in fp32 and in bf16, QLoRA with a 4-bit NF4 base) to "completed" with finite
  losses and an adapter holding LoRA weights for the family's own projection names;
- `speedups: auto` gives the first step's loss and LoRA gradients of `speedups: off` on every family, and the
  log says which lever applied where (Gemma's GELU MLP and Phi-3's fused gate_up_proj: "nothing matched");
  a sliding window (Mistral, Phi-3, Gemma 3) is kept by the padding-free attention lever;
- the Playground's greedy answers, base and tuned, are plain transformers + PEFT `generate`'s tokens;
- the merged export loads in plain transformers with the logits of base + adapter.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from conftest import chat_rows, write_jsonl
from test_gguf_families import FAMILIES, build_tiny
from tuning import models
from tuning.config import TrainConfig
from tuning.runs.events import read_events
from tuning.train import trainer as train

ATTENTION_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The linear layers `target_modules: all-linear` adapts in each family (the LM head never).
PROJECTIONS = {family: set(ATTENTION_MLP) for family in FAMILIES}
PROJECTIONS["phi3"] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # fused q/k/v and gate/up
# RMSNorms per family (2 layers + the final norm): 2 a layer; Qwen3 and Gemma 3 add q_norm and k_norm,
# Gemma 2 and 3 a norm after attention and after the MLP as well.
NORMS = {"llama": 5, "mistral": 5, "qwen2": 5, "phi3": 5, "qwen3": 9, "gemma2": 9, "gemma3_text": 13}
SILU_GATED = {"llama", "mistral", "qwen2", "qwen3"}  # Gemma: GELU; Phi-3: one fused gate_up_proj
# the levers a training process applies, in the registry's order
TRAINING_LEVERS = ["allocator_arenas", "contiguous_head_input", "varlen_sdpa", "fast_dropout", "trained_tokens_only",
                   "lean_lora_forward", "token_buckets", "malloc_trim", "lm_head_tiles", "shared_lora_inputs",
                   "mlp_activation", "norms", "liger_kernels"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
STEPS = 3
PROMPTS = ["Who are you?", "Name three colours of the sea."]


# --- the tiny models, the data and the runs (each trained once per module) -------------------------

@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, embedded_tokenizer):
    """family -> its tiny model's folder, built on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, embedded_tokenizer, tmp_path_factory.mktemp(family))
        return built[family]
    return get


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", chat_rows(12))


def _config(folder: Path, data: Path, **changes) -> TrainConfig:
    values = dict(base_model=str(folder), dataset=str(data), method="lora", precision="fp32", max_steps=STEPS,
                  per_device_batch_size=4, max_length=64, learning_rate=2e-2, lr_scheduler="constant",
                  warmup_ratio=0.0, save_steps=100, eval_split=0.0, final_evaluation="none", logging_steps=1,
                  lora_r=8, lora_alpha=16, probe_every_checkpoint=False,
                  # the same 12 rows in every run compared: a random model's own answers to the general
                  # questions (general_rows auto) differ between speedups off and auto
                  general_rows="off")
    return TrainConfig(**{**values, **changes})


def _lever_lines(out: str) -> dict[str, str]:
    """{lever: "applied (...)" or "skipped (...)"} from the lines the registry prints."""
    found = (line.split(": ", 1) for line in out.splitlines() if line.startswith("lever "))
    return {name.removeprefix("lever "): said for name, said in found}


def _base_summary(model) -> dict:
    """What the loader gave training: the dtype of the adapted layers' weights, and the 4-bit NF4 layers."""
    import bitsandbytes as bnb

    nf4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    projection = next(m for n, m in model.named_modules() if n.endswith(("self_attn.o_proj",)))
    return {"dtype": projection.weight.dtype, "nf4": len(nf4),
            "quant_types": {m.weight.quant_type for m in nf4}}


@dataclass
class Run:
    family: str
    cfg: TrainConfig
    run_dir: Path
    workspace: Path
    rc: int
    out: str
    base: dict

    @property
    def adapter(self) -> Path:
        return self.run_dir / "adapter"


def _train(family: str, folder: Path, data: Path, root: Path, **changes) -> Run:
    """train.run as the CLI runs it, its stdout kept (the lever lines) and the loaded base summarised."""
    cfg = _config(folder, data, **changes)
    workspace = root / "ws"
    run_dir = workspace / "runs" / f"{family}-{cfg.method}-{cfg.precision}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    seen = {}
    real = models.load_base_for_training

    def recording(cfg, model_path):
        model = real(cfg, model_path)
        seen.update(_base_summary(model))
        return model
    out = io.StringIO()
    with mock.patch.object(models, "load_base_for_training", recording), contextlib.redirect_stdout(out):
        rc = train.run(cfg, run_dir, workspace)
    return Run(family, cfg, run_dir, workspace, rc, out.getvalue(), seen)


@pytest.fixture(scope="module")
def trained(family_dir, data_file, tmp_path_factory):
    """(family, method, precision) -> its Run, trained on first use (the Playground and export tests reuse
    the LoRA fp32 runs)."""
    cache: dict[tuple, Run] = {}

    def get(family: str, method: str = "lora", precision: str = "fp32") -> Run:
        key = (family, method, precision)
        if key not in cache:
            cache[key] = _train(family, family_dir(family), data_file, tmp_path_factory.mktemp("run"),
                                method=method, precision=precision)
        return cache[key]
    return get


# --- 1. every family trains in fp32, bf16 and 4-bit NF4 -------------------------------------------

KINDS = {"lora-fp32": ("lora", "fp32"), "lora-bf16": ("lora", "bf16"), "qlora-bf16": ("qlora", "bf16")}
ADAPTER_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_to_an_adapter_of_its_own_projections(family, kind, trained):
    method, precision = KINDS[kind]
    run = trained(family, method, precision)
    assert run.rc == 0, run.out[-3000:]
    if method == "qlora":  # every adapted linear layer of the base in 4-bit NF4, the rest in the compute dtype
        assert run.base["nf4"] == 2 * len(PROJECTIONS[family]) and run.base["quant_types"] == {"nf4"}, run.base
    else:
        assert run.base["nf4"] == 0 and run.base["dtype"] == PRECISIONS[precision], run.base
    events, _ = read_events(run.run_dir / "events.jsonl")
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "completed" and end["step"] == STEPS, end
    losses = [e["loss"] for e in events if e["event"] == "log"]
    assert len(losses) == STEPS and all(math.isfinite(x) and x > 0 for x in losses), losses
    assert math.isfinite(end["train_loss"])
    assert f"completed: step {STEPS}" in run.out

    weights = load_file(run.adapter / "adapter_model.safetensors")
    parsed = {k: ADAPTER_KEY.match(k) for k in weights}
    assert all(parsed.values()), [k for k, m in parsed.items() if not m]
    found = {(int(m[1]), m[2], m[3]) for m in parsed.values()}
    assert found == {(layer, p, ab) for layer in (0, 1) for p in PROJECTIONS[family] for ab in "AB"}
    # PEFT keeps LoRA weights in fp32 over a bf16 base; over a 4-bit base TRL casts them to bf16 (the QLoRA
    # paper's recipe, trl/trainer/sft_trainer.py)
    adapter_dtype = torch.bfloat16 if method == "qlora" else torch.float32
    for key, tensor in weights.items():
        assert tensor.dtype == adapter_dtype and torch.isfinite(tensor).all(), key
        assert tensor.shape[0 if ".lora_A." in key else 1] == run.cfg.lora_r, (key, tensor.shape)
    assert all(weights[k].abs().max() > 0 for k in weights if ".lora_B." in k), "a LoRA B matrix never moved"


# --- 2. the levers change no number on any family --------------------------------------------------

@pytest.fixture
def trl_own_settings(monkeypatch):
    """TRL's own fused-head switch and tile width (an earlier `auto` trainer in this process patched them)."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)


def _first_step(cfg: TrainConfig, root: Path):
    """(first step's loss, each trainable parameter's gradient of that step, the lever lines) from
    build_trainer and one optimizer step. LoRA B starts from the same random values on both sides (B = 0
    would leave every A without a gradient); no dropout, no clipping (the gradients as computed)."""
    from transformers import TrainerCallback

    run_dir = root / "runs" / "r"
    run_dir.mkdir(parents=True)
    grads: dict[str, torch.Tensor] = {}

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            generator = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for name, p in sorted(model.named_parameters()):
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=generator) * 0.05)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not grads:
                grads.update({n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                              if p.requires_grad})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer, _ = train.build_trainer(cfg, run_dir, root, train.EventLog(run_dir / "events.jsonl"),
                                         train.StopRequested())
        trainer.add_callback(Grab())
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses[0], grads, _lever_lines(out.getvalue())


# relative tolerance on the loss and on each gradient tensor's norm of difference: fp32 is the same
# arithmetic in another order (per-sequence attention, the rank-r scaling); bf16 rounds every product.
EQUIVALENCE_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


def _assert_same_step(family, precision, off, auto):
    tolerance = EQUIVALENCE_TOLERANCE[precision]
    (loss_off, grads_off, _), (loss_auto, grads_auto, _) = off, auto
    assert math.isfinite(loss_off) and loss_auto == pytest.approx(loss_off, rel=tolerance), (family, precision)
    assert grads_auto.keys() == grads_off.keys() and len(grads_off) == 4 * len(PROJECTIONS[family])
    for name, g in grads_off.items():
        assert g.abs().max() > 0, f"{name}: no gradient, the comparison would prove nothing"
        diff = (grads_auto[name] - g).norm() / g.norm()
        assert diff <= tolerance, f"{family} {precision}: {name} gradient differs by {diff:.2e} (relative)"


@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_levers_keep_the_first_step_and_say_where_they_apply(family, precision, family_dir, data_file, tmp_path,
                                                             trl_own_settings):
    cfg = _config(family_dir(family), data_file, precision=precision, max_steps=1, lora_dropout=0.0,
                  max_grad_norm=0.0)
    off = _first_step(cfg.replace(speedups="off"), tmp_path / "off")  # first: the libraries' own settings
    auto = _first_step(cfg.replace(speedups="auto"), tmp_path / "auto")
    _assert_same_step(family, precision, off, auto)

    assert off[2] == {name: "skipped (speedups: off)" for name in TRAINING_LEVERS}
    said = auto[2]
    assert list(said) == TRAINING_LEVERS, said
    layers = 2 * len(PROJECTIONS[family])
    expected = {
        "varlen_sdpa": ("skipped (nothing matched: attention is eager, not sdpa)" if family == "gemma2"
                        else "applied (SDPA within each sequence of a padding-free batch)"),
        "fast_dropout": "skipped (nothing matched: no LoRA dropout with p > 0)",
        "lean_lora_forward": f"applied (lean forward in {layers} LoRA layers)",
        "shared_lora_inputs": f"applied ({layers} LoRA adapters keep their layer's input; the dropout mask is "
                              "drawn again in the backward)",
        "mlp_activation": ("applied (SiLU recomputed in the backward in 2 MLPs)" if family in SILU_GATED
                           else "skipped (nothing matched: no Llama-style gated MLP)"),
        "norms": f"applied ({NORMS[family]} RMSNorms recomputed in the backward)",
        "liger_kernels": "skipped (CUDA only)",
    }
    assert {k: said[k] for k in expected} == expected
    assert all(v.startswith(("applied (", "skipped (nothing matched", "skipped (CUDA only"))
               for v in said.values()), said


# A sliding window shorter than the examples (real models: Mistral 7B v0.1 4096, Phi-3 mini 2047, Gemma 3
# 1B 512 tokens): the padding-free attention lever attends within each sequence, and must keep the window
# there too. (Gemma 2 trains with eager attention: the lever does not apply.)
@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.parametrize("family", ["mistral", "phi3", "gemma3_text"])
def test_padding_free_attention_keeps_a_sliding_window(family, embedded_tokenizer, data_file, tmp_path,
                                                       trl_own_settings):
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = embedded_tokenizer
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, sliding_window=4,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **FAMILIES[family])
    folder = tmp_path / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = _config(folder, data_file, max_steps=1, lora_dropout=0.0, max_grad_norm=0.0)
    off = _first_step(cfg.replace(speedups="off"), tmp_path / "off")
    auto = _first_step(cfg.replace(speedups="auto"), tmp_path / "auto")
    assert auto[2]["varlen_sdpa"].startswith("applied")
    _assert_same_step(family, "fp32", off, auto)
    # the window matters here: without it the loss is another one
    wide = _first_step(cfg.replace(base_model=str(_widened(folder, tmp_path / "wide"))), tmp_path / "wide-run")
    assert abs(wide[0] - off[0]) > 10 * EQUIVALENCE_TOLERANCE["fp32"] * abs(off[0]), (wide[0], off[0])


def _widened(folder: Path, target: Path) -> Path:
    """The same model with its sliding window wider than any example."""
    import shutil

    from transformers import AutoConfig

    shutil.copytree(folder, target)
    config = AutoConfig.from_pretrained(target)
    config.sliding_window = 4096
    config.save_pretrained(target)
    return target


def test_windowed_attention_of_one_sequence_is_transformers_sliding_mask():
    """The lever's per-sequence attention with a window equals SDPA under transformers' own
    sliding-window causal mask, in fp32 and bf16 (where the CPU path buckets long sequences)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import and_masks, causal_mask_function, sliding_window_overlay

    from tuning.levers import attention

    module = torch.nn.Module()
    module.is_causal = True
    mask_fn = and_masks(causal_mask_function, sliding_window_overlay(5))
    for length, dtype in ((20, torch.float32), (150, torch.bfloat16), (4, torch.float32)):
        torch.manual_seed(length)
        q, k, v = (torch.randn(1, 2, length, 8, dtype=dtype) for _ in range(3))
        idx = torch.arange(length)
        mask = mask_fn(0, 0, idx[:, None], idx[None, :])[None, None]
        want = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask)[0]
        attend = attention._cpu_half_attention if dtype == torch.bfloat16 else attention._causal_attention
        got = attend(module, q, k, v, sliding_window=5)
        torch.testing.assert_close(got.float(), want, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
        causal = attend(module, q, k, v)
        assert (causal.float() - want).abs().max() > 0.05 or length <= 5  # the window changes the answer


# --- 3. the Playground answers as plain transformers + PEFT -----------------------------------------

def _plain_greedy(model, tokenizer, prompt: str, n: int) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    tokens = new[0, ids.shape[1]:].tolist()
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return tokens[:next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]


@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.parametrize("family", list(FAMILIES))
def test_playground_answers_are_plain_transformers_and_peft(family, trained, family_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning.infer import generation, playground

    run = trained(family)
    assert run.rc == 0, run.out[-3000:]
    n = 12
    comparer = playground.comparer_for_run(run.run_dir, run.workspace)
    pairs = comparer.generate(PROMPTS, run.adapter, settings=playground.GenerationSettings(max_new_tokens=n))
    name = comparer.attach(run.adapter)
    streamer = generation.RowStreamer(4, {comparer.tokenizer.eos_token_id, comparer.tokenizer.pad_token_id})
    generation.generate_rows(comparer.peft, comparer.tokenizer, comparer.conversations(PROMPTS * 2),
                             [generation.BASE] * 2 + [name] * 2, streamer, max_new_tokens=n, **generation.GREEDY)
    base_ids, tuned_ids = streamer.rows[:2], streamer.rows[2:]

    tokenizer = AutoTokenizer.from_pretrained(family_dir(family))
    base = AutoModelForCausalLM.from_pretrained(family_dir(family), dtype=torch.float32).eval()
    plain_base = [_plain_greedy(base, tokenizer, p, n) for p in PROMPTS]
    tuned = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    plain_tuned = [_plain_greedy(tuned, tokenizer, p, n) for p in PROMPTS]

    assert all(plain_base) and all(plain_tuned), "an empty answer proves nothing"
    assert plain_tuned != plain_base, f"{family}: the adapter must change the answer, or this test proves nothing"
    assert base_ids == plain_base, family
    assert tuned_ids == plain_tuned, family
    decode = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in plain_base + plain_tuned]
    assert [b for b, _ in pairs] + [t for _, t in pairs] == decode


# --- 4. the merged export loads in plain transformers -----------------------------------------------

@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.parametrize("family", list(FAMILIES))
def test_merged_export_has_the_logits_of_base_and_adapter(family, trained, family_dir, embedded_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuning.ship import export

    run = trained(family)
    assert run.rc == 0, run.out[-3000:]
    with contextlib.redirect_stdout(io.StringIO()):
        folder = export.export_merged(run.run_dir, run.workspace, f"{family}-merged")
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(family_dir(family), dtype=torch.float32).eval()
    assert type(merged) is type(base) and merged.config.model_type == family
    assert not any("lora" in k for f in folder.glob("*.safetensors") for k in load_file(f))
    text = embedded_tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[1]}], tokenize=False,
                                                  add_generation_prompt=True)
    ids = embedded_tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        base_logits = base(ids).logits
        want = PeftModel.from_pretrained(base, str(run.adapter)).eval()(ids).logits
        got = merged(ids).logits
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4 * scale, f"{family}: merged logits differ by {diff:.2e} (largest {scale:.2f})"
    moved = (want - base_logits).abs().max().item()
    assert moved > 100 * diff and moved > 1e-3 * scale, f"{family}: the adapter hardly moves the logits ({moved})"


# --- 5. on a GPU -------------------------------------------------------------------------------------

@pytest.mark.slow  # trains a tiny model: seconds each on the 2-core CPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: QLoRA in bf16 with bitsandbytes' "
                    "CUDA kernels (this machine has none; the CPU runs above cover the rest)")
@pytest.mark.parametrize("family", ["llama", "gemma3_text", "phi3"])
def test_qlora_bf16_on_cuda(family, family_dir, data_file, tmp_path):
    run = _train(family, family_dir(family), data_file, tmp_path, method="qlora", precision="bf16")
    assert run.rc == 0, run.out[-3000:]
    assert run.base["nf4"] == 2 * len(PROJECTIONS[family]) and run.base["quant_types"] == {"nf4"}
    events, _ = read_events(run.run_dir / "events.jsonl")
    assert events[-1]["status"] == "completed" and math.isfinite(events[-1]["train_loss"])
    # on a GPU the CPU levers stand aside
    said = _lever_lines(run.out)
    assert said["fast_dropout"] == "skipped (not a CPU (cuda))" and said["norms"] == "skipped (not a CPU (cuda))"
    weights = load_file(run.adapter / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
