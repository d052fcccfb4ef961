"""The docs' "Use it on your own model" factory (docs/workloads.md) runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_docs_factory_runs_headless(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "workloads.md").read_text(encoding="utf-8")
    # The block sits inside a numbered list item, indented as the item's content.
    block = re.search(r"^( *)```python\n\1# mytrain\.py\n(.*?)^\1```", page, re.DOTALL | re.MULTILINE)
    assert block is not None, "docs/workloads.md lost its mytrain.py example"
    indent = len(block.group(1))
    code = "\n".join(line[indent:] for line in block.group(2).splitlines())
    (tmp_path / "mytrain.py").write_text(code + "\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--workload",
            "mytrain:make_workload",
            "--workers",
            "1",
            "--max-batches",
            "20",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "loadertop: squares" in done.stdout and "workers  batches" in done.stdout
