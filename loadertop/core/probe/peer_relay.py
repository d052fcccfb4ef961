"""A rank's part in a multi-node torchrun job: its summary to the job's store and the other nodes' ranks to its
monitors, once a second, and the switches a monitor on one node asks of a rank on another, both ways.

The store itself is reached through ``peers.PeerExchange`` (imported only under such a job).
"""

from __future__ import annotations

import time

from loadertop.core.probe.publisher import Publisher, describe_workers
from loadertop.core.protocol.environment import Rank
from loadertop.core.protocol.messages import MessageError, Peer


class PeerRelay:
    """One rank's exchange with the other nodes of its job, run by the writer thread.

    Args:
        run: the rank's publisher: its summary, its switches, where lines and messages go.
        rank: this process's rank (its job has ranks on other nodes).
    """

    def __init__(self, run: Publisher, rank: Rank) -> None:
        from loadertop.core.probe.peers import PeerExchange

        self._run = run
        self.world_size = rank.world_size
        self._exchange = PeerExchange(
            rank=rank.rank, local_rank=rank.local_rank, node_rank=rank.node_rank, world_size=rank.world_size
        )
        self._next = 0.0
        self._refused = False  # said once: a summary of another node's that is not a peer message

    def tick(self) -> bool:
        """Between the writer's bursts: once a second, this rank's summary to the job's store and the others' to
        monitors, and the switches asked of this rank. False once the store cannot carry them (said once)."""
        if time.monotonic() < self._next:
            return True
        from loadertop.core.probe.peers import PEER_INTERVAL_S

        run, exchange = self._run, self._exchange
        self._next = time.monotonic() + PEER_INTERVAL_S
        for name, workers in exchange.take_switches():  # a monitor on another node switched this rank
            reason = run._switch_request(name, workers)
            if reason is not None:
                run._say(f"a switch through the job's store: {reason}")
        summary = run.recent_summary()
        if summary is not None:
            for peer in exchange.exchange(summary):
                try:
                    run._publish(Peer.from_wire(peer))
                except MessageError as exc:  # another node's loadertop wrote it: it may be of another version
                    if not self._refused:
                        self._refused = True
                        run._say(f"a rank's summary in the job's store is not one this loadertop reads ({exc})")
        if exchange.failed is not None:
            run._say(
                f"the job's c10d store cannot carry loadertop's summaries ({exchange.failed}): monitors see "
                "only this node's ranks"
            )
            return False
        return True

    def ask_switch(self, rank: int, name: str | None, workers: int) -> None:
        """A monitor here switches rank ``rank`` of another node: the writer passes it on through the store."""
        self._exchange.ask_switch(rank, name, workers)
        self._run._put(("say", f"rank {rank} (another node): the monitor asks for {describe_workers(workers)}"))
