"""torchrun, unmodified, under ``loadertop run``: every rank instrumented and switched, each rank's shard kept exact."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import psutil
import pytest

from loadertop.core.drive.launcher import spawn
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.ranks import RanksSession, find_straggler
from loadertop.core.sessions.view import RankInfo
from tests.helpers import (
    DDP,
    assert_records_follow_the_schema,
    launched,
    made_at,
    no_children_left,
    records,
    run,
    torchrun,
    wait_for,
)

LOADER = made_at(DDP, "loader = DataLoader(")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a stock run of ddp_loop.py (no loadertop) wrote each rank's indices and weights: ``plain.rank<R>.json``."""
    out = tmp_path_factory.mktemp("stock") / "plain"
    stock = run(torchrun(out))
    assert stock.returncode == 0, stock.stderr
    return out


@pytest.mark.slow
def test_every_rank_is_switched_and_keeps_its_shard_exactly(tmp_path: Path, plain: Path) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched("--switch", "3:2", "--record", str(record), command=torchrun(tmp_path / "watched"))
    assert watched.returncode == 0, watched.stderr
    for rank in (0, 1):
        before = json.loads(Path(f"{plain}.rank{rank}.json").read_text())
        after = json.loads((tmp_path / f"watched.rank{rank}.json").read_text())
        assert after["seen"] == before["seen"]  # the DistributedSampler's shard, in order, across the switch
        assert after["weights"] == before["weights"]
        assert f"loadertop: rank {rank}: {LOADER}: switching 0 -> 2 workers after batch 3" in watched.stderr
    rows = [r for r in assert_records_follow_the_schema(record) if "event" not in r]  # one schema, every rank's
    assert all("step_ms" in r and "compute_ms" not in r for r in rows)
    for rank in (0, 1):  # every rank's batches, with its rank, in one file
        mine = [r for r in rows if r["rank"] == rank]
        assert [r["step"] for r in mine] == list(range(1, 25))
        counts = [r["num_workers"] for r in mine]
        # 0 workers up to the switch, then 2 (an overlapped switch may hand over a few batches later);
        # the second epoch is all 2.
        assert counts[:3] == [0] * 3 and counts == sorted(counts) and counts[12:] == [2] * 12
    # torchrun's own process trains nothing: it claims no run (no loader of its own, no third set of batches).
    created = sorted(line for line in watched.stderr.splitlines() if "DataLoader " in line)
    assert created == [
        f"loadertop: rank {r}: DataLoader {LOADER}: 0 workers, batch 4 (training: --switch applies to it)"
        for r in (0, 1)
    ]
    assert no_children_left()


@pytest.mark.slow
def test_a_switch_for_one_rank_switches_that_rank_only_and_every_shard_stays_exact(tmp_path: Path, plain: Path) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--switch",
        "rank1:5:2",
        "--switch",
        f"rank1:{LOADER}@9:1",
        "--record",
        str(record),
        command=torchrun(tmp_path / "watched"),
    )
    assert watched.returncode == 0, watched.stderr
    for rank in (0, 1):
        before = json.loads(Path(f"{plain}.rank{rank}.json").read_text())
        after = json.loads((tmp_path / f"watched.rank{rank}.json").read_text())
        assert after["seen"] == before["seen"]  # each rank's shard, in order, whether it switched or not
        assert after["weights"] == before["weights"]
    switched = [line for line in watched.stderr.splitlines() if ": switching " in line]
    # (The second line names the workers that delivered batch 9: 2, or still 0 while the 2 were starting.)
    assert switched[0] == f"loadertop: rank 1: {LOADER}: switching 0 -> 2 workers after batch 5"
    assert switched[1:] in ([f"loadertop: rank 1: {LOADER}: switching {n} -> 1 worker after batch 9"] for n in (0, 2))
    rows = [r for r in records(record) if "event" not in r]
    by_rank = {rank: [r for r in rows if r["rank"] == rank] for rank in (0, 1)}
    assert [r["step"] for r in by_rank[0]] == [r["step"] for r in by_rank[1]] == list(range(1, 25))
    assert [r["num_workers"] for r in by_rank[0]] == [0] * 24  # rank 0 was never switched
    counts = [r["num_workers"] for r in by_rank[1]]
    assert counts[:5] == [0] * 5 and counts[12:] == [1] * 12  # the second epoch is all the last switch's
    assert [n for i, n in enumerate(counts) if i == 0 or n != counts[i - 1]] in ([0, 2, 1], [0, 1])  # in order
    assert no_children_left()


@pytest.mark.slow
def test_a_switch_for_a_rank_the_job_does_not_have_is_named_at_the_end(tmp_path: Path) -> None:
    watched = launched("--switch", "rank5:3:2", command=torchrun(tmp_path / "watched"))
    assert watched.returncode == 0, watched.stderr
    assert (
        "loadertop: rank 0: --switch rank5:3:2: the job has no rank 5 (its ranks: 0 to 1)"
        in watched.stderr.splitlines()
    )
    assert ": switching " not in watched.stderr


def test_the_straggler_rule_names_the_rank_that_waits_for_data_while_the_others_wait_in_their_step() -> None:
    def rank(number: int, load: float, step: float) -> RankInfo:
        return RankInfo(number, number, 2, 100 + number, 0, load, step, 100.0, 50)

    found = find_straggler([rank(0, 3.0, 28.0), rank(1, 24.0, 6.0)])
    assert found is not None and found.rank == 1 and found.score == pytest.approx(21 / 31)
    assert found.evidence == (
        "rank 1 waits 24.0 ms per batch for data, the others 3.0 ms; their step takes 22.0 ms "
        "longer than rank 1's: they wait for it at the all-reduce"
    )
    assert find_straggler([rank(0, 3.0, 10.0), rank(1, 3.5, 10.0)]) is None  # within noise
    assert find_straggler([rank(0, 3.0, 10.0), rank(1, 24.0, 10.0)]) is None  # nobody waits for it: not holding back
    assert find_straggler([rank(0, 3.0, 10.0)]) is None


@pytest.mark.slow
def test_the_slow_rank_is_named_the_straggler_and_switching_it_lowers_its_load_and_the_others_wait(
    tmp_path: Path, runtime_dir: Path
) -> None:
    stock = run(torchrun(tmp_path / "stock", "--slow-rank", "1", "--epochs", "30"))
    assert stock.returncode == 0, stock.stderr
    command = torchrun(tmp_path / "watched", "--slow-rank", "1", "--epochs", "30")
    child, log = spawn(command)
    session = RanksSession(child=child, log_path=log, command=command, read_gpus=False, sample_interval_s=0.5)
    session.start()
    try:

        def straggler() -> object:
            script = session.view().script
            return script is not None and script.straggler is not None and script.straggler.rank == 1

        wait_for(straggler, 60)
        wait_for(lambda: min(r.step for r in session.view().script.ranks) >= 40, 60)  # 40 batches measured
        assert straggler()
        before = {r.rank: r for r in session.view().script.ranks}
        assert before[1].load_ms > before[0].load_ms and before[0].step_ms > before[1].step_ms
        while session.view().script.selected_rank != 1:
            session.select_next_rank()
        session.apply(LoaderConfig(num_workers=2))  # that rank only
        switched_at = before[1].step
        wait_for(lambda: {r.rank: r for r in session.view().script.ranks}[1].step > switched_at + 80, 90)
        after = {r.rank: r for r in session.view().script.ranks}
        assert after[1].num_workers == 2 and after[0].num_workers == 0
        assert after[1].load_ms < 0.8 * before[1].load_ms  # its wait for data, and the others' wait for it
        # The others' wait inside their step drops less: each 12-batch epoch starts rank 1's two workers anew
        # (no persistent workers), and rank 0 waits for that at the all-reduce (20.8 vs 25.4 ms in a full run).
        assert after[0].step_ms < 0.9 * before[0].step_ms
        assert child.wait(120) == 0
    finally:
        if child.poll() is None:
            child.kill()
        session.close()
    for number in (0, 1):
        assert (
            json.loads((tmp_path / f"watched.rank{number}.json").read_text())["seen"]
            == json.loads((tmp_path / f"stock.rank{number}.json").read_text())["seen"]
        )
    assert no_children_left()


STRAGGLER_LINE = re.compile(r"^loadertop: input straggler: rank (\d+), score (\d\.\d\d): (rank \d+ waits .*)$")


def straggler_events(record: Path) -> list[dict]:
    return [r for r in records(record) if r.get("event") == "straggler"]


@pytest.mark.slow
def test_headless_names_the_slow_rank_in_a_line_in_the_end_summary_and_in_the_record(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched(
        "--record", str(record), command=torchrun(tmp_path / "watched", "--slow-rank", "1", "--epochs", "30")
    )
    assert watched.returncode == 0, watched.stderr
    lines = watched.stderr.splitlines()
    named = [found for line in lines if (found := STRAGGLER_LINE.match(line))]
    assert [found.group(1) for found in named] == ["1"]  # named once, and it held: no change, never cleared
    assert not any("input straggler: none any more" in line for line in lines)
    events = straggler_events(record)
    assert len(events) == 1
    event = events[0]
    assert event["rank"] == 1 and event["was"] is None and f"{event['score']:.2f}" == named[0].group(2)
    assert event["evidence"] == named[0].group(3) and 0 < event["step"] <= 360 and event["time"] > 0
    # The end summary's line comes last, after every rank's own summary.
    summary = lines[-1]
    assert summary.startswith("loadertop: input straggler over the run: rank 1, score ")
    assert re.search(r"\(named for \d+ s of the \d+ s watched\)$", summary), summary
    assert lines.index(summary) > max(i for i, line in enumerate(lines) if " with 0 workers: 360 batches" in line)
    rows = [r for r in assert_records_follow_the_schema(record) if "event" not in r]  # the ranks' lines, all there
    assert sorted(r["step"] for r in rows if r["rank"] == 1) == list(range(1, 361))
    assert no_children_left()


@pytest.mark.slow
def test_headless_names_nobody_when_no_rank_is_slow(tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    watched = launched("--record", str(record), command=torchrun(tmp_path / "watched", "--epochs", "30"))
    assert watched.returncode == 0, watched.stderr
    lines = watched.stderr.splitlines()
    assert [line for line in lines if "input straggler" in line] == [lines[-1]]
    assert re.fullmatch(
        r"loadertop: input straggler: none over the run \(\d+ s watched: no rank's wait for data "
        r"held the others back\)",
        lines[-1],
    )
    assert straggler_events(record) == []


@pytest.mark.slow
def test_headless_keeps_the_verdict_when_the_slow_rank_crashes(tmp_path: Path) -> None:
    watched = launched(command=torchrun(tmp_path / "out", "--slow-rank", "1", "--epochs", "30", "--fail", "1:250"))
    assert watched.returncode == 1  # torchrun's, as always
    lines = watched.stderr.splitlines()
    said = [line for line in lines if "input straggler" in line]
    assert len(said) == 2 and STRAGGLER_LINE.match(said[0]) and STRAGGLER_LINE.match(said[0]).group(1) == "1"
    assert said[1] == lines[-1] and said[1].startswith("loadertop: input straggler over the run: rank 1, score ")
    assert no_children_left()


@pytest.mark.slow
def test_a_rank_that_crashes_is_named_with_its_exit_code_and_traceback_and_the_others_history_kept(
    tmp_path: Path, runtime_dir: Path
) -> None:
    command = torchrun(tmp_path / "out", "--epochs", "20", "--fail", "1:60")
    child, log = spawn(command)
    session = RanksSession(child=child, log_path=log, command=command, read_gpus=False, sample_interval_s=0.5)
    session.start()
    try:
        assert child.wait(120) == 1  # torchrun's own behaviour: it stops the group and exits 1
        said = (
            "the script exited with code 1; rank 1 failed first (exit code 1): RuntimeError: rank 1 fails at batch 60"
        )
        wait_for(lambda: session.view().script.ended == said, 20)  # once the monitor has seen torchrun end
        view = session.view()
        ranks = {r.rank: r for r in view.script.ranks}
        assert ranks[1].ended == "failed first: RuntimeError: rank 1 fails at batch 60"
        assert ranks[0].step >= 59 and ranks[1].step == 60  # every rank's history is kept
        assert [r.step for r in view.store.records] == list(range(1, len(view.store.records) + 1))
        assert session.traceback.strip().endswith("RuntimeError: rank 1 fails at batch 60")  # the cause, not rank 0's
        assert session.exit_code == 1
    finally:
        if child.poll() is None:
            child.kill()
        session.close()
    assert no_children_left()


MIXED = """\
import os, runpy, sys
if os.environ.get("RANK") == "1":  # this rank goes without loadertop: nothing instruments its loaders
    sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__name__ != "_AfterImport"]
runpy.run_path(%r, run_name="__main__")
"""


@pytest.mark.slow
def test_a_rank_without_loadertop_is_shown_as_not_watched(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loadertop.core.sessions.ranks as ranks_module

    monkeypatch.setattr(ranks_module, "MIXED_AFTER_S", 2.0)
    script = tmp_path / "mixed.py"
    script.write_text(MIXED % str(Path(DDP).resolve()))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "out"),
        "--epochs",
        "40",
    ]
    child, log = spawn(command)
    session = RanksSession(child=child, log_path=log, command=command, read_gpus=False, sample_interval_s=0.5)
    session.start()
    try:
        wait_for(lambda: len(session.view().script.ranks) == 2 and session.view().script.ranks[0].step > 0, 60)
        ranks = {r.rank: r for r in session.view().script.ranks}
        assert ranks[0].watched and ranks[0].step > 0
        assert not ranks[1].watched and ranks[1].ended == "not watched: its DataLoaders are not loadertop's"
        assert session.view().script.other_nodes == 0
        assert child.wait(120) == 0
    finally:
        if child.poll() is None:
            child.kill()
        session.close()


@pytest.mark.slow
def test_two_nodes_on_one_machine_every_rank_in_one_monitor_through_the_jobs_store(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two torchrun "nodes" with one rank each, one rendezvous endpoint. The second node's sockets are in
    # a runtime directory of its own (another machine's), so this monitor hears of its rank only through
    # the job's c10d store, relayed by the rank of its own node.
    import socket
    import tempfile

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def node(number: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={number}",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=lt",
            DDP,
            str(tmp_path / "out"),
            "--epochs",
            "40",
            "--slow-rank",
            "1",
        ]

    monkeypatch.setenv("LOADERTOP_RUNTIME_DIR", tempfile.mkdtemp(prefix="lt-other-"))
    other, _ = spawn(node(1))
    monkeypatch.setenv("LOADERTOP_RUNTIME_DIR", str(runtime_dir))
    child, log = spawn(node(0))
    session = RanksSession(child=child, log_path=log, command=node(0), read_gpus=False, sample_interval_s=0.5)
    session.start()
    try:

        def both() -> bool:
            script = session.view().script
            return script is not None and len(script.ranks) == 2 and all(r.step > 20 for r in script.ranks)

        wait_for(both, 90)
        ranks = session.view().script.ranks
        assert sorted(r.rank for r in ranks) == [0, 1] and sum(r.host is not None for r in ranks) == 1
        remote = next(r for r in ranks if r.host is not None)
        assert remote.pid == other.pid or remote.pid in {p.pid for p in psutil.Process(other.pid).children()}
        assert remote.load_ms > 0 and remote.step_ms > 0 and session.view().script.other_nodes == 0
        wait_for(lambda: (s := session.view().script.straggler) is not None and s.rank == 1, 30)
        # The other node's rank is switched from here too: through the job's store.
        while session.view().script.selected_rank != remote.rank:
            session.select_next_rank()
        session.apply(LoaderConfig(num_workers=2))
        wait_for(lambda: next(r for r in session.view().script.ranks if r.rank == remote.rank).num_workers == 2, 30)
        assert all(r.num_workers == 0 for r in session.view().script.ranks if r.rank != remote.rank)
        assert child.wait(120) == 0 and other.wait(120) == 0
    finally:
        for process in (child, other):
            if process.poll() is None:
                process.kill()
        session.close()


@pytest.mark.slow
def test_attach_takes_the_ranks_of_one_job_as_one_run(tmp_path: Path, runtime_dir: Path) -> None:
    import subprocess

    from loadertop.core.protocol.runtime import live_runs
    from loadertop.core.sessions.ranks import torchrun_jobs

    job = subprocess.Popen(
        [sys.executable, "-m", "loadertop", "run", "--headless", "--", *torchrun(tmp_path / "out", "--epochs", "40")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # (A rank busy starting, in torch's import or the process group's rendezvous, may not answer at once.)
        wait_for(lambda: sorted(r.rank for ranks in torchrun_jobs(live_runs()).values() for r in ranks) == [0, 1], 60)
        jobs = torchrun_jobs(live_runs())
        assert len(jobs) == 1 and len(live_runs()) == 2  # torchrun's own process serves none (python -m too)
        # Two live runs, but one job: attach does not ask which (here it stops only for want of a terminal).
        attach = run([sys.executable, "-m", "loadertop", "attach"])
        assert attach.returncode == 2 and "the monitor needs a terminal" in attach.stderr
        session = RanksSession(pid=next(iter(jobs)), read_gpus=False, sample_interval_s=0.5)
        session.start()
        wait_for(
            lambda: len(session.view().script.ranks) == 2 and min(r.step for r in session.view().script.ranks) > 5, 60
        )
        # The headless launcher watches its ranks too (for the input straggler), but only watches: this monitor
        # controls them.
        wait_for(lambda: session.view().script.control == "this monitor controls the run", 10)
        session.stop()  # as ^C would: torchrun stops its ranks
        session.close()
        assert job.wait(60) == 1  # torchrun's exit code when a signal stopped it, passed on by the launcher
    finally:
        if job.poll() is None:
            job.kill()
    assert no_children_left()
