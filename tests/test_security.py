"""Security (issue #6): no shell, no user text on a command line, paths confined to the allowed
roots, safe weight loading, and launch flags that never expose the page without a login."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuning import config as config_mod
from tuning import paths, runner, runs
from tuning.config import ConfigError, TrainConfig

PROJECT = Path(__file__).resolve().parent.parent
PAYLOADS = ["; rm -rf /", "$(id)", "`id`", "| cat /etc/passwd", "../../etc/passwd", "a\x00b", "&& reboot",
            "--workspace=/etc", "-rf", "'\"quoted\"'", "x\ny", "%2e%2e%2fetc", "~root/.ssh/id_rsa"]


def python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "workspace", "__pycache__"}
    return [p for p in PROJECT.rglob("*.py") if not skip & set(p.relative_to(PROJECT).parts)]


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


# --- the code itself ------------------------------------------------------------------------------------

FORBIDDEN_CALLS = ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                   "pickle.load", "pickle.loads", "eval", "exec", "os.spawnlp", "os.execlp")
PROCESS_CALLS = ("subprocess.Popen", "subprocess.run", "subprocess.call", "subprocess.check_call",
                 "subprocess.check_output", "Popen")


def scan(source: str, where: str) -> list[str]:
    """Every forbidden pattern in one file's source."""
    problems = []
    for node, name in calls(ast.parse(source)):
        keywords = {k.arg: k.value for k in node.keywords}
        if "shell" in keywords and not (isinstance(keywords["shell"], ast.Constant)
                                        and keywords["shell"].value is False):
            problems.append(f"{where}:{node.lineno}: shell= in {name}()")
        if name in FORBIDDEN_CALLS:
            problems.append(f"{where}:{node.lineno}: {name}()")
        if name.endswith("torch.load"):
            wo = keywords.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
        rc = keywords.get("trust_remote_code")
        if isinstance(rc, ast.Constant) and rc.value is True:
            problems.append(f"{where}:{node.lineno}: trust_remote_code=True literal")
        if name in PROCESS_CALLS and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            problems.append(f"{where}:{node.lineno}: {name}() with a string command (use a list)")
    return problems


def test_no_shell_no_pickle_no_unsafe_torch_load_no_remote_code_literal():
    files = python_files()
    assert PROJECT / "tuning" / "runner.py" in files and PROJECT / "app.py" in files
    problems = []
    for path in files:
        if path.name.startswith("test_security"):
            continue  # this file names the forbidden calls on purpose
        problems += scan(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT)))
    assert not problems, "\n".join(problems)


def test_the_scanner_finds_each_forbidden_pattern():
    bad = ("import os, subprocess, torch, pickle\nsubprocess.run(['ls', x], shell=True)\nos.system(x)\n"
           "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\n"
           "M.from_pretrained(p, trust_remote_code=True)\nsubprocess.Popen(f'ls {x}')\n")
    assert len(scan(bad, "bad.py")) == 7
    good = ("import subprocess, torch\nsubprocess.run(['ls', x], shell=False)\ntorch.load(p, weights_only=True)\n"
            "M.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)\n")
    assert scan(good, "good.py") == []


def test_trust_remote_code_is_off_unless_the_user_sets_it():
    assert TrainConfig().trust_remote_code is False
    assert config_mod.load(PROJECT / "presets" / "quickstart.yaml").trust_remote_code is False
    for preset in (PROJECT / "presets").glob("*.yaml"):
        assert "trust_remote_code: true" not in preset.read_text().lower(), preset


def test_models_load_weights_as_safetensors_only():
    source = (PROJECT / "tuning" / "models.py").read_text()
    assert "use_safetensors=True" in source


# --- text fields: refused, or kept as inert data ---------------------------------------------------------

TEXT_FIELDS = [name for name in config_mod.FIELDS if config_mod.field_type(name) is str]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_shell_metacharacters_in_every_text_field_are_refused_or_inert(payload):
    assert {"base_model", "dataset", "run_name", "target_modules"} <= set(TEXT_FIELDS)
    for name in TEXT_FIELDS:
        try:
            cfg = config_mod.from_dict({name: payload})
        except ConfigError as exc:
            assert name in str(exc), f"the message must name the field: {exc}"
            continue
        # Kept: then it is data, byte for byte, and survives the config.yaml round trip.
        assert getattr(cfg, name) == payload
        assert config_mod.from_yaml(cfg.to_yaml()) == cfg
    # run_name becomes part of a folder name: nothing but letters, digits, '-' and '_'.
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in payload):
        with pytest.raises(ConfigError, match="run_name"):
            config_mod.from_dict({"run_name": payload})


@pytest.mark.parametrize("payload", PAYLOADS + ["", ".", "..", "a/b", "a" * 200, "-rf", "_x"])
def test_run_ids_and_preset_names_refuse_every_payload(payload, tmp_path):
    with pytest.raises(runs.RunError, match="not valid"):
        runs.check_run_id(payload)
    with pytest.raises(runs.RunError):
        runs.existing_run_dir(tmp_path, payload)
    with pytest.raises(paths.PathError, match="preset name"):
        paths.safe_preset_path(payload, tmp_path)


def test_preset_names_that_are_plain_names_stay_in_the_presets_folder(tmp_path):
    assert paths.safe_preset_path("my-preset_2", tmp_path) == tmp_path.resolve() / "my-preset_2.yaml"
    assert paths.safe_preset_path("quick.yaml", tmp_path) == tmp_path.resolve() / "quick.yaml"
    assert paths.safe_preset_path("q").parent == paths.PRESETS_DIR


def test_the_runner_passes_no_user_text_on_the_command_line(tmp_path, monkeypatch):
    """Start a run whose every text field holds a payload, with Popen replaced by a recorder:
    the argv is a list of fixed words and paths the runner built, never a shell string."""
    seen = {}

    class Recorder:
        def __init__(self, command, **kwargs):
            seen["command"], seen["kwargs"] = command, kwargs
            self.pid = os.getpid()  # a live pid, so the run reads as starting

    monkeypatch.setattr(runner.subprocess, "Popen", Recorder)
    payload = "; rm -rf / $(id) `id` | cat /etc/passwd"
    cfg = TrainConfig(base_model=payload, dataset=payload, eval_dataset=payload, target_modules=payload)
    workspace = tmp_path / "ws"
    run_id = runner.start(cfg, workspace)
    command, kwargs = seen["command"], seen["kwargs"]
    config_file = runs.run_dir(workspace.resolve(), run_id) / "config.yaml"
    assert command == [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace.resolve()),
                       "--config", str(config_file)]
    assert not kwargs.get("shell") and kwargs.get("start_new_session") is True
    assert all(payload not in part for part in command)
    assert config_mod.load(config_file) == cfg  # the payload travels as data, in the YAML file


def test_resume_refuses_a_run_id_that_is_not_a_plain_name(tmp_path):
    for bad in ("../x", "x; id", "$(id)"):
        with pytest.raises(runs.RunError, match="not valid"):
            runner.resume(tmp_path, bad)


# --- paths: confined to the allowed roots ---------------------------------------------------------------

@pytest.fixture
def roots(tmp_path):
    workspace, uploads, outside = tmp_path / "ws", tmp_path / "uploads", tmp_path / "outside"
    for d in (workspace, uploads, outside):
        d.mkdir()
    (outside / "secret.jsonl").write_text("{}\n")
    (workspace / "data.jsonl").write_text("{}\n")
    (workspace / "link-out").symlink_to(outside)                   # a folder symlink leading out
    (workspace / "file-link").symlink_to(outside / "secret.jsonl")  # a file symlink leading out
    (workspace / "inner-link").symlink_to(workspace / "data.jsonl")  # a symlink that stays inside
    return workspace, uploads, outside


TRAVERSALS = ["../outside/secret.jsonl", "../../etc/passwd", "/etc/passwd", "/root/.ssh/id_rsa",
              "data/../../outside/secret.jsonl", "./../outside", "..", "link-out/secret.jsonl", "link-out",
              "file-link", "~", "~/secret", "/proc/self/environ", "//etc/passwd", "/", "ws/../../outside"]


@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_traversal_attempts_are_refused(roots, attempt):
    workspace, uploads, outside = roots
    if attempt.startswith("~") and Path(attempt).expanduser().resolve().is_relative_to(workspace.parent):
        pytest.skip("HOME lies inside the test folder")
    with pytest.raises(paths.PathError, match="outside the folders"):
        paths.resolve_under(attempt, [workspace, uploads])
    # With the absolute path to the outside folder, too.
    with pytest.raises(paths.PathError):
        paths.resolve_under(str(outside / "secret.jsonl"), [workspace, uploads])


@pytest.mark.parametrize("attempt", ["", "   ", "a\x00b", "data.jsonl\x00.png"])
def test_empty_and_nul_paths_are_refused_with_a_message(roots, attempt):
    with pytest.raises(paths.PathError, match="empty|NUL"):
        paths.resolve_under(attempt, [roots[0]])


def test_paths_inside_the_roots_are_accepted(roots):
    workspace, uploads, _ = roots
    assert paths.resolve_under("data.jsonl", [workspace, uploads]) == (workspace / "data.jsonl").resolve()
    assert paths.resolve_under("inner-link", [workspace]) == (workspace / "data.jsonl").resolve()
    assert paths.resolve_under(str(uploads / "x.jsonl"), [workspace, uploads]) == (uploads / "x.jsonl").resolve()
    # URL encoding is not decoded: '..%2f' is a literal (odd) name inside the workspace.
    literal = paths.resolve_under("..%2f..%2fetc%2fpasswd", [workspace])
    assert literal.parent == workspace.resolve() and literal.name == "..%2f..%2fetc%2fpasswd"
    with pytest.raises(paths.PathError, match="no folders"):
        paths.resolve_under("data.jsonl", [])


# --- the launch flags ------------------------------------------------------------------------------------

@pytest.fixture
def launch_kwargs(monkeypatch):
    """demo.launch()'s arguments for app.py's command line: the one launch policy (tuning/space.py)."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("TUNING_AUTH", raising=False)
    import app
    from tuning import space

    return lambda argv: space.launch_kwargs(app.parse_args(argv))


def test_the_app_binds_to_localhost_with_an_upload_limit_and_no_extra_paths(launch_kwargs):
    kwargs = launch_kwargs([])
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs["share"] is False and kwargs["auth"] is None
    assert kwargs.get("max_file_size"), "uploads need a size limit"
    assert not kwargs.get("allowed_paths"), "Gradio's allowed_paths stays minimal (none)"
    import gradio as gr

    assert gr.FileSize.MB * 1 <= gr.FileSize.MB * 500  # the limit is a size gradio understands
    assert "mb" in str(kwargs["max_file_size"]).lower() or isinstance(kwargs["max_file_size"], int)


@pytest.mark.parametrize("flags", [["--share"], ["--host", "0.0.0.0"], ["--host", "::"],
                                   ["--host", "192.168.1.20"], ["--share", "--host", "0.0.0.0"]])
def test_exposing_the_app_without_auth_is_refused_with_an_explanation(launch_kwargs, flags):
    from tuning import space

    with pytest.raises(space.LaunchRefused) as refused:
        launch_kwargs(flags)
    message = str(refused.value)
    assert "--auth" in message and "reachable" in message


def test_exposing_the_app_with_auth_is_allowed(launch_kwargs):
    from tuning import space

    kwargs = launch_kwargs(["--host", "0.0.0.0", "--auth", "me:secret"])
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["auth"] == ("me", "secret")
    with pytest.raises(space.LaunchRefused, match="USER:PASS"):
        launch_kwargs(["--share", "--auth", "nopassword"])


def test_python_app_py_share_without_auth_exits_with_the_message_and_serves_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SPACE_ID", "TUNING_AUTH")}
    done = subprocess.run([sys.executable, "app.py", "--share", "--workspace", str(tmp_path)], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2  # bad input, as the CLI's contract says
    assert "--auth" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
