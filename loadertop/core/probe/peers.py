"""Ranks on other nodes reach a monitor through the job's own c10d store, not a transport of loadertop's own.

torchrun already runs a store for the rendezvous, reachable from every node; once the script has
called ``init_process_group``, each rank's writer thread puts a short summary of itself in it
once a second (``loadertop/rank<R>``: its node, pid, host, workers, recent load and step, speed,
batches), and the first rank of each node reads the other nodes' summaries and publishes them on
its socket as ``peer`` messages. A monitor's switch for a rank of another node goes the same
way: ``loadertop/switch/rank<R>``, taken (and deleted) by that rank within a second. A monitor
on any node thus shows every rank of the job: its own node's in full, the others' from their
summaries. The store is only touched from the writer thread, at most once a second, never from
the loop.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from loadertop.core.probe import torch_compat

PEER_INTERVAL_S = 1.0
"""How often a rank puts its summary in the store (and the node's first rank reads the others')."""
KEY = "loadertop/rank{}"
SWITCH_KEY = "loadertop/switch/rank{}"


class PeerExchange:
    """One rank's side of the exchange (see the module's docstring).

    Args:
        rank, local_rank, node_rank, world_size: the rank's place in the job.
    """

    def __init__(self, *, rank: int, local_rank: int, node_rank: int, world_size: int) -> None:
        self.rank, self.local_rank, self.node_rank, self.world_size = rank, local_rank, node_rank, world_size
        self.host = socket.gethostname()
        self._store: Any = None
        self.failed: str | None = None  # why the store could not be used (said once, then left alone)
        self._asked: list[tuple[int, str | None, int]] = []  # switches for other ranks, from this node's monitors
        self._lock = threading.Lock()

    def ask_switch(self, rank: int, loader: str | None, workers: int) -> None:
        """Switch rank ``rank`` (on another node); written to the store at the next exchange (any thread)."""
        with self._lock:
            self._asked.append((rank, loader, workers))

    def take_switches(self) -> list[tuple[str | None, int]]:
        """Pass on the switches asked here; the (loader, workers) asked of this rank from another node."""
        store = self._store
        if store is None or self.failed is not None:
            return []
        with self._lock:
            asked, self._asked = self._asked, []
        try:
            for rank, loader, workers in asked:
                store.set(SWITCH_KEY.format(rank), json.dumps({"loader": loader, "workers": workers}))
            key = SWITCH_KEY.format(self.rank)
            if not store.check([key]):
                return []
            request = json.loads(store.get(key))
            store.delete_key(key)
            return [(request.get("loader"), int(request["workers"]))]
        except Exception as exc:  # noqa: BLE001 - as in exchange
            self.failed = f"{type(exc).__name__}: {exc}"
            return []

    def exchange(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """Put this rank's ``summary`` in the store; the other nodes' summaries if this is its node's first rank."""
        if self.failed is not None:
            return []
        try:
            store = self._store = self._store or torch_compat.default_store()
            if store is None:  # init_process_group not called yet (or no torch.distributed)
                return []
            store.set(
                KEY.format(self.rank),
                json.dumps(
                    {
                        **summary,
                        "rank": self.rank,
                        "local_rank": self.local_rank,
                        "node_rank": self.node_rank,
                        "host": self.host,
                    }
                ),
            )
            if self.local_rank != 0:
                return []
            peers = []
            for other in range(self.world_size):
                key = KEY.format(other)
                if other == self.rank or not store.check([key]):
                    continue
                peer = json.loads(store.get(key))
                if isinstance(peer, dict) and peer.get("node_rank") != self.node_rank:
                    peers.append(peer)
            return peers
        except Exception as exc:  # noqa: BLE001 - a store gone at the end, or one loadertop cannot use
            self.failed = f"{type(exc).__name__}: {exc}"
            return []
