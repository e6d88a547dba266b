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
from tuning import paths
from tuning.runs import runner
from tuning import runs
from tuning.config import ConfigError, TrainConfig

PROJECT = Path(__file__).resolve().parent.parent
PAYLOADS = ["; rm -rf /", "$(id)", "`id`", "| cat /etc/passwd", "../../etc/passwd", "a\x00b", "&& reboot",
            "--workspace=/etc", "-rf", "'\"quoted\"'", "x\ny", "%2e%2e%2fetc", "~root/.ssh/id_rsa"]


def python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "workspace", "__pycache__"}
    return [p for p in PROJECT.rglob("*.py") if not skip & set(p.relative_to(PROJECT).parts)]


# --- the code itself ------------------------------------------------------------------------------------
# The scan looks at each CALL by what it resolves to, whatever the spelling: `import torch as T; T.load`,
# `from torch import load as tl; tl`, `tl = torch.load; tl`, `getattr(os, "system")`, `__import__("os")`
# all come out as their qualified names (torch.load, os.system) before the rules below are applied.

FORBIDDEN_CALLS = {
    "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "asyncio.create_subprocess_shell",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "pandas.read_pickle",
    "marshal.load", "marshal.loads", "shelve.open",
    "eval", "exec", "builtins.eval", "builtins.exec", "__builtins__.eval", "__builtins__.exec",
    "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
    "os.posix_spawn", "os.posix_spawnp",
    *(f"os.spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
    *(f"os.exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
}
PROCESS_CALLS = {"subprocess.Popen", "subprocess.run", "subprocess.call", "subprocess.check_call",
                 "subprocess.check_output", "asyncio.create_subprocess_exec", "Popen"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
GETATTR = {"getattr", "builtins.getattr"}
IMPORTERS = {"__import__", "builtins.__import__", "importlib.import_module"}
SWITCH = "trust_remote_code"  # the user's config switch: passed on by name, never set to a True-ish constant


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


class _Names:
    """One file's import aliases and simple assignments, so a call resolves to its qualified name."""

    def __init__(self, tree: ast.AST):
        self.aliases: dict[str, set[str]] = {}
        self.values: dict[str, list[ast.AST]] = {}  # every expression a plain name is assigned, anywhere
        self.defaults: dict[str, list[ast.AST]] = {}  # every default a parameter of that name gets
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases.setdefault(a.asname, set()).add(a.name)
                    else:
                        top = a.name.split(".")[0]
                        self.aliases.setdefault(top, set()).add(top)
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                for a in node.names:
                    self.aliases.setdefault(a.asname or a.name, set()).add(f"{module}.{a.name}".lstrip("."))
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and node.value is not None:
                        self.values.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.arguments):
                positional = node.posonlyargs + node.args
                for arg, default in zip(positional[len(positional) - len(node.defaults):], node.defaults):
                    self.defaults.setdefault(arg.arg, []).append(default)
                for arg, default in zip(node.kwonlyargs, node.kw_defaults):
                    if default is not None:
                        self.defaults.setdefault(arg.arg, []).append(default)
        for _ in range(3):  # `a = torch.load; b = a` chains, a few links deep
            for name, values in self.values.items():
                for value in values:
                    if isinstance(value, (ast.Name, ast.Attribute)) or self._is_import(value):
                        self.aliases.setdefault(name, set()).update(self.qualify(value))

    def _is_import(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and bool(self.qualify(node.func) & IMPORTERS) and bool(node.args)
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))

    def qualify(self, node: ast.AST) -> set[str]:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id) or {node.id}
        if isinstance(node, ast.Attribute):
            return {f"{base}.{node.attr}" for base in self.qualify(node.value)}
        if self._is_import(node):
            return {node.args[0].value}
        if (isinstance(node, ast.Call) and self.qualify(node.func) & GETATTR and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            return {f"{base}.{node.args[1].value}" for base in self.qualify(node.args[0])}
        return {ast.unparse(node)}

    def is_string(self, node: ast.AST, seen: frozenset = frozenset()) -> bool:
        """A command built as one string (for a shell to split), however it is spelled or where it is kept."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (str, bytes))
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            return self.is_string(node.left, seen) or self.is_string(node.right, seen)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("format", "join") and isinstance(node.func.value, ast.Constant):
                return True
            return bool(self.qualify(node.func) & {"shlex.join", "str"})
        if isinstance(node, ast.Call) and self.qualify(node.func) & {"str", "shlex.join"}:
            return True
        if isinstance(node, ast.Name) and node.id not in seen:
            return any(self.is_string(v, seen | {node.id}) for v in self.values.get(node.id, []))
        return False

    def is_user_switch(self, node: ast.AST) -> bool:
        """trust_remote_code passes the constant False or the user's own switch (cfg.trust_remote_code, or
        a parameter of that name) that nothing in the file sets to anything but False."""
        if _is_false(node):
            return True
        if isinstance(node, ast.Attribute):
            return node.attr == SWITCH
        if isinstance(node, ast.Name) and node.id == SWITCH:
            return all(self.is_user_switch(v) for v in self.values.get(SWITCH, []) + self.defaults.get(SWITCH, []))
        return False


def switch_positions(source: str) -> dict[str, int]:
    """Functions (and classes, by __init__) taking trust_remote_code as a parameter: name -> index of it
    among the positional arguments a caller writes, so `load_model(p, m, d, True)` is caught too."""
    positions = {}
    tree = ast.parse(source)
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            names = [a.arg for a in node.args.posonlyargs + node.args.args]
            if SWITCH not in names:
                continue
            index = names.index(SWITCH)
            if isinstance(parent, ast.ClassDef) and names[0] in ("self", "cls"):
                index -= 1
                if node.name == "__init__":
                    positions[parent.name] = index
                    continue
            positions[node.name] = index
    return positions


def keywords_of(node: ast.Call) -> tuple[dict[str | None, ast.AST], bool]:
    """The call's keyword arguments, `**{...}` and `**dict(...)` literals included; and whether some
    `**mapping` could not be read (it might hold shell=True)."""
    found, opaque = {}, False
    for k in node.keywords:
        if k.arg is not None:
            found[k.arg] = k.value
        elif isinstance(k.value, ast.Dict) and all(isinstance(key, ast.Constant) for key in k.value.keys):
            found.update({key.value: value for key, value in zip(k.value.keys, k.value.values)})
        elif isinstance(k.value, ast.Call) and ast.unparse(k.value.func) == "dict" and not k.value.args:
            inner, inner_opaque = keywords_of(k.value)
            found.update(inner)
            opaque |= inner_opaque
        else:
            opaque = True
    return found, opaque


def scan(source: str, where: str, positions: dict[str, int] | None = None) -> list[str]:
    """Every forbidden pattern in one file's source. `positions`: see switch_positions (default: the
    functions this source defines)."""
    tree = ast.parse(source)
    names = _Names(tree)
    positions = switch_positions(source) if positions is None else positions
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        qualified = names.qualify(node.func)
        name = ast.unparse(node.func)
        shown = f"{name}()" + ("" if qualified == {name} else f" (= {', '.join(sorted(qualified))})")
        at = f"{where}:{node.lineno}:"
        keywords, opaque = keywords_of(node)
        if "shell" in keywords and not _is_false(keywords["shell"]):
            problems.append(f"{at} shell= other than False in {shown}")
        if qualified & FORBIDDEN_CALLS:
            problems.append(f"{at} {shown}")
        if any(q.endswith("torch.load") for q in qualified) or qualified & TORCH_LOADS:
            if not _is_true(keywords.get("weights_only")):
                problems.append(f"{at} {shown} without weights_only=True")
        if qualified & {"yaml.load", "yaml.load_all"}:
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or not names.qualify(loader) <= SAFE_YAML_LOADERS:
                problems.append(f"{at} {shown} without Loader=yaml.SafeLoader (use yaml.safe_load)")
        if qualified & {"numpy.load"} and "allow_pickle" in keywords and not _is_false(keywords["allow_pickle"]):
            problems.append(f"{at} {shown} with allow_pickle")
        if SWITCH in keywords and not names.is_user_switch(keywords[SWITCH]):
            problems.append(f"{at} {SWITCH}= set in code, not by the user's switch, in {shown}")
        index = next((positions[q.rsplit(".", 1)[-1]] for q in qualified if q.rsplit(".", 1)[-1] in positions), None)
        if (index is not None and index < len(node.args) and not isinstance(node.args[index], ast.Starred)
                and not any(isinstance(a, ast.Starred) for a in node.args[:index])
                and not names.is_user_switch(node.args[index])):
            problems.append(f"{at} {SWITCH} set in code, not by the user's switch, in {shown} (positional)")
        if qualified & PROCESS_CALLS:
            command = node.args[0] if node.args else keywords.get("args")
            if command is not None and names.is_string(command):
                problems.append(f"{at} {shown} with a string command (use a list)")
            if opaque:
                problems.append(f"{at} {shown} with **kwargs that could hold shell=True")
    return problems


def product_switch_positions(files: list[Path]) -> dict[str, int]:
    positions = {}
    for path in files:
        positions.update(switch_positions(path.read_text(encoding="utf-8")))
    return positions


def test_no_shell_no_pickle_no_unsafe_loads_no_remote_code_set_in_code():
    files = python_files()
    for part in (("app.py",), ("tuning", "runs", "runner.py"), ("tuning", "models.py"), ("bench",)):  # scripts/ holds no .py
        assert any(p.relative_to(PROJECT).parts[:len(part)] == part for p in files), part
    positions = product_switch_positions(files)
    assert {"load_model", "load_tokenizer", "Comparer"} <= set(positions), positions
    problems = []
    for path in files:
        if path.name.startswith("test_security"):
            continue  # this file names the forbidden calls on purpose
        problems += scan(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT)), positions)
    assert not problems, "\n".join(problems)


BAD_SNIPPETS = {
    # shell=: any value but the constant False, and the command a shell would read
    "subprocess.run(['ls', x], shell=True)": "shell=",
    "args = 'ls ' + x\nflag = True\nsubprocess.run(args, shell=flag)": "shell=",
    "subprocess.run(['ls'], shell=1)": "shell=",
    "subprocess.run(['ls'], **{'shell': True})": "shell=",
    "from subprocess import run as go\ngo(['ls'], shell=True)": "shell=",
    "subprocess.Popen(f'ls {x}')": "string command",
    "cmd = 'ls ' + x\nsubprocess.Popen(cmd)": "string command",
    "cmd = ' '.join(['ls', x])\nsubprocess.check_output(cmd)": "string command",
    "subprocess.run(args='ls -l')": "string command",
    "subprocess.run(['ls'], **opts)": "**kwargs",
    "import subprocess as sp\nsp.call('ls %s' % x)": "string command",
    # commands through a shell, code from data
    "os.system(x)": "os.system",
    "import os as o\no.system(x)": "os.system",
    "from os import system\nsystem(x)": "os.system",
    "from os import popen as p\np(x)": "os.popen",
    "getattr(os, 'system')(x)": "os.system",
    "__import__('os').system(x)": "os.system",
    "run = os.system\nrun(x)": "os.system",
    "os.execlp('sh', 'sh')": "os.execlp",
    "subprocess.getoutput(x)": "subprocess.getoutput",
    "pickle.load(f)": "pickle.load",
    "pickle.loads(b)": "pickle.loads",
    "import pickle as pk\npk.load(f)": "pickle.load",
    "from pickle import loads as l\nl(b)": "pickle.loads",
    "import marshal\nmarshal.loads(b)": "marshal.loads",
    "eval(x)": "eval",
    "exec(x)": "exec",
    "import builtins\nbuiltins.eval(x)": "builtins.eval",
    # yaml: only the safe loader
    "yaml.load(s)": "yaml.load",
    "yaml.load(s, Loader=yaml.Loader)": "yaml.load",
    "yaml.load(s, Loader=yaml.FullLoader)": "yaml.load",
    "yaml.load(s, yaml.UnsafeLoader)": "yaml.load",
    "from yaml import load, Loader\nload(s, Loader=Loader)": "yaml.load",
    "import yaml as y\ny.load(s)": "yaml.load",
    "yaml.load_all(s)": "yaml.load_all",
    "yaml.unsafe_load(s)": "yaml.unsafe_load",
    "yaml.full_load(s)": "yaml.full_load",
    # torch.load: weights_only=True, however torch.load is reached
    "torch.load(p)": "weights_only",
    "torch.load(p, weights_only=False)": "weights_only",
    "torch.load(p, weights_only=flag)": "weights_only",
    "from torch import load as tl\ntl(p)": "weights_only",
    "import torch as T\nT.load(p)": "weights_only",
    "from torch import load\nload(p, map_location='cpu')": "weights_only",
    "tl = torch.load\ntl(p)": "weights_only",
    "torch.serialization.load(p)": "weights_only",
    "import numpy as np\nnp.load(p, allow_pickle=True)": "allow_pickle",
    # trust_remote_code: never switched on by the code itself
    "M.from_pretrained(p, trust_remote_code=True)": "trust_remote_code",
    "M.from_pretrained(p, trust_remote_code=1)": "trust_remote_code",
    "M.from_pretrained(p, trust_remote_code='yes')": "trust_remote_code",
    "M.from_pretrained(p, trust_remote_code=always)": "trust_remote_code",
    "M.from_pretrained(p, trust_remote_code=not cfg.trust_remote_code)": "trust_remote_code",
    "M.from_pretrained(p, **{'trust_remote_code': True})": "trust_remote_code",
    "M.from_pretrained(p, **dict(trust_remote_code=True))": "trust_remote_code",
    "trust_remote_code = True\nM.from_pretrained(p, trust_remote_code=trust_remote_code)": "trust_remote_code",
    "def f(p, trust_remote_code=True):\n    return M.from_pretrained(p, trust_remote_code=trust_remote_code)":
        "trust_remote_code",
    "def load_model(p, trust_remote_code=False):\n    pass\nload_model(p, True)": "positional",
    "class Comparer:\n    def __init__(self, p, trust_remote_code=False):\n        pass\n"
    "Comparer(p, True)": "positional",
}

GOOD_SNIPPETS = [
    "subprocess.run(['ls', x], shell=False)",
    "subprocess.run(['ls', x])",
    "cmd = ['ls', x]\nsubprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, 'A': '1'})",
    "from subprocess import Popen\nPopen([sys.executable, '-c', 'pass'])",
    "torch.load(p, weights_only=True)",
    "import torch as T\nT.load(p, map_location='cpu', weights_only=True)",
    "from torch import load as tl\ntl(p, weights_only=True)",
    "yaml.safe_load(s)",
    "yaml.load(s, Loader=yaml.SafeLoader)",
    "yaml.load(s, Loader=yaml.CSafeLoader)",
    "from yaml import load, SafeLoader\nload(s, SafeLoader)",
    "yaml.safe_dump(d)",
    "model.eval()",
    "json.loads(s)",
    "import numpy as np\nnp.load(p)",
    "M.from_pretrained(p, trust_remote_code=False)",
    "M.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)",
    "M.from_pretrained(p, **{'trust_remote_code': False})",
    "def load_model(p, trust_remote_code=False):\n"
    "    return M.from_pretrained(p, trust_remote_code=trust_remote_code)\n"
    "load_model(p, cfg.trust_remote_code)\nload_model(p)\nload_model(p, False)",
    "class Comparer:\n    def __init__(self, p, trust_remote_code=False):\n        pass\n"
    "Comparer(p, cfg.trust_remote_code)",
]

PRELUDE = "import os, sys, subprocess, torch, pickle, yaml, json\n"


@pytest.mark.parametrize("snippet", list(BAD_SNIPPETS))
def test_the_scanner_catches_each_bad_spelling(snippet):
    problems = scan(PRELUDE + snippet, "bad.py")
    assert problems, f"missed:\n{snippet}"
    assert any(BAD_SNIPPETS[snippet] in p for p in problems), problems
    last = len((PRELUDE + snippet).splitlines())
    assert all(p.startswith("bad.py:") for p in problems) and any(f"bad.py:{last}:" in p for p in problems)


@pytest.mark.parametrize("snippet", GOOD_SNIPPETS)
def test_the_scanner_passes_the_safe_spellings(snippet):
    assert scan(PRELUDE + snippet, "good.py") == []


def test_the_scanner_counts_one_problem_per_bad_call():
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
    # the runner keeps each child it starts, to reap it later: this fake one must not outlive the test
    monkeypatch.setattr(runner, "_CHILDREN", [])
    payload = "; rm -rf / $(id) `id` | cat /etc/passwd"
    cfg = TrainConfig(base_model=payload, dataset=payload, eval_dataset=payload, target_modules=payload)
    workspace = tmp_path / "ws"
    run_id = runner.start(cfg, workspace)
    command, kwargs = seen["command"], seen["kwargs"]
    assert command == [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace.resolve()),
                       "--existing-run", run_id]
    assert not kwargs.get("shell") and kwargs.get("start_new_session") is True
    assert all(payload not in part for part in command)
    # the payload travels as data, in the run's config.yaml
    assert runs.read_config(runs.run_dir(workspace.resolve(), run_id)) == cfg


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
    """demo.launch()'s arguments for app.py's command line: the one launch policy (tuning/ship/space.py)."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("TUNING_AUTH", raising=False)
    import app
    from tuning.ship import space

    return lambda argv: space.launch_kwargs(app.parse_args(argv))


def test_the_app_binds_to_localhost_with_an_upload_limit_and_no_extra_paths(launch_kwargs):
    kwargs = launch_kwargs([])
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs["share"] is False and kwargs["auth"] is None
    assert kwargs.get("max_file_size"), "uploads need a size limit"
    assert not kwargs.get("allowed_paths"), "Gradio's allowed_paths stays minimal (none)"
    assert "mb" in str(kwargs["max_file_size"]).lower() or isinstance(kwargs["max_file_size"], int)
    # The limit Gradio will enforce, parsed the way launch() parses it: 500 MB, no more.
    assert upload_limit_bytes(kwargs) == UPLOAD_LIMIT


UPLOAD_LIMIT = 500 * 1024 * 1024  # gradio.utils.FileSize.MB is 1024 * 1024 bytes
SPACE_UPLOAD_LIMIT = 100 * 1024 * 1024


def upload_limit_bytes(kwargs: dict) -> int | None:
    from gradio.utils import FileSize, _parse_file_size

    assert FileSize.MB == 1024 * 1024
    return _parse_file_size(kwargs.get("max_file_size"))


def test_the_upload_limit_holds_on_a_space_and_with_auth_too(launch_kwargs, monkeypatch, tmp_path):
    with_auth = launch_kwargs(["--host", "0.0.0.0", "--auth", "me:secret"])
    assert upload_limit_bytes(with_auth) == UPLOAD_LIMIT
    monkeypatch.setenv("SPACE_ID", "me/tuner")
    monkeypatch.setenv("TUNING_WORKSPACE", str(tmp_path))
    on_space = launch_kwargs([])
    assert on_space["server_name"] == "0.0.0.0", "the Space settings were applied"
    assert upload_limit_bytes(on_space) == SPACE_UPLOAD_LIMIT, "a public Space has a smaller upload limit"


@pytest.mark.parametrize("flags", [["--share"], ["--host", "0.0.0.0"], ["--host", "::"],
                                   ["--host", "192.168.1.20"], ["--share", "--host", "0.0.0.0"]])
def test_exposing_the_app_without_auth_is_refused_with_an_explanation(launch_kwargs, flags):
    from tuning.ship import space

    with pytest.raises(space.LaunchRefused) as refused:
        launch_kwargs(flags)
    message = str(refused.value)
    assert "--auth" in message and "reachable" in message


def test_exposing_the_app_with_auth_is_allowed(launch_kwargs):
    from tuning.ship import space

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
