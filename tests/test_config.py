import subprocess
import sys

import pytest

from tuning import config
from tuning.config import ConfigError, TrainConfig
from tuning.paths import PRESETS_DIR, PROJECT_DIR


def test_defaults_are_valid_and_documented():
    cfg = TrainConfig()
    assert cfg.method == "qlora" and cfg.trust_remote_code is False
    assert cfg.base_model == config.EMBEDDED_MODEL and cfg.dataset == "demo"
    for f in config.FIELDS.values():
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert f.metadata.get("group") in ("model", "method", "lora", "optimisation", "data", "preference",
                                           "schedule")


def test_yaml_round_trip():
    cfg = TrainConfig(lora_r=8, learning_rate=1e-4, target_modules="q_proj,v_proj", packing=True)
    again = config.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.target_module_list == ["q_proj", "v_proj"]


def test_int_accepted_for_float_field():
    assert TrainConfig(num_epochs=2).num_epochs == 2.0


@pytest.mark.parametrize("assignment, key, value", [
    ("lora_r=8", "lora_r", 8),
    ("learning_rate=3e-4", "learning_rate", 3e-4),
    ("packing=true", "packing", True),
    ("gradient_checkpointing=no", "gradient_checkpointing", False),
    ("base_model=Qwen/Qwen2.5-0.5B-Instruct", "base_model", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("dataset=a=b.jsonl", "dataset", "a=b.jsonl"),
])
def test_set_parsing(assignment, key, value):
    cfg = config.apply_overrides(TrainConfig(), [assignment])
    assert getattr(cfg, key) == value


@pytest.mark.parametrize("assignment, fragment", [
    ("nope=1", "nope: unknown config key"),
    ("lora_r=eight", "lora_r: expected an integer"),
    ("learning_rate=fast", "learning_rate: expected a number"),
    ("packing=maybe", "packing: expected true or false"),
    ("method=full", "method: 'full' is not one of qlora, lora"),
    ("lora_dropout=2", "lora_dropout: 2.0 is outside the valid range"),
    ("run_name=../../etc", "run_name: use only letters"),
    ("lora_r", "expected key=value"),
])
def test_bad_overrides_refused_naming_the_key(assignment, fragment):
    with pytest.raises(ConfigError) as err:
        config.apply_overrides(TrainConfig(), [assignment])
    assert fragment in str(err.value)


def test_wrong_type_in_yaml_refused():
    with pytest.raises(ConfigError, match="lora_r: expected int, got str"):
        config.from_yaml("lora_r: big\n")
    with pytest.raises(ConfigError, match="packing: expected bool, got int"):
        config.from_yaml("packing: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.from_yaml("lora_r: [1,\n")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        config.from_yaml("- 1\n- 2\n")


def test_frozen():
    with pytest.raises(Exception):
        TrainConfig().lora_r = 3  # type: ignore[misc]


def test_every_preset_validates():
    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert len(presets) >= 4, "quickstart plus at least three GPU presets"
    names = {p.stem for p in presets}
    assert "quickstart" in names
    for preset in presets:
        cfg = config.load(preset)
        text = preset.read_text()
        assert text.startswith("#"), f"{preset.name} needs a header comment"
        assert "python -m tuning train" in text, f"{preset.name}'s header must give the command"
        assert isinstance(cfg, TrainConfig)


def test_quickstart_is_the_embedded_default():
    cfg = config.load(PRESETS_DIR / "quickstart.yaml")
    assert cfg.base_model == config.EMBEDDED_MODEL and cfg.dataset == "demo"


@pytest.mark.parametrize("args, fragment", [
    (["--set", "bogus_key=1"], "bogus_key: unknown config key"),
    (["--set", "lora_r=abc"], "lora_r: expected an integer"),
    (["--set", "max_steps=0"], "max_steps"),
])
def test_cli_refuses_bad_set_with_exit_2(tmp_path, args, fragment):
    proc = subprocess.run([sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml",
                           "--workspace", str(tmp_path), *args],
                          capture_output=True, text=True, cwd=PROJECT_DIR, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_every_field_has_a_human_label_and_at_most_8_are_simple():
    """The form reads each field's label (its unit in words) and whether the Simple view shows it."""
    for name, f in config.FIELDS.items():
        label = f.metadata["label"]
        assert isinstance(label, str) and label.strip() and label != name, name
    labels = [f.metadata["label"] for f in config.FIELDS.values()]
    assert len(set(labels)) == len(labels)  # two fields never read the same on the page
    simple = [name for name, f in config.FIELDS.items() if f.metadata["simple"]]
    assert 0 < len(simple) <= 8
    assert config.FIELDS["max_length"].metadata["label"] == "Max length (tokens)"
