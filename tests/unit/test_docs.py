"""The docs site builds strictly (no broken link, anchor or nav page) and the README stays a short, linked page."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_LINES = 250
# [text](target) and ![alt](target); a title after the target ("...") is allowed.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _readme_lines() -> list[str]:
    return (ROOT / "README.md").read_text(encoding="utf-8").splitlines()


def relative_links(lines: list[str]) -> list[str]:
    """Every link target in ``lines`` that is a path in the repository (no URL, no bare #anchor), outside code."""
    targets: list[str] = []
    in_fence = False
    for line in lines:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        prose = re.sub(r"`[^`]*`", "", line)  # a link written inside inline code is an example, not a link
        for target in LINK.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            targets.append(target)
    return targets


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[dev]' brings mkdocs-material")
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").is_file()
    for page in sorted((ROOT / "docs").glob("*.md")):
        built = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert built.is_file(), f"{page.name} was not built"


def test_the_readme_fits_on_a_screen_and_starts_with_the_set_up() -> None:
    lines = _readme_lines()
    assert len(lines) <= README_MAX_LINES, f"README.md is {len(lines)} lines; move text to docs/"
    opening = "\n".join(lines[:10])
    assert "make run" in opening and "make test" in opening, "the two set-up commands left the README's first lines"


def test_every_relative_link_in_the_readme_exists() -> None:
    targets = relative_links(_readme_lines())
    assert targets, "the README links to no page of docs/"
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_links_finds_paths_and_leaves_urls_anchors_and_code() -> None:
    lines = [
        "See [a](docs/a.md#x), ![b](docs/images/b.svg) and [c](https://example.com), [d](#top).",
        "`[e](not/a/link.md)`",
        "```",
        "[f](in/a/fence.md)",
        "```",
    ]
    assert relative_links(lines) == ["docs/a.md#x", "docs/images/b.svg"]
