"""The docs stand on their own: every setting is documented, every link leads somewhere inside
the repository, every test the reliability guide cites exists, and the engine guide's example
engine works as the guide says."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ref2video.config import Settings
from tests.live import ROOT, LiveServer, make_body

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_every_setting_is_in_the_configuration_guide() -> None:
    guide = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in guide]
    assert not missing, missing


def test_the_design_notes_draw_every_package_and_module() -> None:
    """The layer picture of docs/design.md names every package, every top-level module and
    every module of app/, so it is redrawn when the source tree changes."""
    design = (ROOT / "docs" / "design.md").read_text()
    picture = design[design.index("## Layers"):].split("```")[1]
    src = ROOT / "src" / "ref2video"
    names = [f"{p.name}/" for p in src.iterdir() if (p / "__init__.py").exists()]
    names += [p.name for p in src.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    names += [p.name for p in (src / "app").glob("*.py") if p.name != "__init__.py"]
    names += [f"{p.name}/" for p in (src / "engines").iterdir() if (p / "__init__.py").exists()]
    missing = sorted(name for name in names if not re.search(rf"(?<![\w/.]){re.escape(name)}", picture))
    assert not missing, missing


def test_every_test_the_reliability_guide_cites_exists() -> None:
    """Each promise there is "shown by" tests: a file, a folder, or `file::test name`."""
    cited = re.findall(r"`(tests/[\w/.]*?)(?:::(\w+))?`", (ROOT / "docs" / "reliability.md").read_text())
    assert len(cited) > 10
    missing = [f"{path}::{name}" if name else path for path, name in cited
               if not (ROOT / path).exists() or (name and f"def {name}(" not in (ROOT / path).read_text())]
    assert not missing, missing


def links(page: Path) -> Iterator[str]:
    """The targets of the Markdown links and images outside code blocks."""
    text = _FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    yield from _LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of `page`."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", _FENCE.sub("", page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            broken.append(f"{target} (leaves the repository)")
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT.resolve() not in [file, *file.parents]:
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, broken


def test_the_engine_guides_example_runs(make_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The slideshow of docs/engines.md, as written there, through the whole service."""
    guide = (ROOT / "docs" / "engines.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
    (code,) = [block for block in blocks if "class SlideshowEngine" in block]
    (tmp_path / "slideshow.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("slideshow", None)
    # The guide's own test, as written, registering the engine by name.
    (test,) = [block for block in blocks if "def test_a_slideshow" in block]
    namespace: dict[str, object] = {}
    exec(compile(test, "docs/engines.md", "exec"), namespace)
    made: list[LiveServer] = []

    def recording(**settings: object) -> LiveServer:  # the guide's settings, kept to use the server again
        made.append(make_server(**settings))
        return made[-1]

    namespace["test_a_slideshow"](recording, tmp_path)  # type: ignore[operator]
    (server,) = made
    refused = server.wait(server.create(make_body(model="my-slideshow")))["output"]  # audio asked
    assert (refused["task_status"], refused["code"]) == ("FAILED", "InvalidParameter")
