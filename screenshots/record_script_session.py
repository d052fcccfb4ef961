"""Record a real session of a user's script under the monitor, for the screenshots and the snapshot tests.

Runs ``tests/scripts/long_loop.py --log`` as ``loadertop run -- COMMAND`` would (launched, watched
over its socket by a ``RemoteSession``), switches its training loader 0 -> 2 -> 1 workers from
the monitor, and saves the view at the chosen step. The SVGs are drawn from this file.

    python screenshots/record_script_session.py screenshots/script_session.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from loadertop.core.drive.launcher import spawn
from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.sessions.remote import RemoteSession
from loadertop.core.sessions.replay import save_view

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the recording (JSON)")
    parser.add_argument("--switch", default="150:2,420:1", help="STEP:WORKERS,... (default 150:2,420:1)")
    parser.add_argument("--at-step", type=int, default=600, help="step at which the view is saved (default 600)")
    args = parser.parse_args()
    switches = sorted((int(s), int(w)) for s, w in (item.split(":") for item in args.switch.split(",")))
    command = ["python", "tests/scripts/long_loop.py", "--log", "--seconds", "300"]
    child, log = spawn([sys.executable, *command[1:]])
    session = RemoteSession(child=child, log_path=log, command=command)
    session.start()
    try:
        while session.view().status.step < args.at_step:
            if session.view().script.ended:
                print(f"the script ended early: {session.view().script.ended}", file=sys.stderr)
                return 1
            if switches and session.view().status.step >= switches[0][0]:
                session.apply(LoaderConfig(num_workers=switches.pop(0)[1]))
            time.sleep(0.01)
        view = session.view()
    finally:
        session.stop()
        session.close()
    # The log file's place is this machine's: show where it would be for a user; no toast on replay.
    assert view.script is not None
    view = replace(view, script=replace(view.script, log_path="/run/user/1000/loadertop/run-4711.log", notice=(0, "")))
    save_view(view, args.out)
    print(f"saved the view at step {view.status.step} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
