"""The GPU presets (8, 16 and 24 GB) and their check on a GPU, bench/gpu_check.sh:

- each preset's header states the model, max_length and batch it was sized for and the memory estimate it
  was sized by: the figure tuning/ui/estimate.py gives for it (the one the Train tab shows), marked as an
  estimate, not a measurement;
- bench/gpu_models.py builds each preset's model at its real architecture and size (the published parameter
  counts), since the GPU machine cannot fetch the Hub ids;
- on a GPU the estimate counts TRL's fused LM head (tiles), not the whole batch's logits (ORPO's excepted);
- bench/gpu_check.sh runs end to end in its dry mode on this CPU: every preset's first steps, the
  side-by-side and a Playground answer, and the table (slow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuning import config as config_mod
from tuning import paths

ROOT = paths.PROJECT_DIR
# the published parameter counts of the presets' base models
PARAMETERS = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-3b": 3_085_938_688, "llama-3.1-8b": 8_030_261_248}


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_models():
    return _bench("gpu_models")


def _header(preset: str) -> str:
    text = (ROOT / "presets" / f"{preset}.yaml").read_text(encoding="utf-8")
    return " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))


def _gpu_estimate(cfg, shape: dict, tmp_path: Path, monkeypatch) -> float:
    """estimate.estimate's memory in GiB for `cfg` on a GPU with room to spare, the base's config.json
    being `shape`."""
    from tuning.ui import estimate

    folder = tmp_path / "base"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(shape), encoding="utf-8")
    monkeypatch.setattr(estimate, "_gpu_free_bytes", lambda: 80 * estimate.GB)
    return estimate.estimate(cfg.replace(base_model=str(folder)), tmp_path / "workspace").memory_bytes / estimate.GB


def test_every_gpu_preset_has_its_model_built_at_its_real_size(gpu_models):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    presets = {p.stem for p in (ROOT / "presets").glob("*gb.yaml")}
    assert set(gpu_models.PRESETS) == presets == {"qwen2.5-0.5b-qlora-8gb", "qwen2.5-3b-qlora-16gb",
                                                  "llama-3.1-8b-qlora-24gb"}
    for preset, name in gpu_models.PRESETS.items():
        model_type, shape = gpu_models.SHAPES[name]
        cfg = config_mod.load(ROOT / "presets" / f"{preset}.yaml")
        with torch.device("meta"):  # no memory: the shapes only
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shape))
        assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name], preset
        assert model.config.model_type == ("llama" if "llama" in cfg.base_model.lower() else "qwen2")


@pytest.mark.parametrize("preset", ["qwen2.5-0.5b-qlora-8gb", "qwen2.5-3b-qlora-16gb", "llama-3.1-8b-qlora-24gb"])
def test_each_gpu_preset_states_what_it_was_sized_for_and_the_estimate(preset, gpu_models, tmp_path, monkeypatch):
    cfg = config_mod.load(ROOT / "presets" / f"{preset}.yaml")
    header = _header(preset)
    _, shape = gpu_models.SHAPES[gpu_models.PRESETS[preset]]
    assert f"Sized for: {cfg.base_model} (" in header
    assert f"{shape['vocab_size']:,}-token vocabulary" in header
    assert f"max_length {cfg.max_length}," in header
    assert (f"per_device_batch_size {cfg.per_device_batch_size} (x {cfg.gradient_accumulation_steps} accumulation: "
            f"{cfg.effective_batch_size} sequences a step)") in header
    assert cfg.gradient_checkpointing and "gradient checkpointing on" in header
    figure = _gpu_estimate(cfg, shape, tmp_path, monkeypatch)
    stated = re.search(r"Memory: ~(\d+\.\d) GiB of GPU memory by the project's own estimate \(tuning/ui/estimate\.py",
                       header)
    assert stated and stated.group(1) == f"{figure:.1f}", (stated and stated.group(1), figure)
    card = int(re.search(r"-(\d+)gb$", preset).group(1))
    assert figure < card * 0.95, f"{preset}: the estimate {figure:.1f} GiB leaves no room on a {card} GB card"
    assert "An estimate, not a measurement" in header and "bench/gpu_check.sh" in header
    # the user's table of the GPU presets gives the same figure
    [doc_row] = [line for line in (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8").splitlines()
                 if line.startswith(f"| `{preset}.yaml` |")]
    assert doc_row.endswith(f"| ~{figure:.1f} GiB |") and f"| {cfg.max_length} |" in doc_row, doc_row


def test_the_gpu_estimate_counts_trl_s_fused_head_tiles_not_the_whole_logits(gpu_models, tmp_path, monkeypatch):
    """TRL scores SFT, DPO and KTO through its fused LM head, 4,096 tokens x 32,768 columns a tile: the
    logits of 8 x 1,024 tokens x 151,936 columns (14 GiB in fp32 with softmax and gradient) are never held.
    ORPO computes the whole batch's logits itself."""
    from tuning.ui import estimate

    cfg = config_mod.load(ROOT / "presets" / "qwen2.5-0.5b-qlora-8gb.yaml")
    _, shape = gpu_models.SHAPES["qwen2.5-0.5b"]
    sft = _gpu_estimate(cfg, shape, tmp_path, monkeypatch)
    orpo = _gpu_estimate(cfg.replace(objective="orpo", packing=False), shape, tmp_path, monkeypatch)
    tile = 4096 * 32768 * 4 * 3 / estimate.GB
    whole = 8 * 1024 * 151936 * 4 * 3 / estimate.GB
    assert orpo - sft == pytest.approx(whole - tile, rel=1e-6)
    assert (estimate.FUSED_HEAD_TILE[0] * estimate.FUSED_HEAD_TILE[1] * 12 / estimate.GB) == pytest.approx(tile)


@pytest.mark.slow  # trains three tiny models and answers twice: about a minute and a half on 2 busy cores
def test_gpu_check_runs_end_to_end_in_its_dry_mode(tmp_path):
    table = tmp_path / "gpu_check.md"
    env = {**os.environ, "GPU_CHECK_TABLE": str(table), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = table.read_text(encoding="utf-8").splitlines()
    assert "Dry run on a CPU" in lines[2]
    assert lines[4] == "| part | preset | model | steps done | tokens/s | peak GPU memory | status |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[6:]]
    assert [r[:2] for r in rows] == [["train", "qwen2.5-0.5b-qlora-8gb"], ["train", "qwen2.5-3b-qlora-16gb"],
                                     ["train", "llama-3.1-8b-qlora-24gb"], ["side by side", "qwen2.5-0.5b-qlora-8gb"],
                                     ["Playground", "qwen2.5-0.5b-qlora-8gb"]]
    for part, preset, model, steps, rate, peak, status in rows[:3]:
        assert steps == "2/2" and float(rate.replace(",", "")) > 0, (preset, steps, rate)
        assert model.endswith("(random weights)") and peak.endswith("GiB RSS (no GPU)")
        assert status.startswith("completed in ") and "varlen_sdpa" in status, status
    assert rows[3][6].startswith("ok in ") and "from one batch" in rows[3][6], rows[3]
    assert rows[4][6].startswith("ok: loaded in ") and float(rows[4][4].replace(",", "")) > 0, rows[4]
