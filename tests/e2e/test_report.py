"""``loadertop report``: a real run's record drawn as one self-contained page that a real headless browser
renders with every plot; the PNG has the plots' pixels; a cut-off or foreign line is named and the rest drawn;
a file that is not a record exits 2 with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_usage_error, run_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = {"loss", "load_vs_step", "throughput", "cpu", "memory", "stages"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the built-in workload: 0 workers, then 1 from batch 20 (its record)."""
    from loadertop.cli import main

    record = tmp_path_factory.mktemp("run") / "run.jsonl"
    args = ["run", "--headless", "--max-batches", "40", "--switch", "20:1", "--sample-interval", "0.2"]
    assert main([*args, "--record", str(record)]) == 0
    return record


class Plots(HTMLParser):
    """The page's figures (``data-plot``) and, in each, how many drawn shapes (SVG paths) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[str, int] = {}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "figure" and values.get("data-plot"):
            self._in = str(values["data-plot"])
            self.paths[self._in] = 0
        elif tag in ("path", "use") and self._in is not None:
            self.paths[self._in] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._in = None


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The DOM a headless Chromium made of ``page`` (no network: the page needs none)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian's chromium package; .ci/run installs it)")
def test_a_real_runs_report_renders_every_plot_in_a_headless_browser(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadertop.report.read import read_record

    [part] = read_record(recorded).parts
    assert [n for n, _ in part.predicted()][:3] == [0, 1, 2]  # the model's curve, drawn with the measurements
    page, picture = tmp_path / "report.html", tmp_path / "report.png"
    code, _out, err = run_main(["report", str(recorded), "--out", str(page), "--png", str(picture)], capsys)
    assert code == 0, err
    text = page.read_text()
    assert "<script" not in text and "http" not in text.split("<svg", 1)[0]  # nothing fetched at view time
    plots = Plots()
    plots.feed(rendered_dom(page, tmp_path))
    assert set(plots.paths) == PLOTS
    assert all(count >= 5 for count in plots.paths.values()), plots.paths  # axes, ticks and the data drawn
    with Image.open(picture) as image:
        assert image.width == 800 and image.height >= 6 * 300
        pixels = np.asarray(image.convert("RGB")).astype(int)
        colored = (pixels.max(axis=2) - pixels.min(axis=2) > 40).sum()  # the data's colours, not black ink or white
        assert colored > 0.01 * image.width * image.height


def test_a_cut_off_line_and_a_foreign_line_are_named_and_the_rest_drawn(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = recorded.read_text().splitlines()
    broken = tmp_path / "killed.jsonl"
    broken.write_text("\n".join([lines[0], '{"not": "ours"}', *lines[1:30], lines[30][:25]]))
    page = tmp_path / "killed.html"
    code, _out, err = run_main(["report", str(broken), "--out", str(page)], capsys)
    assert code == 0, err
    said = [line for line in err.splitlines() if "left out" in line]
    assert said == [
        f'loadertop: report: {broken}: line 2: not a loadertop record line (no "schema": 2): left out',
        f"loadertop: report: {broken}: line 32: cut off (a run that was killed?): left out",
    ]
    text = page.read_text()
    assert "line 32: cut off" in text and text.count("data-plot=") >= 3


def test_a_file_that_is_not_a_record_or_a_missing_run_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello\nworld\n")
    assert_usage_error(run_main(["report", str(other)], capsys), f"{other}: not a loadertop --record file")
    assert_usage_error(run_main(["report", "7"], capsys), "run 7: not in the run history")
    assert_usage_error(run_main(["report", str(tmp_path / "none.jsonl")], capsys), "No such file or directory")


@pytest.mark.slow
def test_a_run_of_the_history_is_drawn_from_its_rows_and_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_main(["run", "--headless", "--max-batches", "30", "--switch", "15:1"], capsys)
    assert code == 0, err
    page = tmp_path / "one.html"
    code, _out, err = run_main(["report", "1", "--out", str(page)], capsys)
    assert code == 0, err
    plots = Plots()
    plots.feed(page.read_text())
    assert set(plots.paths) == {"throughput", "cpu", "memory", "stages"}  # the history keeps the table, not batches
    assert "<td>0</td>" in page.read_text() and "<td>1</td>" in page.read_text()  # a row per worker count


def test_each_rank_and_loader_of_a_record_is_a_part_of_its_own(tmp_path: Path) -> None:
    from loadertop.report.read import read_record

    lines = []
    for rank in (0, 1):
        for step in range(1, 31):
            workers = 0 if step <= 15 else 2
            lines.append(
                {
                    "schema": 2,
                    "rank": rank,
                    "loader": "train.py:40",
                    "step": step,
                    "epoch": 1,
                    "batch": step,
                    "num_workers": workers,
                    "samples": 8,
                    "load_ms": 10.0 + rank - 4 * (workers > 0),
                    "step_ms": 5.0,
                    "time": 1000.0 + step,
                }
            )
    lines.append({"schema": 2, "event": "log", "rank": 0, "loader": "train.py:40", "step": 3, "loss": 0.5})
    record = tmp_path / "ranks.jsonl"
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = read_record(record)
    assert [part.title for part in run.parts] == ["rank 0: train.py:40", "rank 1: train.py:40"]
    zero, one = run.parts
    assert zero.switches() == [(16, 0, 2)] and zero.logged == [(3, 0.5)] and one.logged == []
    # 15 batches of 8 samples at 15 ms and 15 at 11 ms (rank 0): exactly the samples over the time.
    assert [(r.num_workers, r.batches) for r in zero.rows] == [(0, 15), (2, 15)]
    assert zero.rows[0].samples_per_s == pytest.approx(8 / 0.015) and one.rows[1].samples_per_s == pytest.approx(
        8 / 0.012
    )
