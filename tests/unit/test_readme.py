"""The README's "Use it on your own model" factory runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_readme_factory_runs_headless(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"   ```python\n   # mytrain.py\n(.*?)   ```", readme, re.DOTALL)
    assert block is not None, "the README lost its mytrain.py example"
    code = "\n".join(line[3:] for line in block.group(1).splitlines())
    (tmp_path / "mytrain.py").write_text(code + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "loadertop", "run", "--headless", "--workload", "mytrain:make_workload",
         "--workers", "1", "--max-batches", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "loadertop: squares" in done.stdout and "workers  batches" in done.stdout
