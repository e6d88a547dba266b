"""The README and docs/ are the user's map: their links resolve, the config reference matches
TrainConfig, the README stays short, and they describe the software rather than its history."""

import importlib.util
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tuning import config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
HISTORY = re.compile(r"\b(session|final tree|issue \d+|load average)\b", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)


def _generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(path: Path) -> str:
    """A page's Markdown with any snippet it pulls in (docs/results.md is bench/RESULTS.md)."""
    text = path.read_text(encoding="utf-8")
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), text)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where Markdown links live."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (MkDocs' anchors), which GitHub's agrees with for these headings."""
    text = re.sub(r"<[^>]+>|`", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _text(path), flags=re.MULTILINE | re.DOTALL)
    headings = {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE)}
    return headings | set(re.findall(r'\bid="([^"]+)"', text))


def _links(path: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(_text(path)))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked here


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading or id '{anchor}' in {resolved.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_link_check_catches_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## A part\n\n[ok](#a-part) [bad](#no-such) [gone](b.md) "
                                   "`[code](x.md)`\n", encoding="utf-8")
    page = tmp_path / "a.md"
    assert _links(page) == ["#a-part", "#no-such", "b.md"]
    assert "a-part" in _anchors(page) and "no-such" not in _anchors(page)


def test_readme_is_short_and_shows_the_dashboard():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    images = [t for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
              if not t.startswith("http")]
    assert images and all((ROOT / t).is_file() for t in images), images


def test_docs_have_the_pages_users_need():
    names = {p.stem for p in PAGES}
    assert {"index", "getting-started", "dashboard", "cli", "config", "datasets", "evaluation",
            "preference-tuning", "deploying", "export", "performance", "security", "architecture"} <= names


@pytest.mark.parametrize("path", [README, *PAGES, ROOT / "bench" / "RESULTS.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_history_in_user_docs(path):
    """Docs describe the software as it is; git keeps its history."""
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if HISTORY.search(line)]
    assert not hits, f"{path.relative_to(ROOT)} reads as a diary:\n" + "\n".join(hits)


def test_config_reference_is_current():
    generator = _generator()
    assert (DOCS / "config.md").read_text(encoding="utf-8") == generator.render(), (
        f"docs/config.md is stale: run `{generator.COMMAND}`")


def test_config_reference_names_every_field():
    """The config reference is the user's map of TrainConfig: a new field must appear there."""
    reference = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = [name for name in config.FIELDS if f'id="{name}"' not in reference or f"`{name}`" not in reference]
    assert not missing, f"docs/config.md lacks {missing}"


def test_config_reference_shows_metadata():
    row = next(line for line in (DOCS / "config.md").read_text(encoding="utf-8").splitlines()
               if line.startswith('| <a id="lora_r">'))
    meta = config.FIELDS["lora_r"].metadata
    assert "integer" in row and "`16`" in row and "`1` to `1024`" in row and meta["help"] in row
    if meta.get("label"):
        assert meta["label"] in row


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed in this environment (scripts/setup.sh --test installs it)")
def test_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1",
                                                                          "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "config.html").is_file() and (tmp_path / "site" / "results.html").is_file()
