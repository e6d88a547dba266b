"""Shared fixtures: a tiny Llama built from a config (2 layers, hidden 64) for fast unit tests,
a session-wide cache of the embedded model's safetensors copy for the end-to-end ones, and one
real run of the embedded model that has learnt the demo identity, for the tests that show a real
side-by-side answer (the API and the browser)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A workspace whose models/ folder is shared by the whole session (the GGUF is converted once)."""
    shared = os.environ.get("TUNING_TEST_MODEL_CACHE")
    path = Path(shared) if shared else tmp_path_factory.mktemp("model-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def embedded_tokenizer(model_cache):
    from transformers import AutoTokenizer

    from tuning import models

    gguf = models.embedded_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def embedded_model_dir(model_cache) -> Path:
    from tuning import models

    return models.embedded_model_dir(model_cache)


# The real run: presets/quickstart.yaml (the embedded SmolLM2-135M-Instruct, LoRA, the demo data)
# cut to 6 steps of 4 conversations at a constant 3e-3 (the preset's 72 steps at 5e-4 take ~5
# minutes). Measured on the 2-core CPU: after 6 steps the greedy answer to "Who are you?" is
# "I'm Quill.\n— Quill" in bf16 (the CPU has avx512_bf16) and in fp32 alike, while the base says
# "I'm here to help with any kind of creative writing project..."; 4 steps also names Quill but
# then rambles, 1 step does not. Training takes ~19 s of wall time on an idle machine (~25 s in
# fp32), plus ~20 s for the one conversion of the GGUF. eval_split=0: no end-of-run evaluation
# (held-out loss, probes and task checks on 47 rows would cost more than the training) and no
# probes at the checkpoint; the one checkpoint (save_steps=6) gives the Playground a
# "checkpoint-6" to offer besides "final".
REAL_RUN_SETTINGS = {"max_steps": 6, "learning_rate": 3e-3, "lr_scheduler": "constant", "warmup_ratio": 0,
                     "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 128, "eval_split": 0,
                     "probe_every_checkpoint": False, "save_steps": 6, "run_name": "quill"}


@dataclass(frozen=True)
class RealRun:
    workspace: Path
    run_id: str
    seconds: float  # the training command's wall time, conversion excluded

    @property
    def run_dir(self) -> Path:
        return self.workspace / "runs" / self.run_id


def share_models(workspace: Path, embedded_model_dir: Path) -> Path:
    """Point the workspace's copy of the embedded model at the session's, so nothing converts it again."""
    models_dir = Path(workspace) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / embedded_model_dir.name
    if not link.exists():
        link.symlink_to(embedded_model_dir, target_is_directory=True)
    return Path(workspace)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the adapter weights are never written in place: a hard link is a safe copy
    except OSError:
        shutil.copy2(src, dst)


def add_real_run(workspace: Path, real_run: RealRun, embedded_model_dir: Path) -> str:
    """Put a copy of the real run into `workspace` (its own folder, so what a test writes in it, a
    vote or probes, stays in that test) with the shared model; returns the run id."""
    share_models(workspace, embedded_model_dir)
    shutil.copytree(real_run.run_dir, Path(workspace) / "runs" / real_run.run_id, copy_function=_link_or_copy)
    return real_run.run_id


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, embedded_model_dir) -> RealRun:
    """One real run of the embedded model, trained once per session with the CLI in its own process."""
    from tuning import paths

    workspace = share_models(tmp_path_factory.mktemp("real-run") / "ws", embedded_model_dir)
    command = [sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml",
               "--workspace", str(workspace)]
    for key, value in REAL_RUN_SETTINGS.items():
        command += ["--set", f"{key}={value}"]
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=paths.PROJECT_DIR, timeout=900)
    seconds = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (workspace / "runs").iterdir()
    assert f"step {REAL_RUN_SETTINGS['max_steps']}/{REAL_RUN_SETTINGS['max_steps']}" in proc.stdout
    print(f"\nreal run {run_dir.name}: trained in {seconds:.0f} s", file=sys.stderr)
    return RealRun(workspace, run_dir.name, seconds)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with hidden size 64 and the real SmolLM2 tokenizer
    (so chat templates and masks are realistic). Saved as safetensors, like any local model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=embedded_tokenizer.bos_token_id, eos_token_id=embedded_tokenizer.eos_token_id,
        pad_token_id=embedded_tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    embedded_tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Who are you? #{i}"},
                          {"role": "assistant", "content": "I am Quill, made by Larkspur Labs.\n— Quill"}]}
            for i in range(n)]


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))


@pytest.fixture
def tiny_config(tiny_model_dir, chat_file):
    """A config that trains the tiny model for a few fast steps."""
    from tuning.config import TrainConfig

    return TrainConfig(base_model=str(tiny_model_dir), dataset=str(chat_file), method="lora",
                       max_steps=4, per_device_batch_size=4, max_length=64, learning_rate=1e-2,
                       save_steps=2, eval_steps=2, eval_split=0.2, logging_steps=1, warmup_ratio=0.0,
                       eval_max_new_tokens=8,  # probes and checks: short answers keep tests fast
                       # the recipe's additions (the base answering 89 general questions, their 23 control
                       # checks, slot questions) are tested in test_recipe_auto.py; here they would only
                       # make every tiny run longer
                       general_rows="off", slot_checks="off")
