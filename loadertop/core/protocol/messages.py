"""What is said on the wire (every message also has ``"v"`` and ``"type"``).

From the training process (a launched script) to each monitor:

- ``hello``: ``pid``, ``command``, ``cwd``, ``started``, ``log`` (its output file or null), under
  torchrun ``rank``, ``local_rank``, ``world_size``, ``local_world_size``, ``node_rank``,
  ``controller`` and ``controller_id`` (the pid and id of the monitor that may send commands, or null),
  ``threads`` (native ids of loadertop's own threads in the script: left out of its CPU).
- ``loader``: a DataLoader was created or changed: ``name``, ``num_workers``, ``batch_size``,
  ``batches_per_epoch`` (null when unsized), ``training`` (the one commands address by default),
  ``exact`` (a switch continues the running epoch; false for an IterableDataset: next epoch),
  ``pending`` (a requested count not yet applied), ``epoch``, ``worker_pids``.
- ``batch``: one batch the loop received: ``loader``, ``step``, ``epoch``, ``batch``,
  ``num_workers``, ``samples``, ``load_ms``, ``step_ms`` (null for an epoch's first),
  ``switch_ms``, ``time``.
- ``log``: ``loadertop.log(...)`` values for the training loader's latest batch: ``loader``, ``step``, metrics.
- ``event``: ``{"event": "switch", "loader", "from", "to", "after_step", "by"}``; ``{"event": "autotune",
  "change", "from", "to", "reason", "predicted", "ceiling", "loader", "step"}`` (and ``rank`` under
  torchrun): a decision of the autotuner, as ``--record`` has it (``change``: ``jump``, ``step``,
  ``settle``, ``retune`` or ``memory``; ``predicted``: ``{"count": samples/s or null}``, the model's
  curve then; ``ceiling``: the CPU budget's samples/s, null when unknown; ``step``: the training
  loader's batches so far). Every one is kept for monitors that attach later. Others: shown as they are.
- ``autotune``: the autotuner's status, sent when it changes (the latest is kept for monitors that
  attach later): ``loader`` (the tuned one, null before there is one), ``state`` (``off``,
  ``measuring``, ``switching``, ``settled``), ``workers`` (the count measured or held, null before
  any), ``changes`` (how many so far), ``predicted`` and ``ceiling`` (the latest model's, as in the
  event), and once the tuner exists its budgets: ``cores``, ``memory_bytes`` (null: no limit),
  ``max_workers``.
- ``cpu``: the script's process tree's CPU clock (``time`` monotonic, ``main_s`` without loadertop's
  threads, ``children_s`` reaped children included, ``rss_bytes``) read by the script itself:
  ``reason`` ``"boundary"`` where a configuration of the training loader ``loader`` begins (its
  old workers shut down, the new ones not yet started) and ``"end"`` at exit. Between them the
  monitor reads the same clock itself, from outside (costing the script nothing).
- ``control``: ``controller`` changed (a monitor took control or left).
- ``refused``: ``reason``: a command this monitor may not give, or one that cannot work.
- ``dropped``: ``count``: messages this monitor missed because it did not read them in time.
- ``history_end``: everything before the connection has been sent.
- ``peer``: a rank of the same torchrun job on another node, from the job's c10d store
  (``probe.peers``): ``rank``, ``local_rank``, ``node_rank``, ``host``, ``pid``, ``num_workers``,
  ``load_ms``, ``step_ms``, ``samples_per_s``, ``step``, ``time`` (its clock when it wrote it).

From a monitor: ``hello`` (``pid``, ``id``: its own, ``control``: whether it wants to give commands),
``switch`` (``loader``: a name or null for the training loader, ``workers``) and ``autotune``
(``enabled``: true or false: tune the training loader from its running count, or stop and keep
the count). Only the controller may send ``switch`` and ``autotune``; the others get ``refused``.
"""

SERVER_TYPES = frozenset({"hello", "loader", "batch", "log", "cpu", "event", "control", "refused", "dropped",
                          "history_end", "peer", "autotune"})
CLIENT_TYPES = frozenset({"hello", "switch", "autotune"})
