"""The recommendation on calibrated landscapes, each swept three times: the known optimum, or within 5% of it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadertop import Workload
from loadertop.core.measure.system import usable_cores
from tests import workloads
from tests.helpers import others_cpu, sweep

REPEATS = 3

# (workload, worker counts, steady batches per count, batch size, the known optimum)
LANDSCAPES: dict[str, tuple[Callable[[], Workload], tuple[int, ...], int, int, int]] = {
    # 32 ms of waiting per batch against a 2 ms step: every worker up to 8 (4x the cores) helps.
    "sleep-bound, best above the cores": (workloads.sleep_bound, (0, 1, 2, 4, 8), 40, 8, 8),
    # Issue 12's first sweep: the old rule recommended 2 workers at 479 samples/s over 4 at 765.
    "sleep-bound, issue 12's 0,1,2,4": (workloads.sleep_bound, (0, 1, 2, 4), 40, 8, 4),
    # Issue 12's second sweep: it recommended 4 at 1,399 samples/s over 8 at 2,039. 8 workers need
    # 1.6 cores of decoding: below the CPU ceiling, so the 8th worker still helps.
    "2 ms storage + 0.5 ms CPU, issue 12's 0..8": (workloads.storage_and_cpu, (0, 1, 2, 4, 6, 8), 50, 16, 8),
    # Loading costs 0.4 ms of a 20 ms iteration: no worker can win more than 2%.
    "compute-bound": (workloads.compute_bound, (0, 1, 2), 30, 8, 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LANDSCAPES))
def test_the_recommendation_is_the_optimum_or_within_5_percent_of_it_every_time(name: str) -> None:
    factory, counts, batches, batch_size, optimum = LANDSCAPES[name]
    for attempt in range(REPEATS):
        rows, advice, out = sweep(factory(), counts, batches=batches, batch_size=batch_size)
        speed = {r.num_workers: r.samples_per_s for r in rows}
        chosen = advice.recommended_num_workers
        assert chosen is not None, out
        assert chosen == optimum or speed[chosen] >= 0.95 * speed[optimum], f"attempt {attempt + 1}:\n{out}"
        # Never a count materially slower than the fastest measured, whatever the noise.
        assert speed[chosen] >= 0.95 * max(speed.values()), f"attempt {attempt + 1}:\n{out}"


@pytest.mark.slow
@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_cpu_bound_loading_recommends_the_usable_cores_or_within_5_percent_every_time() -> None:
    for attempt in range(REPEATS):
        with others_cpu() as others:
            rows, advice, out = sweep(workloads.cpu_bound(cpu_s=0.002), (0, 1, 2, 4), batches=40, batch_size=8)
        if others.cores > 0.3:
            pytest.skip(f"other processes used {others.cores:.1f} cores during the sweep: the optimum needs idle cores")
        speed = {r.num_workers: r.samples_per_s for r in rows}
        chosen = advice.recommended_num_workers
        assert chosen is not None and speed[chosen] >= 0.95 * speed[usable_cores()], f"attempt {attempt + 1}:\n{out}"
        assert speed[chosen] >= 0.95 * max(speed.values()), f"attempt {attempt + 1}:\n{out}"
