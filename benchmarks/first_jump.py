"""Where the autotuner's first jump lands with the loader's stage figures in its readings and without them.

On the simulated landscapes of the autotuner's tests (``tests/unit/policy/test_autotune.py``: a worker makes a
batch in a known time, of which a known CPU, the loop steps in a known time, seeded noise), the tuner starts at a
given count and runs 1500 batches, once with the readings carrying what the stages measure (a worker's wall and
CPU time a sample, ``Reading.stage_wall_s_per_sample``) and once without. For every repeat: the count of its first
decision (a jump, or settling where it is) and the truth's speed there as a share of the best, the batches until
it settled, and where it settled.

A simulation: the real loops' figures are ``benchmarks/autotune.py``'s. The first jump from 0 workers is the same
with and without by construction (the 0-worker measurement already has a batch's wall and CPU time: the unit
test ``test_stage_figures_at_zero_workers_split_its_cpu_and_leave_the_predictions_as_they_were``); the figures
tell where the tuner starts above the count it needs (a script's own ``num_workers``, a remembered count).

Usage: python benchmarks/first_jump.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit.policy.test_autotune import COUNTS, Landscape, tuned

CASES = [
    ("latency-bound, 2 cores (4 workers keep up)", Landscape(make_s=0.040, cpu_s=0.004, step_s=0.010), (8, 6)),
    ("latency-bound, 4 cores (8 workers keep up)", Landscape(make_s=0.060, cpu_s=0.003, step_s=0.008, cores=4), (8,)),
    ("storage-bound (the tests' own)", Landscape(make_s=0.020, cpu_s=0.004, step_s=0.004), (0, 8)),
    ("CPU-bound (the tests' own)", Landscape(make_s=0.030, cpu_s=0.030, step_s=0.005), (0, 8)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    for name, land, starts in CASES:
        best = land.best(COUNTS)
        best_count = max(COUNTS, key=land.rate)
        print(f"{name}: best {best_count} workers ({best * land.batch:,.0f} samples/s)")
        for start in starts:
            for staged in (False, True):
                shares, settles = [], []
                for seed in range(1, args.seeds + 1):
                    sim = tuned(land, start=start, seed=seed, staged=staged)
                    first = sim.changes[0].to_workers if sim.changes else start
                    share = land.rate(first) / best
                    settled = sim.settled_at()
                    settled_at = next(
                        (at for change, at in zip(sim.changes, sim.changed_at, strict=True) if change.kind == "settle"),
                        None,
                    )
                    shares.append(share)
                    settles.append(settled_at if settled_at is not None else float("nan"))
                    print(
                        f"  from {start}, {'with' if staged else 'without'} stages, seed {seed}:"
                        f" first decision {first} workers"
                        f" ({share:.0%} of the best), settled at {settled} after {settled_at} batches"
                        f" (jumps {[c.to_workers for c in sim.changes][:6]})"
                    )
                print(
                    f"  from {start}, {'with' if staged else 'without'} stages: first decision at {min(shares):.0%} to"
                    f" {max(shares):.0%} of the best, median batches to settle {statistics.median(settles):.0f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
