"""GGUF export for every family llama.cpp runs among Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3
(text) and Phi-3: a tiny random model of each (2 layers, hidden 64, the SmolLM2 tokenizer) saved as a
merged folder, written with export.write_gguf, read back by transformers (`gguf_file=`): the same
logits to the dtype's tolerance and the same greedy tokens; the tokenizer, chat template and the
family's hyperparameters are in the file. Plus the refusals, which name the family and what is
supported."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tuning.ship import export
from tuning.ship import gguf as gguf_writer  # the writer's own helpers; `gguf` is the package

# Per family: what the tiny config sets beyond the shared sizes. Qwen3 and the Gemmas keep their
# config's default head_dim (128, 256): transformers' GGUF reader does not read head_dim back for
# them (it takes the class default), and the real models use these values. Qwen2/Qwen3 are tied,
# as their small sizes are; Gemma always is.
FAMILIES = {
    "llama": {"tie_word_embeddings": False},
    "mistral": {"tie_word_embeddings": False},
    "qwen2": {"tie_word_embeddings": True},
    "qwen3": {"tie_word_embeddings": True},
    "gemma2": {},
    "gemma3_text": {},
    "phi3": {"tie_word_embeddings": False},
}
# Tolerance on the largest logit difference, relative to the largest logit: f32 is the same
# arithmetic; f16 rounds each weight to 11 significant bits; Q8_0 to 8 bits per 32-value block.
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 5e-2}


def build_tiny(model_type: str, tokenizer, folder: Path) -> Path:
    """A random 2-layer model of `model_type` with the SmolLM2 tokenizer, saved like a merged export.
    Norm weights and biases get noise too, so that a missed norm offset or bias shows in the logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **FAMILIES[model_type])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, embedded_tokenizer):
    return {t: build_tiny(t, embedded_tokenizer, tmp_path_factory.mktemp(t)) for t in FAMILIES}


def _prompt(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours of the sea."}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt").input_ids


def _greedy(model, ids, n=10):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()


def _field(reader, key):
    field = reader.fields[key]
    if len(field.data) == 1 and field.types[0] != 9:
        value = field.parts[field.data[0]]
        return bytes(value).decode() if field.types[0] == 8 else value.item()
    return [bytes(field.parts[i]).decode() if field.types[-1] == 8 else field.parts[i].item() for i in field.data]


@pytest.fixture(scope="module")
def originals(family_dirs, embedded_tokenizer):
    """Per family: (the model as transformers loads the folder, prompt ids, its logits, its greedy tokens)."""
    from transformers import AutoModelForCausalLM

    ids = _prompt(embedded_tokenizer)
    cache = {}

    def get(model_type):
        if model_type not in cache:
            model = AutoModelForCausalLM.from_pretrained(family_dirs[model_type], dtype=torch.float32).eval()
            with torch.no_grad():
                cache[model_type] = (model, ids, model(ids).logits, _greedy(model, ids))
        return cache[model_type]
    return get


# f32 for every family: the same logits (within 1e-4) prove each family's tensor names and layout. f16 and
# Q8_0 convert every family's tensors by the same rule (1-D ones stay f32), so they run on three and two
# families: reading a file back costs ~6-9 s of the 2-core CPU, mostly transformers parsing the
# 49,152-token vocabulary.
ROUND_TRIPS = ([(f, "f32") for f in FAMILIES] + [(f, "f16") for f in ("llama", "qwen2", "gemma3_text")]
               + [("llama", "q8_0"), ("gemma3_text", "q8_0")])


def _check_file_holds_tokenizer_template_and_family_keys(path, model_type, folder, embedded_tokenizer):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    reader = gguf.GGUFReader(path)
    arch = export.GGUF_ARCHS[model_type]
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    # llama.cpp's pre-tokenizer follows how the folder's tokenizer splits text: transformers loads
    # the SmolLM2 files under a Qwen config as Qwen2Tokenizer, whose split differs ("default").
    same_split = AutoTokenizer.from_pretrained(folder).encode(export.CHKTXT) == embedded_tokenizer.encode(export.CHKTXT)
    assert _field(reader, "tokenizer.ggml.pre") == ("smollm" if same_split else "default")
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(embedded_tokenizer)
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 40000
    assert _field(reader, "tokenizer.chat_template") == embedded_tokenizer.chat_template
    assert _field(reader, "tokenizer.ggml.eos_token_id") == embedded_tokenizer.eos_token_id
    assert _field(reader, f"{arch}.block_count") == 2 and _field(reader, f"{arch}.embedding_length") == 64
    assert _field(reader, f"{arch}.attention.head_count_kv") == 2
    assert _field(reader, f"{arch}.context_length") == 1024
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not AutoConfig.from_pretrained(folder).tie_word_embeddings)
    expected = {"gemma2": {"gemma2.attn_logit_softcapping": 50.0, "gemma2.final_logit_softcapping": 30.0,
                           "gemma2.attention.sliding_window": 4096, "gemma2.attention.key_length": 256},
                "gemma3_text": {"gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 1e4,
                                "gemma3.attention.sliding_window": 4096},
                "phi3": {"phi3.rope.dimension_count": 16, "phi3.attention.sliding_window": 0},
                "qwen3": {"qwen3.attention.key_length": 128},
                "llama": {"llama.rope.dimension_count": 16}}.get(model_type, {})
    assert {k: _field(reader, k) for k in expected} == pytest.approx(expected)
    part = {"qwen2": "blk.0.attn_q.bias", "qwen3": "blk.0.attn_k_norm.weight", "phi3": "blk.0.attn_qkv.weight",
            "gemma2": "blk.0.post_ffw_norm.weight", "gemma3_text": "blk.0.attn_q_norm.weight"}.get(model_type)
    assert part is None or part in names


@pytest.mark.slow
@pytest.mark.parametrize("model_type,outtype", ROUND_TRIPS)
def test_round_trip(model_type, outtype, family_dirs, originals, embedded_tokenizer, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    original, ids, logits, tokens = originals(model_type)
    started = time.time()
    path = export.write_gguf(family_dirs[model_type], tmp_path / f"{model_type}-{outtype}.gguf", outtype)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    # Mistral is written as llama.cpp writes it (architecture "llama") and so reads back as Llama.
    assert type(back).__name__ == ("LlamaForCausalLM" if model_type == "mistral" else type(original).__name__)
    with torch.no_grad():
        diff = (back(ids).logits - logits).abs().max().item()
    print(f"\n{model_type} {outtype}: max |logit diff| {diff:.2e} (largest logit {logits.abs().max().item():.2f}), "
          f"write + read {time.time() - started:.1f} s")
    assert diff <= TOLERANCE[outtype] * logits.abs().max().item(), f"{model_type} {outtype}: max diff {diff}"
    if outtype == "q8_0":
        qtypes = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
        assert qtypes["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
        assert qtypes["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    else:  # 8-bit weights may flip a near tie in a random model's flat distribution; f16 may not here
        assert _greedy(back, ids) == tokens, f"{model_type} {outtype}: greedy tokens differ"
    if outtype == "f16":
        _check_file_holds_tokenizer_template_and_family_keys(path, model_type, family_dirs[model_type],
                                                             embedded_tokenizer)


@pytest.mark.slow
def test_gguf_tokenizer_reads_back_the_same(family_dirs, embedded_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    path = export.write_gguf(family_dirs["qwen2"], tmp_path / "qwen2.gguf", "f16")
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = "<|im_start|>user\nHow are you? 12345 ünïcödé<|im_end|>"
    assert back(text).input_ids == embedded_tokenizer(text).input_ids
    assert back.chat_template == embedded_tokenizer.chat_template


@pytest.mark.slow
def test_lora_run_on_gemma2_exports_as_gguf(family_dirs, tmp_path):
    """The end-to-end path for a family other than Llama: a LoRA run on the tiny Gemma 2 (norm
    offset, softcaps, tied head), export_gguf merging the adapter itself, read back: the tuned
    answer, not the base's; and the CLI writes Q8_0."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import chat_rows, write_jsonl
    from tuning.train import trainer as train
    from tuning.__main__ import main as cli
    from tuning.config import TrainConfig

    ws = tmp_path / "ws"
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(16))
    cfg = TrainConfig(base_model=str(family_dirs["gemma2"]), dataset=str(data), method="lora", max_steps=4,
                      per_device_batch_size=4, max_length=64, learning_rate=1e-2, save_steps=4, eval_split=0.0,
                      logging_steps=1, warmup_ratio=0.0, lora_r=8, lora_alpha=16, probe_every_checkpoint=False)
    run_dir = ws / "runs" / "g1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, ws) == 0

    path = export.export_gguf(run_dir, ws, "gemma2-tuned", "f32")
    assert path == ws / "exports" / "gemma2-tuned.gguf"
    tokenizer = AutoTokenizer.from_pretrained(family_dirs["gemma2"])
    ids = _prompt(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(family_dirs["gemma2"], dtype=torch.float32).eval()
    base_tokens = _greedy(base, ids)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    tuned_tokens = _greedy(tuned, ids)
    assert tuned_tokens != base_tokens, "the adapter must change the answer, or this test proves nothing"
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert _greedy(back, ids) == tuned_tokens
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, tuned(ids).logits, atol=1e-4)

    assert cli(["export", "--run", "g1", "--workspace", str(ws), "--gguf", "gemma2-q8", "--gguf-type", "q8_0"]) == 0
    import gguf
    qtypes = {t.name: t.tensor_type for t in gguf.GGUFReader(ws / "exports" / "gemma2-q8.gguf").tensors}
    assert qtypes["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0


# --- refusals and pieces (fast) ---------------------------------------------------------------

def _folder(path, **config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_unsupported_family_names_itself_and_what_is_supported(tmp_path):
    folder = _folder(tmp_path, model_type="gpt2")
    reason = export.gguf_supported(folder)
    assert "'gpt2'" in reason and "qwen3" in reason and "gemma2" in reason and "phi3" in reason
    assert "convert_hf_to_gguf" in reason
    with pytest.raises(export.ExportError, match="'gpt2'"):
        export.write_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    assert "vision" in export.gguf_supported(_folder(tmp_path, model_type="gemma3"))


def test_export_refuses_before_merging(tmp_path, chat_file, monkeypatch):
    """A run on a family GGUF export does not cover is refused from the base's folder, before the
    minutes of loading and merging; so is an unknown type."""
    from tuning.config import TrainConfig

    base = _folder(tmp_path / "base", model_type="gpt_neox")
    run_dir = tmp_path / "ws" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(TrainConfig(base_model=str(base), dataset=str(chat_file)).to_yaml())
    monkeypatch.setattr(export, "load_merged", lambda *a: pytest.fail("merged before refusing"))
    with pytest.raises(export.ExportError, match="'gpt_neox'"):
        export.export_gguf(run_dir, tmp_path / "ws")
    with pytest.raises(export.ExportError, match="'q4_k'"):
        export.export_gguf(run_dir, tmp_path / "ws", outtype="q4_k")
    assert not list((tmp_path / "ws" / "exports").glob("*"))


def test_config_problems_are_named(tmp_path):
    from transformers import AutoConfig

    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    longrope = AutoConfig.for_model("phi3", **base, rope_parameters={
        "rope_type": "longrope", "rope_theta": 1e4, "long_factor": [1.0] * 8, "short_factor": [1.0] * 8,
        "original_max_position_embeddings": 4096})
    assert "longrope" in gguf_writer._config_problem(longrope, "phi3")
    swa = AutoConfig.for_model("qwen2", **base, use_sliding_window=True, sliding_window=512)
    assert "sliding-window" in gguf_writer._config_problem(swa, "qwen2")
    layers = AutoConfig.for_model("gemma2", **base, layer_types=["full_attention", "full_attention"])
    assert "layer_types" in gguf_writer._config_problem(layers, "gemma2")
    scalar = AutoConfig.for_model("gemma2", **base, head_dim=16, query_pre_attn_scalar=256)
    assert "query_pre_attn_scalar" in gguf_writer._config_problem(scalar, "gemma2")
    assert gguf_writer._config_problem(AutoConfig.for_model("gemma3_text", **base), "gemma3") is None
    llama3 = AutoConfig.for_model("llama", **base, rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    assert gguf_writer._config_problem(llama3, "llama") is None
    assert "llama3" in gguf_writer._config_problem(AutoConfig.for_model("qwen2", **base, rope_parameters={
        **llama3.rope_parameters}), "qwen2")


def test_llama3_rope_factors_match_transformers(tmp_path):
    """The rope_freqs tensor llama.cpp divides its frequencies by is exactly transformers' own
    Llama 3 scaling of the default frequencies."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.for_model("llama", hidden_size=256, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=131072, rope_parameters={
                                      "rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = 128
    plain = 1.0 / (5e5 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = gguf_writer._llama3_rope_factors(config)
    assert factors.shape == (dim // 2,) and factors.min() == 1.0 and factors.max() == 32.0
    np.testing.assert_allclose(plain.numpy() / factors, scaled.numpy(), rtol=1e-5)


class _Recorder:
    """Stands in for GGUFWriter: records each add_* call as {method name: argument}."""

    def __init__(self):
        self.calls = {}

    def __getattr__(self, name):
        return lambda value: self.calls.__setitem__(name, value)


@pytest.mark.parametrize("model_type,rope,expected", [
    ("qwen2", {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768},
     {"add_rope_scaling_type": "YARN", "add_rope_scaling_factor": 4.0, "add_rope_scaling_orig_ctx_len": 32768,
      "add_rope_freq_base": 1e6}),
    ("llama", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
     {"add_rope_scaling_type": "LINEAR", "add_rope_scaling_factor": 2.0, "add_rope_dimension_count": 16}),
    ("gemma3_text", {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
     {"add_rope_scaling_type": "LINEAR", "add_rope_scaling_factor": 8.0, "add_rope_freq_base": 1e6,
      "add_rope_freq_base_swa": 1e4, "add_key_length": 256}),
])
def test_rope_scaling_keys(model_type, rope, expected):
    """RoPE scaling that transformers' GGUF reader does not read back (so no round trip shows it)
    is written with the keys llama.cpp's converter writes."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, rope_parameters=rope)
    writer = _Recorder()
    gguf_writer._write_hyperparameters(writer, config, export.GGUF_ARCHS[model_type])
    shown = {k: getattr(v, "name", v) for k, v in writer.calls.items() if k in expected}
    assert shown == pytest.approx(expected)


@pytest.mark.slow
def test_llama3_rope_scaling_goes_in_as_rope_freqs(embedded_tokenizer, tmp_path):
    """A Llama 3.x-style model (RoPE scaling "llama3") gets llama.cpp's rope_freqs tensor, F32 in any
    type; transformers' reader ignores it, so this checks the file itself."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    embedded_tokenizer.save_pretrained(tmp_path / "m")
    reader = gguf.GGUFReader(export.write_gguf(tmp_path / "m", tmp_path / "m.gguf", "q8_0"))
    (freqs,) = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(np.asarray(freqs.data), gguf_writer._llama3_rope_factors(config))
    assert _field(reader, "llama.rope.freq_base") == 5e5 and _field(reader, "llama.context_length") == 131072


def test_q8_0_where_rows_divide_into_blocks_else_f16():
    import gguf

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 64)).astype(np.float32)
    data, qtype = gguf_writer._encoded(weight, "q8_0")
    assert qtype == gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(data, qtype)
    assert back.shape == weight.shape and np.abs(back - weight).max() < 0.02
    odd, qtype = gguf_writer._encoded(rng.standard_normal((8, 48)).astype(np.float32), "q8_0")
    assert qtype is None and odd.dtype == np.float16
    norm, qtype = gguf_writer._encoded(rng.standard_normal(64).astype(np.float32), "q8_0")
    assert qtype is None and norm.dtype == np.float32


def test_unknown_gguf_type_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(export.ExportError, match="q4_0.*f16, f32, q8_0"):
        export.write_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_0")
