"""``--switch``: which batch of which loader switches its workers, and the switches that name nothing.

``ProbeSettings.switches`` maps a key to a worker count: ``STEP`` (the training loader after STEP of its
batches), ``LOADER@STEP`` (the loader named LOADER), either after ``rankR:`` (rank R of a torchrun job only).
"""

from __future__ import annotations

import re

from loadertop.core.protocol.environment import Rank


def switch_due(switches: dict[str, int], loader: str, step: int, *, training: bool, rank: Rank | None) -> int | None:
    """The worker count ``loader`` switches to after its batch ``step`` (None: no switch there).

    This rank's own switch (``rankR:...``) comes before every rank's, a loader's named one before the
    training loader's by step alone.
    """
    keys = [f"{loader}@{step}", str(step)] if training else [f"{loader}@{step}"]
    if rank is not None:
        keys = [f"rank{rank.rank}:{key}" for key in keys] + keys
    return next((switches[key] for key in keys if key in switches), None)


def unmet_switches(switches: dict[str, int], names: set[str], rank: Rank | None) -> list[str]:
    """At the run's end, a line for each switch that named what the run did not have: a rank of no torchrun
    job or beyond the job's (said by rank 0), a loader the script never created (said by the rank it was for)."""
    lines = []
    for key in switches:
        named = re.match(r"rank(\d+):", key)
        if named is not None:  # --switch rankR:...: one rank's
            number = int(named.group(1))
            if rank is None:
                lines.append(
                    f"--switch {key}:{switches[key]}: names rank {number} of a torchrun job, "
                    "but this script runs as one process (not under torchrun)"
                )
            elif number >= rank.world_size and rank.rank == 0:
                lines.append(
                    f"--switch {key}:{switches[key]}: the job has no rank {number} (its "
                    f"ranks: 0 to {rank.world_size - 1})"
                )
            if rank is None or number != rank.rank:
                continue
        loader, _, _ = key[named.end() if named else 0 :].rpartition("@")
        if loader and loader not in names:
            known = ", ".join(sorted(names)) or "none"
            lines.append(
                f"--switch {key}:{switches[key]}: the script created no DataLoader named "
                f"{loader!r} (its loaders: {known})"
            )
    return lines
