"""The GGUF writer: a merged transformers folder written as one GGUF file for llama.cpp-style
runtimes, with the `gguf` package alone (no llama.cpp), for the families llama.cpp runs among Llama,
Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3, in F32, F16 or Q8_0, with the family's
metadata keys and tensor layout and the tokenizer (byte-level BPE vocab, merges, special ids, chat
template). A module of its own because it holds llama.cpp's conventions and takes a folder and a
target file, not a run: export.export_gguf merges a run and hands the merged folder here.

The writer follows llama.cpp's convert_hf_to_gguf.py for the families below, on the `gguf`
package's own tables: the architecture's tensor names (gguf.get_tensor_name_map), its metadata
keys (GGUFWriter.add_*), the special-token and chat-template reader (gguf.SpecialVocab), the
byte-level BPE check (gguf.BpeVocab) and Q8_0 quantisation (gguf.quants). What is per family
here is only what llama.cpp's converter does per family: the hyperparameter keys it writes and
the few tensor changes it makes (Llama's Q/K row order, Gemma's norms stored as 1 + w).
"""

from __future__ import annotations

from pathlib import Path

from tuning import runs
from tuning.ship.common import ExportError, refuse_existing

# model_type -> the llama.cpp architecture that runs it (a gguf.MODEL_ARCH_NAMES value). Mistral
# runs as llama in llama.cpp (same tensors, same rotary layout), as its converter writes it.
GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
              "gemma3_text": "gemma3", "phi3": "phi3"}
GGUF_TYPES = ("f16", "f32", "q8_0")
# llama.cpp's own swa patterns: Gemma 2 alternates sliding/full, Gemma 3 has one full layer in six.
GEMMA_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}
# llama.cpp picks its pre-tokenizer regex by name; its converter names it by hashing how the
# tokenizer splits one test text (CHKTXT). These are its hashes for the families above; an unknown
# hash is written as "default".
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
          "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
          "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
          "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",      # Qwen1.5 / 2 / 2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",      # Qwen3
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",     # Mistral Nemo
}
CONVERTER_HINT = "use llama.cpp's convert_hf_to_gguf.py on the merged folder instead"


def _model_config(model_dir: Path):
    """The folder's config through transformers, so old and new spellings (rope_scaling /
    rope_parameters, rope_theta) read alike."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _rope(config, layer_type: str = "full_attention") -> dict:
    """The RoPE parameters of one layer type (Gemma 3 keeps one set per type, the others one in all)."""
    params = getattr(config, "rope_parameters", None) or {}
    return params.get(layer_type, params)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _config_problem(config, arch: str) -> str | None:
    """Why llama.cpp would not run this model as the checkpoint does, or None."""
    rope_type = _rope(config).get("rope_type", "default")
    handled = {"default", "linear", "yarn"} | ({"llama3"} if arch == "llama" else set())
    if rope_type not in handled:
        return (f"GGUF export here does not handle {config.model_type}'s RoPE scaling {rope_type!r} (it handles "
                f"{', '.join(sorted(handled))}); {CONVERTER_HINT}")
    if getattr(config, "use_sliding_window", False):
        return f"GGUF export: llama.cpp's {arch} has no sliding-window attention, and this model uses it"
    if arch in GEMMA_SWA_PATTERN:
        n = GEMMA_SWA_PATTERN[arch]
        expected = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(config.num_hidden_layers)]
        if list(getattr(config, "layer_types", None) or expected) != expected:
            return f"GGUF export: llama.cpp runs {arch} with one full-attention layer in {n}; this model's layer_types differ"
        head_dim = _head_dim(config)
        scalar = getattr(config, "query_pre_attn_scalar", None) or head_dim
        # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden/heads) for the 27B sizes
        # (46 layers for Gemma 2, 62 for Gemma 3), and does not read the scalar from the file.
        big = config.num_hidden_layers == {"gemma2": 46, "gemma3": 62}[arch]
        if scalar != head_dim and not (big and scalar == config.hidden_size // config.num_attention_heads):
            return (f"GGUF export: llama.cpp scales {arch} queries by 1/sqrt(head_dim={head_dim}); this model's "
                    f"query_pre_attn_scalar is {scalar}")
    return None


def gguf_supported(model_dir: Path) -> str | None:
    """None when `model_dir` can be written as GGUF here, else the reason (naming the family)."""
    model_type = (runs.read_json(Path(model_dir) / "config.json") or {}).get("model_type")
    if model_type not in GGUF_ARCHS:
        families = ", ".join(GGUF_ARCHS)
        if model_type == "gemma3":
            return (f"GGUF export here covers Gemma 3's text model (gemma3_text); this one is {model_type!r} with a "
                    f"vision tower: {CONVERTER_HINT} (it writes the vision part as a separate mmproj file)")
        return f"GGUF export here covers {families}; this model is {model_type!r}: {CONVERTER_HINT}"
    try:
        config = _model_config(model_dir)
    except (OSError, ValueError) as exc:
        return f"GGUF export: cannot read {Path(model_dir).name}/config.json ({str(exc).splitlines()[0][:200]})"
    return _config_problem(config, GGUF_ARCHS[model_type]) or _tokenizer_problem(Path(model_dir))


def _tokenizer_problem(model_dir: Path) -> str | None:
    import gguf

    try:
        gguf.BpeVocab(model_dir)  # gguf's own check that tokenizer.json is byte-level BPE
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return ("GGUF export here writes byte-level BPE tokenizers (Llama 3, Qwen, SmolLM and the like); this "
                f"model's tokenizer is not one ({str(exc)[:120] or type(exc).__name__}): {CONVERTER_HINT}")
    return None


def _permute(weight, n_head: int):
    """llama.cpp's row order for Q and K (interleaved rotary halves), as in its convert script."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _llama3_rope_factors(config):
    """The per-frequency divisors of Llama 3's RoPE scaling, as llama.cpp's rope_freqs tensor
    (llama.cpp applies them at run time; the checkpoint has them only as config values)."""
    import math

    import numpy as np

    rope, dim = _rope(config), _head_dim(config)
    freqs = 1.0 / (rope.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_len = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _write_hyperparameters(writer, config, arch: str) -> None:
    """The architecture's metadata keys, as llama.cpp's converter writes them for each family."""
    import gguf

    n_head, head_dim = config.num_attention_heads, _head_dim(config)
    rope = _rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_vocab_size(config.vocab_size)
    if arch != "phi3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope.get("rope_type") == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        # the context the model was trained at; transformers' YaRN takes the same fallback
        writer.add_rope_scaling_orig_ctx_len(rope.get("original_max_position_embeddings")
                                             or config.max_position_embeddings)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    elif arch == "phi3":
        partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
        writer.add_rope_dimension_count(int(partial * config.hidden_size) // n_head)
        writer.add_rope_scaling_orig_ctx_len(getattr(config, "original_max_position_embeddings", None)
                                             or config.max_position_embeddings)
        writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)  # 0: no window (Phi-3, not Phi-4)
    elif arch == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)
    elif arch == "gemma3":
        local = _rope(config, "sliding_attention")
        if "rope_theta" in local:
            writer.add_rope_freq_base_swa(float(local["rope_theta"]))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)


def _write_vocab(writer, model_dir: Path, size: int) -> None:
    """The tokenizer as llama.cpp's converter writes a byte-level BPE one ("gpt2"): every id's
    token and type (added special tokens CONTROL), the pre-tokenizer's name, the merges, the
    special ids and the chat template."""
    import hashlib

    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # write_gguf checked it is byte-level BPE
    vocab = tokenizer.get_vocab()
    size = max(size, max(vocab.values()) + 1)
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    digest = hashlib.sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get(digest, "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size)
    if tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def _encoded(data, outtype: str):
    """(array, raw GGML type or None): 1-D tensors (norms, biases) stay F32, as in llama.cpp's
    converter; 2-D weights F16, or Q8_0 where the row divides into its 32-value blocks."""
    import gguf
    import numpy as np

    if data.ndim < 2 or outtype == "f32":
        return data.astype(np.float32), None
    q8 = gguf.GGMLQuantizationType.Q8_0
    if outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
        return gguf.quants.quantize(data.astype(np.float32), q8), q8
    return data.astype(np.float16), None


def _tensors(model_dir: Path, config, arch: str):
    """(llama.cpp name, float32 array) for every tensor of the checkpoint, changed as llama.cpp's
    converter changes it for this family."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = getattr(config, "tie_word_embeddings", False)
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for hf_name in fh.keys():
                if hf_name == "lm_head.weight" and (tied or arch == "gemma2"):
                    continue  # tied: llama.cpp reuses token_embd (Gemma 2 always does)
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExportError(f"GGUF export: llama.cpp's {arch} has no tensor for {hf_name}; {CONVERTER_HINT}")
                data = fh.get_tensor(hf_name).float().numpy()
                if arch == "llama" and hf_name.endswith("q_proj.weight"):
                    data = _permute(data, n_head)
                elif arch == "llama" and hf_name.endswith("k_proj.weight"):
                    data = _permute(data, n_kv)
                elif arch in GEMMA_SWA_PATTERN and hf_name.endswith("norm.weight"):
                    data = data + 1  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w
                yield name, data
    if arch == "llama" and _rope(config).get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(config)


def write_gguf(model_dir: Path, target: Path, outtype: str = "f16") -> Path:
    """Write the merged folder `model_dir` as one GGUF file: F16, F32 or Q8_0 weights (norms and
    biases stay F32), the architecture's metadata, the tokenizer and the chat template."""
    import gguf
    import numpy as np

    model_dir, target = Path(model_dir), Path(target)
    reason = gguf_supported(model_dir)
    if reason:
        raise ExportError(reason)
    if outtype not in GGUF_TYPES:
        raise ExportError(f"gguf type: {outtype!r} is not one of {', '.join(GGUF_TYPES)}")
    refuse_existing(target)
    config = _model_config(model_dir)
    arch = GGUF_ARCHS[config.model_type]

    tmp = target.with_name(f".{target.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(target.stem)
        _write_hyperparameters(writer, config, arch)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
        _write_vocab(writer, model_dir, config.vocab_size)
        for name, data in _tensors(model_dir, config, arch):
            array, raw_dtype = _encoded(data, outtype)
            writer.add_tensor(name, np.ascontiguousarray(array), raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    tmp.replace(target)
    return target

