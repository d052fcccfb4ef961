"""The built-in run's autotune is the one host's: its thread left out of the CPU billed, every change logged with its
step and recorded before whoever asked is told."""

from __future__ import annotations

import io
import json
import time

from loadertop.core.policy.autotune import Budget, Change, Observation
from loadertop.core.probe.autotune_host import AutotuneHost
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import TunerState
from loadertop.core.protocol.records import record_line
from loadertop.core.sessions.session import Session
from loadertop.core.train.engine import Trainer
from tests import workloads
from tests.helpers import eventually


def test_a_sessions_changes_are_logged_with_their_step_and_recorded_before_whoever_asked_is_told() -> None:
    trainer = Trainer(workloads.make(size=64), LoaderConfig(num_workers=0, batch_size=8), epochs=1, device="cpu")
    record = io.StringIO()
    told: list[tuple[Change, int]] = []
    session = Session(
        trainer,
        read_gpus=False,
        record_file=record,
        budget=Budget(cores=2, max_workers=8),
        on_autotune=lambda change: told.append((change, len(session.autotune_log))),
    )
    assert type(session.tuner) is AutotuneHost and not session.tuner.enabled
    session.start()
    try:
        assert session.tuner.thread_id in trainer.cpu_clock._excluded  # not billed to the training
        assert trainer.join(60.0) and trainer.status().step == 8  # done: the tuner's switch is then not applied
        assert session.view().autotune is not None and session.view().autotune.state == TunerState.OFF
        session.set_autotune(True)
        for i in range(80):  # 20 ms waited for 4 ms of step, read by the host's thread every 0.25 s meanwhile
            session.tuner.put(Observation(0, 8, 0.020 + (i % 3) * 1e-4, 0.004, time.time()))
            time.sleep(0.02)
        assert eventually(lambda: told, timeout=5.0)
    finally:
        session.close()
    first = told[0][0]
    assert told[0][1] == 1 and session.autotune_log[0] == (8, first)  # logged before whoever asked was told
    events = [line for line in map(json.loads, record.getvalue().splitlines()) if line.get("event") == "autotune"]
    assert events[0] == json.loads(record_line({**first.to_event(), "step": 8}))
    assert [change for change, _ in told] == [change for _, change in session.autotune_log]
