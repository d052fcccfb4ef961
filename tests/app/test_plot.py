"""The text charts: exact cells for known inputs."""

from __future__ import annotations

from loadertop import LoaderConfig
from loadertop.core.protocol.records import BatchRecord, StartEvent
from loadertop.tui.plot import BrailleCanvas, format_value, level, load_compute_chart, loss_chart, meter


def record(
    step: int,
    *,
    workers: int = 0,
    load_ms: float = 10.0,
    compute_ms: float = 10.0,
    loss: float = 1.0,
    accuracy: float | None = 0.5,
) -> BatchRecord:
    return BatchRecord(
        step=step,
        epoch=1,
        batch_in_epoch=step,
        config_key=f"w{workers} b32",
        num_workers=workers,
        batch_size=32,
        samples=32,
        load_s=load_ms / 1000,
        compute_s=compute_ms / 1000,
        loss=loss,
        accuracy=accuracy,
        time=0.0,
        elapsed_s=0.0,
    )


def start(reason: str, workers: int, after_step: int) -> StartEvent:
    return StartEvent(reason, LoaderConfig(num_workers=workers), after_step, 1, 0, 0.1, 0.1)


def test_braille_dots_and_lines() -> None:
    canvas = BrailleCanvas(2, 1)
    canvas.dot(0, 0)
    canvas.dot(1, 3)
    assert canvas.char(0, 0) == chr(0x2800 + 0x01 + 0x80)
    assert canvas.char(1, 0) == " "
    canvas.line(0, 0, 3, 0)
    assert canvas.char(1, 0) == chr(0x2800 + 0x01 + 0x08)
    canvas.dot(99, 99)  # outside: ignored


def test_loss_chart_axes_markers_and_accuracy() -> None:
    records = [record(s, workers=0 if s <= 50 else 2, loss=2.0 - s / 100, accuracy=1.0) for s in range(1, 101)]
    starts = [start("start", 0, 0), start("epoch", 0, 20), start("restart", 2, 50)]
    lines = loss_chart(records, starts, 60, 12).plain.splitlines()
    assert len(lines) == 12
    assert "▼2w" in lines[0]  # one marker, for the restart that changed the worker count
    assert lines[0].count("▼") == 1
    assert 1.97 <= float(lines[1].split()[0]) <= 1.99  # the highest loss (a 2-step bin's mean) on top
    assert lines[10].lstrip().startswith("1.00")  # the lowest at the bottom
    top, bottom, middle = (float(lines[i].split()[0]) for i in (1, 10, 6))
    assert abs(middle - (top - 5 / 9 * (top - bottom))) < 0.01  # a middle label is its own row's value
    assert lines[6].endswith(" 44%")
    assert lines[1].endswith("100%") and "•" in lines[1]  # accuracy 1.0 on the top row
    marker_column = lines[0].index("▼")
    assert all(line[marker_column] in "┊⠀⡀⢀⣀⠁⠈⠉•" or ord(line[marker_column]) >= 0x2800 for line in lines[1:11])
    assert lines[11].strip().startswith("step 1") and lines[11].rstrip().endswith("100")


def test_loss_chart_before_any_batch_and_when_too_small() -> None:
    assert loss_chart([], [], 60, 12).plain == "waiting for the first batch…"
    assert loss_chart([record(1)], [], 10, 3).plain == "(too small)"


def test_load_compute_bars_stack_load_under_compute_and_mark_switches() -> None:
    records = [record(s, workers=0 if s <= 3 else 2, load_ms=30 if s <= 3 else 0, compute_ms=10) for s in range(1, 7)]
    lines = load_compute_chart(records, 16, 6).plain.splitlines()
    bars = lines[:-1]
    columns = ["".join(line[6 + 3 + i] for line in reversed(bars)) for i in range(6)]  # bottom-up, after 3 blank
    assert columns[0] == "███▅░"  # 30 of 42 ms load in eighths, then compute up to 40 ms
    assert lines[0].startswith(" 42.0│")  # the scale: 95th percentile of the iterations plus 5%
    assert columns[5].strip() == "░"  # no load: compute only
    assert "┴2w" in lines[-1]


def test_meter_level_and_labels() -> None:
    assert meter(50, 10) == "█████     "
    assert meter(100, 4) == "████"
    assert meter(float("nan"), 3) == "   "
    assert level(0) == "▁" and level(100) == "█"
    assert [format_value(v) for v in (2.3456, 0.0521, 12.34, 1234.0)] == ["2.35", "0.052", "12.3", "1.2k"]
