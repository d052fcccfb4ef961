"""The Textual monitor, on the built-in training (``loadertop run``) or on a script (``loadertop run -- COMMAND``,
``loadertop attach``), the terminal it needs, and what is printed once it closes."""

from __future__ import annotations

import gc
import sys
from typing import IO, TYPE_CHECKING, Any

from loadertop.cli.parser import UsageError

if TYPE_CHECKING:
    from loadertop.core.sessions.ranks import RanksSession
    from loadertop.core.sessions.remote import RemoteSession
    from loadertop.core.train.engine import Trainer


def need_terminal(instead: str) -> None:
    """Refuse, in one line that names ``instead``, when stdin or stderr is not a terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"the monitor needs a terminal (stdin and stderr); without one use: {instead}")


def watch_script(session: RemoteSession | RanksSession) -> int:
    """The monitor on a script; afterwards its exit code (or 0 after a detach), its traceback on stderr."""
    from loadertop.core.policy.report import format_table
    from loadertop.tui.app import LoaderTopApp

    app = LoaderTopApp(session)
    gc.freeze()  # Textual's and rich's objects out of the collector's reach: full collections stay short
    code = 0
    try:
        app.run()
        code = app.return_code or 0
    except KeyboardInterrupt:
        session.stop()
        code = 130
    except Exception:
        session.detach()  # the monitor failed, not the training: it runs on, to be watched again
        print(
            f"loadertop: the monitor failed; the script (pid {session.root_pid}) runs on: loadertop attach "
            "watches it again",
            file=sys.stderr,
        )
        raise
    finally:
        session.close()
    view = session.view()
    try:
        if session.detached:
            where = f"; its output goes to {session.log_path}" if session.log_path else ""
            print(
                f"loadertop: detached: pid {view.script.pid if view.script else session.root_pid} runs on"
                f"{where}; loadertop attach watches it again",
                file=sys.stderr,
            )
            return 0
        if view.store.summaries:
            print(format_table(view.store.summaries))
        stopped_by_us = session.stopping and "KeyboardInterrupt" in (session.traceback or "").strip()[-200:]
        if session.traceback and not stopped_by_us:
            sys.stderr.write(session.traceback if session.traceback.endswith("\n") else session.traceback + "\n")
        if view.script is not None and view.script.ended:
            output = f"; its output is in {session.log_path}" if session.log_path else ""
            print(f"loadertop: {view.script.ended}{output}", file=sys.stderr)
    except OSError:  # the terminal is gone
        pass
    if session.exit_code is not None:
        return session.exit_code
    return code


def run_monitor(trainer: Trainer, record_file: IO[str] | None, sample_interval_s: float, tuning: dict[str, Any]) -> int:
    """The Textual monitor; after it closes, the comparison table is printed on stdout."""
    from loadertop.core.policy.report import format_table
    from loadertop.core.sessions.session import Session
    from loadertop.tui.app import LoaderTopApp

    session = Session(
        trainer, sample_interval_s=sample_interval_s, record_file=record_file, monitor_thread=True, serve=True, **tuning
    )
    app = LoaderTopApp(session)
    # torch, the model and the dataset are loaded: move their objects out of the garbage collector's
    # reach. A full collection over them took ~280 ms (a frozen screen, a late key press); ~35 ms after.
    gc.freeze()
    code = 0
    try:
        app.run()
        code = app.return_code or 0
    except KeyboardInterrupt:  # Ctrl+C before the app took the terminal
        code = 130
    finally:
        leftover = session.close()
    try:
        summaries = trainer.store.summaries()
        if summaries and code < 128:
            print(format_table(summaries))
        if leftover:
            print(f"loadertop: terminated left-over worker processes {leftover}", file=sys.stderr)
        for line in session.memory.untold if session.memory is not None else ():
            print(f"loadertop: {line}", file=sys.stderr)  # the run history's, held while the monitor drew
        error = trainer.error
        if error is not None and code == 0:
            where = f" (sample index {error.sample_index})" if error.sample_index is not None else ""
            print(f"loadertop: run failed at step {error.step + 1}{where}: {error.message}", file=sys.stderr)
            code = 1
    except OSError:  # the terminal is gone (SIGHUP): nothing to print to
        pass
    return code
