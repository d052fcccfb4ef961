"""torchrun, unmodified, under ``loadertop run``: every rank instrumented and switched, each rank's shard kept exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.e2e.test_scripts import launched, records, run
from tests.helpers import made_at, no_children_left

DDP = "tests/scripts/ddp_loop.py"
LOADER = made_at(DDP, "loader = DataLoader(")


def torchrun(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", DDP, str(out), *extra]


@pytest.mark.slow
def test_every_rank_is_switched_and_keeps_its_shard_exactly(tmp_path: Path) -> None:
    plain = run(torchrun(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    record = tmp_path / "run.jsonl"
    watched = launched("--switch", "3:2", "--record", str(record), command=torchrun(tmp_path / "watched"))
    assert watched.returncode == 0, watched.stderr
    for rank in (0, 1):
        before = json.loads((tmp_path / f"plain.rank{rank}.json").read_text())
        after = json.loads((tmp_path / f"watched.rank{rank}.json").read_text())
        assert after["seen"] == before["seen"]  # the DistributedSampler's shard, in order, across the switch
        assert after["weights"] == before["weights"]
        assert f"loadertop: rank {rank}: {LOADER}: switching 0 -> 2 workers after batch 3" in watched.stderr
    rows = [r for r in records(record) if "event" not in r]
    for rank in (0, 1):  # every rank's batches, with its rank, in one file
        mine = [r for r in rows if r["rank"] == rank]
        assert [r["step"] for r in mine] == list(range(1, 25))
        assert [r["num_workers"] for r in mine] == [0] * 3 + [2] * 21
    # torchrun's own process trains nothing: it claims no run (no loader of its own, no third set of batches).
    created = sorted(line for line in watched.stderr.splitlines() if "DataLoader " in line)
    assert created == [f"loadertop: rank {r}: DataLoader {LOADER}: 0 workers, batch 4 (training: --switch applies "
                       "to it)" for r in (0, 1)]
    assert no_children_left()
