"""Take a finished run elsewhere: the adapter (zip), a merged full-precision model, a model card,
a push to the Hugging Face Hub, and a GGUF file for llama.cpp-style runtimes. The public entry points
live here; the GGUF writer is tuning/ship/gguf.py and the README tuning/ship/model_card.py, whose
public names are reachable from here too (export.write_gguf, export.model_card, ...): callers need
this one module.

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
- GGUF: the merged model written by tuning/ship/gguf.py (the `gguf` package alone, no llama.cpp)
  for the families llama.cpp runs among Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and
  Phi-3, in F32, F16 or Q8_0; verified per family by loading it back with transformers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from tuning import runs  # tuning.models (torch) is imported where a model is loaded: the page starts without torch
from tuning.ship import gguf
from tuning.ship.common import ExportError, refuse_existing, run_config
from tuning.ship.gguf import CHKTXT, GGUF_ARCHS, GGUF_TYPES, gguf_supported, write_gguf  # noqa: F401 (re-exported)
from tuning.ship.model_card import LOSS_TABLE_ROWS, base_label, model_card, public_config  # noqa: F401 (re-exported)

ADAPTER_FILES = (runs.ADAPTER_WEIGHTS, runs.ADAPTER_CONFIG)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


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


def public_adapter_config(run_dir: Path) -> str:
    """adapter_config.json with base_model_name_or_path as the card names the base (PEFT writes the
    local folder it loaded the base from)."""
    value = json.loads((finished_adapter(run_dir) / runs.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    value["base_model_name_or_path"] = base_label(run_config(run_dir).base_model)
    return json.dumps(value, indent=2, ensure_ascii=False)


# --- adapter ---------------------------------------------------------------------------------

def export_adapter(run_dir: Path, workspace: Path, name: str | None = None) -> Path:
    """exports/<name>/ with the adapter files, the tokenizer and README.md (the folder pushed to the Hub)."""
    adapter = finished_adapter(run_dir)
    target = target_path(workspace, name, f"{Path(run_dir).name}-adapter")
    refuse_existing(target)
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

    cfg = run_config(run_dir)
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
    refuse_existing(target)
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

def export_gguf(run_dir: Path, workspace: Path, name: str | None = None, outtype: str = "f16",
                merged_dir: Path | None = None) -> Path:
    """exports/<name>.gguf from the merged model (merged first, into a temporary folder, if needed)."""
    if outtype not in gguf.GGUF_TYPES:
        raise ExportError(f"gguf type: {outtype!r} is not one of {', '.join(gguf.GGUF_TYPES)}")
    target = target_path(workspace, name, f"{Path(run_dir).name}-{outtype}.gguf")
    if target.suffix != ".gguf":
        target = target.with_name(target.name + ".gguf")
    refuse_existing(target)
    if merged_dir is not None:
        return gguf.write_gguf(merged_dir, target, outtype)
    from tuning import models

    # The merged model has the base's family and tokenizer: refuse before minutes of merging.
    try:
        base = Path(models.resolve_base_model(run_config(run_dir).base_model, workspace))
    except models.ModelError as exc:
        raise ExportError(str(exc)) from None
    reason = gguf.gguf_supported(base) if (base / "config.json").is_file() else None
    if reason:
        raise ExportError(reason)
    model, tokenizer = load_merged(run_dir, workspace)
    with tempfile.TemporaryDirectory(prefix=".gguf-src-", dir=target.parent) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return gguf.write_gguf(Path(tmp), target, outtype)


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
