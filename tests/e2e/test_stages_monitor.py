"""The real app on the built-in workload in a real terminal (tmux): where a sample's time goes, live."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.tmux import HAVE_TMUX, TmuxApp

pytestmark = [pytest.mark.skipif(not HAVE_TMUX, reason="tmux is not installed"), pytest.mark.slow]

TITLE = "where a sample's time goes"
TRANSFORMS = (
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "ColorJitter",
    "GaussianBlur",
    "ToTensor",
    "ElasticTransform",
    "Normalize",
)
"""The built-in workload's Compose, each timed as its own stage (``loadertop.core.train.builtin.train_transform``)."""
VERDICT = re.compile(
    r"more workers help up to the [\d.]+ usable cores?|latency-bound: workers beyond|a cheaper collate_fn"
)
"""One of the three verdicts (``loadertop.core.policy.stages.verdict``), its lines joined."""


def panel(screen: str) -> list[str]:
    """The stage panel's lines on ``screen`` (inside its border), empty while it is not drawn."""
    lines = screen.splitlines()
    top = next((i for i, line in enumerate(lines) if TITLE in line), None)
    if top is None:
        return []
    left = lines[top].rfind("╭", 0, lines[top].index(TITLE))
    inside = []
    for line in lines[top + 1 :]:
        cell = line[left : left + 1]
        if cell != "│":
            break
        right = line.find("│", left + 1)
        inside.append(line[left + 1 : right if right > 0 else None].strip())
    return inside


def test_the_panel_shows_the_builtin_workloads_stages_and_a_verdict(tmp_path: Path) -> None:
    # Tall enough for every stage of the running count: decode, the seven transforms, the rest and the collate.
    app = TmuxApp(["--epochs", "1000", "--workers", "1", "--sample-interval", "0.5"], tmp_path, width=120, height=48)
    try:
        screen = app.wait_for(
            lambda s: all(name in " ".join(panel(s)) for name in ("decode", *TRANSFORMS)),
            timeout=120,
            what="the built-in workload's stages in the panel",
        )
        rows = panel(screen)
        text = " ".join(rows)
        assert re.search(r"^1w: [\d,]+ samples\s+wall ms\s+CPU ms\s+wait ms\s+share$", rows[0]), rows[0]
        stage_rows = [row for row in rows if re.match(r"^\S \S.*\d+%$", row)]
        assert {row.split()[1] for row in stage_rows} >= {"decode", "collate", *TRANSFORMS}
        assert any(row.startswith("▶1w ▕") and row.endswith(" ms") for row in rows)  # the running count's bar
        assert VERDICT.search(re.sub(r"\s+", " ", text)), rows
        app.send("t")  # hidden; the charts take the room back
        app.wait_for(lambda s: TITLE not in s, timeout=10, what="the panel hidden")
        app.send("q")
        assert app.exit_status() == 0
    finally:
        app.close()
