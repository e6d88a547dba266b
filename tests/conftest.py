"""Shared fixtures: a tiny Llama built from a config (2 layers, hidden 64) for fast unit tests,
and a session-wide cache of the embedded model's safetensors copy for the end-to-end ones."""

from __future__ import annotations

import json
import os
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
                       eval_max_new_tokens=8)  # probes and checks: short answers keep tests fast
