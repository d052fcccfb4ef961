"""The GPU idle figures' words and wire form."""

from __future__ import annotations

import pytest

from loadertop.core.protocol.gpu_idle import GpuIdle


def test_both_shares_are_of_the_covered_wall_time_in_words() -> None:
    idle = GpuIdle(2, covered_s=10.0, idle_s=4.1, waiting_s=5.0, idle_waiting_s=3.8)
    assert (idle.idle_share, idle.idle_waiting_share) == (0.41, 0.38)
    assert idle.line() == "GPU 0 idle 41% of the time, 38% while waiting for data"
    nothing = GpuIdle(0, 0.0, 0.0, 0.0, 0.0, gpu=3)
    assert nothing.idle_share is None and nothing.line() == "GPU 3 idle: no utilisation samples cover these batches yet"


def test_the_wire_form_reads_back_the_same_figures() -> None:
    idle = GpuIdle(4, 12.5, 2.25, 6.0, 1.5, gpu=1)
    wire = idle.to_wire()
    assert wire == {
        "num_workers": 4,
        "gpu": 1,
        "covered_s": 12.5,
        "idle_s": 2.25,
        "waiting_s": 6.0,
        "idle_waiting_s": 1.5,
        "wall_s": 0.0,
        "idle_share": 0.18,
        "idle_waiting_share": 0.12,
    }
    assert GpuIdle.from_wire(wire) == idle
    covered = GpuIdle(1, 9.0, 0.9, 1.0, 0.5, wall_s=10.0)
    assert GpuIdle.from_wire(covered.to_wire()) == covered and covered.coverage == 0.9
    assert covered.line() == "GPU 0 idle 10% of the time, 6% while waiting for data"  # 90%: not said


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"covered_s": None}, "numbers >= 0"),
        ({"idle_s": -1.0}, "numbers >= 0"),
        ({"num_workers": True}, "integers"),
        ({"num_workers": "2"}, "integers"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GpuIdle.from_wire({**GpuIdle(1, 1.0, 0.5, 0.5, 0.25).to_wire(), **change})
    with pytest.raises(ValueError, match="missing"):
        GpuIdle.from_wire({"num_workers": 1})
