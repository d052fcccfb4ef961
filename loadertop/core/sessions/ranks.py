"""A torchrun job seen as one run: every rank's socket watched, the ranks side by side, the input straggler named.

``loadertop run -- torchrun --nproc_per_node=N train.py`` starts torchrun, which starts the ranks;
each rank serves its own socket (``probe.launched``: its hello names its rank, local rank and
world size). ``RanksSession`` finds them among torchrun's descendants, watches each through a
``RemoteSession`` of its own, and serves the view of the rank the user selected, with every
rank's recent load and step beside it and the straggler verdict (``find_straggler``). Commands
go to the selected rank, or to all (``apply_all``); autotune is turned on or off for the selected
rank (``set_autotune``: each rank tunes its own loader within its share of the node); stopping
stops torchrun (which stops its ranks, as it does on ^C). No torch here.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from loadertop.core.drive.launcher import exit_status
from loadertop.core.drive.sweep import DEFAULT_BATCHES
from loadertop.core.policy.advice import recent_stats
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import Peer
from loadertop.core.protocol.runtime import RunInfo, read_hello, runtime_dir
from loadertop.core.sessions.remote import RemoteSession
from loadertop.core.sessions.view import RankInfo, SessionView, Straggler

DISCOVER_S = 0.5
"""How often torchrun's descendants are looked at for new ranks."""
STRAGGLER_MIN_MS = 2.0
"""A rank's extra wait for data below this is not a straggler (measurement noise)."""
STRAGGLER_SHARE = 0.15
"""Nor is one whose extra wait is below this share of the others' iteration."""


_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def _root_cause(lines: Sequence[str]) -> tuple[int, int | None] | None:
    """(rank, exit code) from torchrun's failure summary ("Root Cause (first observed failure)"), if printed."""
    for i, line in enumerate(lines):
        if "Root Cause" not in line:
            continue
        rank = code = None
        for later in lines[i + 1 : i + 12]:
            if rank is None and (found := _ROOT_RANK.match(later)):
                rank = int(found.group(1))
            elif code is None and (found := _ROOT_EXIT.match(later)):
                code = int(found.group(1))
        if rank is not None:
            return rank, code
    return None


def torchrun_jobs(runs: Sequence[RunInfo]) -> dict[int, list[RunInfo]]:
    """The live runs that are ranks of a torchrun job, by the job's torchrun process (their parent)."""
    jobs: dict[int, list[RunInfo]] = {}
    for run in runs:
        if run.rank is None:
            continue
        try:
            parent = psutil.Process(run.pid).ppid()
        except psutil.Error:
            continue
        jobs.setdefault(parent, []).append(run)
    return jobs


def _measured(value: float | None) -> float:
    """A peer's figure, NaN where it has none yet."""
    return math.nan if value is None else value


def is_distributed_command(command: Sequence[str]) -> bool:
    """``torchrun ...`` or ``python -m torch.distributed.run|launch ...``."""
    if not command:
        return False
    if os.path.basename(command[0]) == "torchrun":
        return True
    return any(
        command[i] == "-m" and command[i + 1] in ("torch.distributed.run", "torch.distributed.launch")
        for i in range(len(command) - 1)
    )


def measured_ranks(ranks: Sequence[RankInfo]) -> list[RankInfo]:
    """The ranks with a recent load and step: those a straggler verdict compares."""
    return [r for r in ranks if math.isfinite(r.load_ms) and math.isfinite(r.step_ms)]


def find_straggler(ranks: Sequence[RankInfo]) -> Straggler | None:
    """The input straggler: the rank whose wait for data holds the others back at the collectives.

    In data-parallel training every rank's step ends in the gradient all-reduce, so a rank that
    waits longer for its batch makes the others wait inside their step. The straggler is the rank
    with the longest load whose extra wait (over the others' median) is at least
    ``STRAGGLER_MIN_MS`` and ``STRAGGLER_SHARE`` of an iteration, and whose step is the shortest:
    the others' steps hold the wait for it. Its score is that extra wait as a share of the
    iteration: the part of every rank's time lost to its data.
    """
    measured = measured_ranks(ranks)
    if len(measured) < 2:
        return None
    slow = max(measured, key=lambda r: r.load_ms)
    others = [r for r in measured if r is not slow]
    others_load = statistics.median(r.load_ms for r in others)
    others_step = statistics.median(r.step_ms for r in others)
    extra = slow.load_ms - others_load
    iteration = others_load + others_step
    held = others_step - slow.step_ms  # what the others wait for it inside their step
    if extra < STRAGGLER_MIN_MS or iteration <= 0 or extra < STRAGGLER_SHARE * iteration or held < 0.5 * extra:
        return None
    evidence = (
        f"rank {slow.rank} waits {slow.load_ms:.1f} ms per batch for data, the others {others_load:.1f} ms; "
        f"their step takes {held:.1f} ms longer than rank {slow.rank}'s: they wait for it at the all-reduce"
    )
    return Straggler(rank=slow.rank, score=min(extra / iteration, 1.0), evidence=evidence)


MIXED_AFTER_S = 10.0
"""A rank of this node that has not served a socket this long after the first one did is shown as not watched."""


@dataclass
class _Rank:
    pid: int
    socket_path: Path
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    session: RemoteSession
    found_at: float


class RanksSession:
    """Every rank of a torchrun job that this process launched; implements ``SessionLike``.

    Args:
        child: torchrun, as the launcher started it.
        log_path: the file the job's output goes to.
        command: its command line.
        sample_interval_s: seconds between system samples (each rank's process tree).
        read_gpus: False to skip NVML.
        control: ask to be each rank's controller (False: watch only, as headless ``straggler_watch`` does).
    """

    def __init__(
        self,
        *,
        child: subprocess.Popen[bytes] | None = None,
        pid: int | None = None,
        log_path: str | None = None,
        command: Sequence[str] = (),
        sample_interval_s: float = 1.0,
        read_gpus: bool = True,
        control: bool = True,
    ) -> None:
        if child is None and pid is None:
            raise ValueError("give torchrun's process (launched) or its pid (attach)")
        self.child = child
        self.root_pid = child.pid if child is not None else int(pid)  # type: ignore[arg-type]
        self.log_path = log_path
        self.command = tuple(command)
        self._interval = sample_interval_s
        self._read_gpus = read_gpus
        self._control = control
        self._lock = threading.RLock()
        self._ranks: dict[int, _Rank] = {}
        self._selected = 0
        self._looked: set[int] = set()  # pids whose socket was read already
        self._closed = threading.Event()
        self._detached = False
        self._stopping = False
        # Until a rank appears, the job is watched as a launched script is (its process, the log, "no DataLoader").
        self._job = RemoteSession(
            child=child,
            pid=None if child is not None else self.root_pid,
            log_path=log_path,
            command=command,
            socket_path=Path("/nonexistent"),
            sample_interval_s=sample_interval_s,
            read_gpus=read_gpus,
        )
        self._thread = threading.Thread(target=self._discover, name="loadertop-ranks", daemon=True)

    # ------------------------------------------------------------ SessionLike

    def start(self) -> None:
        """Start watching torchrun and looking for its ranks."""
        self._job.start()
        self._thread.start()

    def view(self) -> SessionView:
        """The selected rank's view, with every rank side by side and the straggler named."""
        with self._lock:
            ranks = dict(self._ranks)
            selected = self._selected
        if not ranks:
            return self._job.view()
        infos = []
        views = {}
        for number, rank in sorted(ranks.items()):
            rank.session.ranks_on_node = len(ranks)  # its advice: the ranks found share this node's cores
            view = views[number] = rank.session.view()
            stats = recent_stats(view.store.records, view.status.config.key)
            infos.append(
                RankInfo(
                    rank=number,
                    local_rank=rank.local_rank,
                    world_size=rank.world_size,
                    pid=rank.pid,
                    num_workers=view.status.config.num_workers,
                    load_ms=stats.load_ms_mean,
                    step_ms=stats.compute_ms_mean,
                    samples_per_s=stats.samples_per_s,
                    step=view.status.step,
                    ended=view.script.ended if view.script else None,
                )
            )
        shown = views.get(selected) or views[min(views)]
        job = self._job.view()  # torchrun's own output (the log) and how it ended
        script = shown.script
        assert script is not None
        log_tail = job.script.log_tail if job.script else script.log_tail
        ended = job.script.ended if job.script else None  # torchrun's end is the job's (a rank's is its own row's)
        failure = self._first_failure(log_tail)
        if failure is not None:
            number, code, last_line = failure
            said = f"rank {number} failed first" + (f" (exit code {code})" if code is not None else "")
            infos = [replace(i, ended=f"failed first: {last_line}") if i.rank == number else i for i in infos]
            ended = f"{ended}; {said}: {last_line}" if ended else f"{said}: {last_line}"
        infos.extend(self._remote(ranks))
        straggler = find_straggler(infos)
        infos.extend(self._unwatched(ranks))
        any_rank = next(iter(ranks.values()))
        expected = any_rank.world_size - any_rank.local_world_size if any_rank.local_world_size else 0
        other_nodes = max(expected - sum(1 for i in infos if i.host), 0)
        script = replace(
            script,
            ranks=tuple(sorted(infos, key=lambda i: i.rank)),
            selected_rank=selected,
            straggler=straggler,
            log_tail=log_tail,
            log_path=self.log_path,
            ended=ended,
            command=self.command or script.command,
            other_nodes=other_nodes,
        )
        name = " ".join(self.command) or shown.workload_name
        return replace(shown, script=script, workload_name=name)

    def apply(self, config: LoaderConfig) -> None:
        """Switch the selected rank's loader to ``config.num_workers`` (a rank of another node through the store)."""
        with self._lock:
            local = self._ranks.get(self._selected)
            selected = self._selected
        if local is not None:
            local.session.apply(config)
            return
        relay = self._selected_rank()
        if relay is None:
            raise RuntimeError("no rank has a DataLoader yet: nothing to switch")
        relay.session.apply(config, rank=selected)

    def apply_all(self, config: LoaderConfig) -> None:
        """Switch every rank's training loader to ``config.num_workers``: this node's, the others' through the store."""
        with self._lock:
            ranks = dict(self._ranks)
        if not ranks:
            raise RuntimeError("no rank has a DataLoader yet: nothing to switch")
        for rank in ranks.values():
            rank.session.apply(config)
        relay = ranks[min(ranks)]
        for remote in self._remote(ranks):
            relay.session.apply(config, rank=remote.rank)

    def set_autotune(self, enabled: bool) -> None:
        """Turn autotune on or off for the shown rank only: each rank has a tuner of its own, its budget its
        share of the node (the others keep theirs; select each rank, or start the job with ``--autotune``).
        A rank of another node is out of reach: it is tuned from a monitor on its node."""
        with self._lock:
            local = self._ranks.get(self._selected)
            selected = self._selected
            any_rank = bool(self._ranks)
        if local is not None:
            local.session.set_autotune(enabled)
        elif any_rank:
            raise RuntimeError(f"rank {selected} runs on another node: tune it from a monitor there")
        else:
            raise RuntimeError("no rank has started yet: nothing to tune")

    def select_next_rank(self) -> int | None:
        """Show and command the next rank (this node's or another's); returns its number."""
        with self._lock:
            ranks = dict(self._ranks)
        numbers = sorted({*ranks, *(r.rank for r in self._remote(ranks))}) if ranks else []
        if not numbers:
            return None
        with self._lock:
            later = [n for n in numbers if n > self._selected]
            self._selected = later[0] if later else numbers[0]
            return self._selected

    def select_next_loader(self) -> str | None:
        """The selected rank's next loader."""
        rank = self._selected_rank()
        return rank.session.select_next_loader() if rank is not None else None

    def pause(self) -> None:
        """Scripts run their own loop: not paused from here."""
        self._job.pause()

    resume = pause

    def start_sweep(self, counts: Sequence[int] | None = None, batches: int = DEFAULT_BATCHES) -> None:
        """Not for scripts yet."""
        self._job.start_sweep(counts, batches)

    def cancel_sweep(self) -> None:
        """Nothing to cancel."""

    def stop(self) -> None:
        """Stop torchrun as ^C would (it stops its ranks); ``close`` follows up if it lingers."""
        self._stopping = True
        self._job.stop()

    def detach(self) -> None:
        """Stop watching; the job runs on."""
        self._detached = True
        self._job.detach()
        for rank in self._all():
            rank.session.detach()

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was asked."""
        return self._stopping

    @property
    def detached(self) -> bool:
        """Whether ``detach`` was asked."""
        return self._detached

    @property
    def exit_code(self) -> int | None:
        """torchrun's exit code once it ended (when this process launched it)."""
        code = self.child.poll() if self.child is not None else None
        return exit_status(code) if code is not None else None

    @property
    def traceback(self) -> str | None:
        """The uncaught exception of the rank that failed first (the others' follow from it), as it printed it."""
        failed = [r for r in self._all() if r.session.traceback]
        return min(failed, key=lambda r: r.session.traceback_at).session.traceback if failed else None

    @staticmethod
    def _remote(ranks: dict[int, _Rank]) -> list[RankInfo]:
        """The ranks of other nodes, from the summaries this node's ranks relay from the job's c10d store."""
        peers: dict[int, Peer] = {}
        for rank in ranks.values():
            for number, peer in dict(rank.session.peers).items():  # a copy: the client thread adds to it
                known = peers.get(number)
                if number not in ranks and (known is None or (peer.time or 0.0) >= (known.time or 0.0)):
                    peers[number] = peer
        infos = []
        for number, peer in sorted(peers.items()):
            infos.append(
                RankInfo(
                    rank=number,
                    local_rank=peer.local_rank or 0,
                    world_size=next(iter(ranks.values())).world_size,
                    pid=peer.pid or 0,
                    num_workers=peer.num_workers or 0,
                    load_ms=_measured(peer.load_ms),
                    step_ms=_measured(peer.step_ms),
                    samples_per_s=_measured(peer.samples_per_s),
                    step=peer.step or 0,
                    host=peer.host or "another node",
                )
            )
        return infos

    def _unwatched(self, ranks: dict[int, _Rank]) -> list[RankInfo]:
        """This node's ranks that serve no socket (mixed: one instrumented, one not), once they had time to."""
        first = min(ranks.values(), key=lambda r: r.found_at)
        if not first.local_world_size or time.monotonic() - first.found_at < MIXED_AFTER_S:
            return []
        base = first.node_rank * first.local_world_size
        missing = [n for n in range(base, base + first.local_world_size) if n not in ranks]
        return [
            RankInfo(
                rank=n,
                local_rank=n - base,
                world_size=first.world_size,
                pid=0,
                num_workers=0,
                load_ms=math.nan,
                step_ms=math.nan,
                samples_per_s=math.nan,
                step=0,
                ended="not watched: its DataLoaders are not loadertop's",
                watched=False,
            )
            for n in missing
        ]

    def _first_failure(self, log_tail: Sequence[str]) -> tuple[int, int | None, str] | None:
        """(rank, exit code, last line of its traceback) of the rank that failed first, if one did.

        The rank is the one whose exception reached the monitor first, or torchrun's own "Root Cause"
        in its failure summary; the exit code comes from that summary (ranks are torchrun's children,
        not this process's: only torchrun sees their exit codes).
        """
        root = _root_cause(log_tail)
        failed = [r for r in self._all() if r.session.traceback]
        if root is not None and root[0] in {r.rank for r in self._all()}:
            number, code = root
        elif failed:
            number, code = min(failed, key=lambda r: r.session.traceback_at).rank, None
        else:
            return None
        rank = self._ranks.get(number)
        text = (rank.session.traceback or "").strip() if rank is not None else ""
        return number, code, text.splitlines()[-1] if text else "no traceback (killed, or it exited)"

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """Stop looking and watching (after ``stop``, wait for torchrun as a launched script is waited for)."""
        self._closed.set()
        self._thread.join(1.0)
        self._job.close(timeout_s)
        for rank in self._all():
            rank.session.close(timeout_s)
        return []

    # ------------------------------------------------------------ internals

    def _all(self) -> list[_Rank]:
        with self._lock:
            return list(self._ranks.values())

    def _selected_rank(self) -> _Rank | None:
        with self._lock:
            return self._ranks.get(self._selected) or (self._ranks[min(self._ranks)] if self._ranks else None)

    def _discover(self) -> None:
        while not self._closed.wait(DISCOVER_S):
            try:
                pids = [p.pid for p in psutil.Process(self.root_pid).children(recursive=True)]
            except psutil.Error:
                return
            directory = runtime_dir(create=False)
            for pid in pids:
                path = directory / f"{pid}.sock"
                if pid in self._looked or not path.exists():
                    continue
                hello = read_hello(path)
                if hello is None:  # busy starting (torch's import, the rendezvous): asked again next round
                    continue
                self._looked.add(pid)
                if hello.rank is None:
                    continue
                session = RemoteSession(
                    pid=pid,
                    socket_path=path,
                    command=self.command,
                    sample_interval_s=self._interval,
                    read_gpus=self._read_gpus and hello.rank == 0,
                    control=self._control,
                )
                session.start()
                with self._lock:
                    self._ranks[hello.rank] = _Rank(
                        pid,
                        path,
                        hello.rank,
                        hello.local_rank or 0,
                        hello.world_size or 0,
                        hello.local_world_size or 0,
                        hello.node_rank or 0,
                        session,
                        time.monotonic(),
                    )
