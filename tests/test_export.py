"""Export paths on a tiny Llama trained a few steps: adapter zip, merged model (agrees with
base + adapter under greedy decoding), model card, GGUF round trip, push offline, CLI."""

import json
import zipfile
from pathlib import Path

import pytest
import torch

from tuning.ship import export
from tuning.train import trainer as train
from tuning.__main__ import main as cli
from tuning.config import TrainConfig

from conftest import chat_rows, write_jsonl

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A workspace with one finished run whose adapter moved away from zero (lr 1e-2, 8 steps)."""
    ws = tmp_path_factory.mktemp("ws")
    data = write_jsonl(ws / "chat.jsonl", chat_rows(24))
    cfg = TrainConfig(base_model=str(tiny_model_dir), dataset=str(data), method="lora", max_steps=8,
                      per_device_batch_size=4, max_length=64, learning_rate=1e-2, save_steps=4, eval_steps=4,
                      eval_split=0.2, logging_steps=1, warmup_ratio=0.0, lora_r=8, lora_alpha=16)
    run_dir = ws / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, ws) == 0
    # what the evaluation work writes; the card must read it defensively
    (run_dir / "evaluation.json").write_text(json.dumps(
        {"eval_loss": 0.5, "base_eval_loss": 3.25, "step": 8,
         "checks": {"by_kind": {"identity": {"n": 4, "base_passed": 1, "tuned_passed": 3}, "odd": "not a summary"},
                    "rows": []},
         "weird": {"nested": [1, 2]}}))
    (run_dir / "probe_answers.jsonl").write_text(json.dumps(
        {"step": 8, "answers": [{"prompt": "Who are you?", "base": "I am a model.", "tuned": "I am Quill."}]})
        + "\n{broken\n")
    return ws, run_dir


def _prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you? #3"}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt").input_ids


def _greedy(model, ids, n=12):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()


def test_adapter_zip_holds_safetensors_config_and_card(trained):
    ws, run_dir = trained
    path = export.adapter_zip(run_dir, ws)
    assert path.parent == ws / "exports"
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert json.loads(zf.read("adapter_config.json"))["r"] == 8
        card = zf.read("README.md").decode()
    assert "library_name: peft" in card and "lora_r: 8" in card


def test_model_card_sections(trained):
    ws, run_dir = trained
    card = export.model_card(run_dir, "merged")
    assert "library_name: transformers" in card
    assert card.count("\n- lora\n") == 1  # a LoRA run's method tag is not listed twice
    assert "24 valid rows of 24" in card  # dataset summary
    assert "```yaml\nbase_model:" in card and "learning_rate: 0.01" in card
    assert "| 8 |" in card and "eval loss" in card  # loss curve, last step present
    assert "| eval_loss | 0.5000 |" in card and "| base_eval_loss | 3.2500 |" in card
    assert "| checks: identity | base 1/4, tuned 3/4 |" in card and "checks: odd" not in card
    assert "I am Quill." in card and "I am a model." in card


@pytest.mark.slow
def test_merged_model_loads_plainly_and_agrees_with_adapter(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws, run_dir = trained
    folder = export.export_merged(run_dir, ws, "merged-tiny")
    assert folder == ws / "exports" / "merged-tiny"
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    assert not list(folder.glob("adapter_*")) and not list(folder.glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()  # no PEFT, no extra code
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = _prompt_ids(tokenizer)
    base_tokens = _greedy(base, ids)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    tuned_tokens = _greedy(tuned, ids)
    assert tuned_tokens != base_tokens, "the adapter must change the output, or this test proves nothing"
    assert _greedy(merged, ids) == tuned_tokens
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-4)

    with pytest.raises(export.ExportError, match="exists already"):
        export.export_merged(run_dir, ws, "merged-tiny")
    with pytest.raises(export.ExportError, match="outside"):
        export.export_merged(run_dir, ws, "../../escape")

    # GGUF from the merged folder, read back by transformers: same logits (F32), same greedy tokens (F16)
    gguf32 = export.export_gguf(run_dir, ws, "tiny-f32.gguf", "f32", merged_dir=folder)
    back = AutoModelForCausalLM.from_pretrained(gguf32.parent, gguf_file=gguf32.name, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, merged(ids).logits, atol=1e-4)
    gguf16 = export.export_gguf(run_dir, ws, "tiny-f16", "f16", merged_dir=folder)
    assert gguf16.name == "tiny-f16.gguf" and gguf16.stat().st_size < gguf32.stat().st_size
    back16 = AutoModelForCausalLM.from_pretrained(gguf16.parent, gguf_file=gguf16.name, dtype=torch.float32)
    assert _greedy(back16.eval(), ids) == tuned_tokens
    gguf_tok = AutoTokenizer.from_pretrained(gguf32.parent, gguf_file=gguf32.name)
    assert gguf_tok("Who are you?").input_ids == tokenizer("Who are you?").input_ids
    assert gguf_tok.chat_template == tokenizer.chat_template


def test_gguf_refuses_other_architectures(tmp_path):
    """Families llama.cpp runs are written (tests/test_gguf_families.py); another is refused with
    its name, the supported list and where to go instead."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    reason = export.gguf_supported(tmp_path)
    assert "'gpt_neox'" in reason and "llama" in reason and "qwen2" in reason and "phi3" in reason
    with pytest.raises(export.ExportError, match="convert_hf_to_gguf"):
        export.write_gguf(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))  # a family it writes,
    assert "byte-level BPE tokenizers" in export.gguf_supported(tmp_path)  # but no tokenizer.json here


def test_push_offline_is_clear_and_token_never_written(trained, monkeypatch):
    ws, run_dir = trained
    folder = export.export_adapter(run_dir, ws, "push-me")
    with pytest.raises(export.ExportError, match="bad repo id|not a repo id"):
        export.push(folder, "no slash here", FAKE_TOKEN)
    with pytest.raises(export.ExportError, match="token"):
        export.push(folder, "me/model", None)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert export.hub_token("") == FAKE_TOKEN and export.hub_token(" typed ") == "typed"
    with pytest.raises(export.ExportError, match="cannot be reached") as info:
        export.push(folder, "me/model", export.hub_token())
    assert FAKE_TOKEN not in str(info.value)
    # the CLI push path too (exit code 2 and a one-line message)
    assert cli(["export", "--run", "r1", "--workspace", str(ws), "--push", "me/model"]) == 2
    for path in ws.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), f"token written into {path}"


def test_cli_export(trained, capsys):
    ws, run_dir = trained
    assert cli(["export", "--run", "nope", "--workspace", str(ws)]) == 2
    assert cli(["export", "--run", "r1", "--workspace", str(ws)]) == 0
    assert "r1-adapter.zip" in capsys.readouterr().out
    unfinished = ws / "runs" / "r2"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert cli(["export", "--run", "r2", "--workspace", str(ws)]) == 2
    assert "no final adapter" in capsys.readouterr().err


def test_export_tab_handlers(trained, monkeypatch):
    import gradio as gr

    from tuning.ship import space
    from tuning.ui import export_tab
    from tuning.ui.common import AppContext, guarded

    ws, run_dir = trained
    ctx = AppContext(ws)
    assert export_tab.export_choices(ctx) == ["r1"]
    preview = export_tab.card_preview(ctx, "r1")
    assert "# r1" in preview
    assert export_tab.card_preview(ctx, "").startswith("Pick a finished run")
    assert export_tab.download_adapter(ctx, "")["zip_file"]["interactive"] is False  # no run picked: it waits
    shown = export_tab.download_adapter(ctx, "r1")
    served = Path(shown["zip_file"]["value"])  # readied on the download button: one click saves it
    assert served.name == "r1-adapter.zip" and "ready" in shown["status"] and shown["zip_file"]["interactive"]
    # What is served is a copy in Gradio's temp folder: it downloads wherever the workspace is.
    assert not served.is_relative_to(ws)
    assert served.read_bytes() == (export.exports_dir(ws) / "r1-adapter.zip").read_bytes()
    # Every failure reaches the page as its one readable line (through guarded), never a bare "Error".
    for handler, args, reason in (
            (export_tab.download_adapter, (ctx, "../etc"), "not valid"),
            (export_tab.gguf, (ctx, "nope", "", "f16"), "no run 'nope'"),
            (export_tab.merge, (ctx, "r1", "../../elsewhere"), "outside the folders"),
            (export_tab.push, (ctx, "r1", "adapter", "me/m", "", True), "needs a Hugging Face token")):
        monkeypatch.delenv("HF_TOKEN", raising=False)
        with pytest.raises(gr.Error, match=reason) as shown_error:
            guarded(handler)(*args)
        assert "Traceback" not in str(shown_error.value) and "went wrong" not in str(shown_error.value)
    with pytest.raises(gr.Error, match="cannot be reached") as offline:
        guarded(export_tab.push)(ctx, "r1", "adapter", "me/m", FAKE_TOKEN, True)
    assert FAKE_TOKEN not in str(offline.value)
    # on a Space, every export handler is the owner's (the page's one gate; tests/test_space_access.py
    # calls them all through the real queue): a visitor is refused, an unlocked session is not
    import app
    from types import SimpleNamespace
    from tuning.ui import access

    settings = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "pw"}, data_dir=ws / "nodata")
    demo = app.build_demo(ws, settings=settings)
    fns = {f.name: f.fn for f in demo.fns.values() if f.fn is not None}
    assert not any(access.is_public(fns[n]) for n in ("download_adapter", "merge", "gguf", "push", "card_preview"))
    from gradio.context import LocalContext
    visitor = SimpleNamespace(session_hash="visitor", client=None, request=None)
    token = LocalContext.request.set(visitor)
    try:
        with pytest.raises(gr.Error, match="password"):
            fns["download_adapter"]("r1")
        assert access.unlock(demo_ctx := AppContext(ws, settings=settings), visitor, "pw").startswith("Unlocked")
        assert access.is_owner(demo_ctx, visitor)
    finally:
        LocalContext.request.reset(token)
    # the tab builds, with and without Space auth, and names the run picker app.py wires
    for settings in (settings, None):
        with gr.Blocks() as demo:
            parts = export_tab.build(AppContext(ws, settings=settings))
        assert isinstance(parts.run, gr.Dropdown)
        assert {"download_adapter", "merge", "gguf", "push"} <= {f.name for f in demo.fns.values()}


def test_card_preview_shows_the_front_matter_as_code_not_prose(trained):
    from tuning.ui import export_tab
    from tuning.ui.common import AppContext

    ws, run_dir = trained
    card = export.model_card(run_dir, "adapter")
    assert card.startswith("---\nbase_model:")  # the file on the Hub keeps its front matter
    preview = export_tab.card_preview(AppContext(ws), "r1")
    assert not preview.startswith("---")
    front = preview[:preview.index("# r1")]
    assert "```yaml\nbase_model:" in front and "library_name: peft" in front and front.rstrip().endswith("```")
    assert preview[preview.index("# r1"):] == card[card.index("# r1"):]  # the rest of the card as it is
    assert export_tab.card_markdown("# no front matter") == "# no front matter"


def test_nothing_that_leaves_the_machine_names_a_local_path(trained, tiny_model_dir):
    """The card, the adapter zip, an exported adapter folder and a merged folder (what a push uploads)
    carry no absolute path of this machine, and hold only safetensors, JSON and text: no pickles."""
    ws, run_dir = trained
    local = [str(Path(ws).resolve()), str(Path(tiny_model_dir).resolve()), str(Path.cwd()), str(Path.home())]
    texts = {"card": export.model_card(run_dir, "adapter")}
    with zipfile.ZipFile(export.adapter_zip(run_dir, ws)) as zf:
        texts.update({f"zip:{n}": zf.read(n).decode("utf-8", "replace") for n in zf.namelist()})
    for folder in (export.export_adapter(run_dir, ws, "privacy-adapter"), export.export_merged(run_dir, ws, "privacy-merged")):
        for item in folder.iterdir():
            assert item.suffix in (".safetensors", ".json", ".txt", ".jinja", ".md"), f"{item.name} may hold a pickle"
            texts[f"{folder.name}/{item.name}"] = item.read_bytes().decode("utf-8", "replace")
    leaks = [(where, path) for where, text in texts.items() for path in local if path in text]
    assert leaks == []
    adapter_config = json.loads(texts["zip:adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == Path(tiny_model_dir).name
    assert f"base_model: {Path(tiny_model_dir).name}" in texts["card"] and "dataset: chat.jsonl" in texts["card"]
