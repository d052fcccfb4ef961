"""What watching a user's script costs it: the launcher, a frozen monitor, and the monitor's key latency.

1. Launcher overhead: ``benchmarks/scripts/rate_loop.py`` (0.5 ms of pure-Python work per sample,
   0 workers: the loop's thread is the busiest there is) run with plain ``python`` and under
   ``loadertop run --headless`` with a monitor attached, alternating A-B / B-A; samples/s from
   the script's own per-second counts. Goal: launched / plain >= 0.99.
2. A frozen monitor: the script under the launcher with a monitor (``RemoteSession`` in its own
   process) attached; after 15 s the monitor is frozen with SIGSTOP for 30 s, then resumed.
   Samples/s while frozen / while watched normally (goal >= 0.99), and the script's RSS before
   and at the end of the freeze (bounded: the per-monitor buffer, 4 MiB, is all that grows).
3. Key press -> screen in ``loadertop run -- python rate_loop.py`` (tmux), 0 workers: ``+``/``-``
   until the pane shows the new pending count, polled every 10 ms. Goal: p95 < 50 ms.

Usage: python benchmarks/script_monitor.py [--rounds 4] [--seconds 30] [--presses 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadertop.core.protocol.runtime import live_runs
from tests.e2e.tmux import app_key_latencies_ms, percentiles_text, step_of

SCRIPT = str(ROOT / "benchmarks" / "scripts" / "rate_loop.py")
SKIP_S = 3  # the first seconds (imports done, first epoch's start) are left out


def rates(path: Path, first: int = SKIP_S, last: int | None = None) -> float:
    """Mean samples/s over whole seconds ``first`` < s <= ``last`` of a rates file."""
    counts = [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]
    kept = [n for s, n in counts if s > first and (last is None or s <= last)]
    if not kept:
        raise RuntimeError(f"{path}: no seconds measured")
    return sum(kept) / len(kept)


def attach_monitor(pid: int, socket_path: Path) -> subprocess.Popen[bytes]:
    code = (
        "import time; from pathlib import Path; from loadertop.core.sessions.remote import RemoteSession; "
        f"s = RemoteSession(pid={pid}, socket_path=Path({str(socket_path)!r}), read_gpus=False); s.start(); "
        "time.sleep(3600)"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def launched(args: argparse.Namespace, out: Path, *, freeze_after_s: float | None = None) -> dict[str, float]:
    """One run under the launcher with a monitor attached (frozen for a while if asked)."""
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadertop",
            "run",
            "--headless",
            "--",
            sys.executable,
            SCRIPT,
            str(out),
            "--seconds",
            str(args.seconds),
            "--log",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    facts: dict[str, float] = {}
    monitor = None
    try:
        deadline = time.monotonic() + 60
        while not live_runs(remove_stale=False) and time.monotonic() < deadline:
            time.sleep(0.1)
        info = live_runs()[0]
        monitor = attach_monitor(info.pid, info.socket_path)
        if freeze_after_s is not None:
            time.sleep(freeze_after_s)
            script = psutil.Process(info.pid)
            facts["rss_before_mb"] = script.memory_info().rss / 2**20
            monitor.send_signal(signal.SIGSTOP)
            facts["frozen_from_s"] = time.monotonic()
            time.sleep(args.freeze)
            facts["rss_frozen_mb"] = script.memory_info().rss / 2**20
            facts["frozen_to_s"] = time.monotonic()
            monitor.send_signal(signal.SIGCONT)
        if run.wait(args.seconds + args.freeze + 120) != 0:
            raise RuntimeError("the launched script failed")
    finally:
        if monitor is not None:
            monitor.kill()
            monitor.wait(10)
        if run.poll() is None:
            run.kill()
    return facts


def plain(args: argparse.Namespace, out: Path) -> None:
    # The same script, its loadertop.log line included (a no-op without the launcher).
    subprocess.run([sys.executable, SCRIPT, str(out), "--seconds", str(args.seconds), "--log"], cwd=ROOT, check=True)


def key_latency(args: argparse.Namespace, tmp: Path) -> list[float]:
    command = ["run", "--", sys.executable, SCRIPT, str(tmp / "keys.txt"), "--seconds", "600", "--log"]
    return app_key_latencies_ms(
        command,
        tmp,
        lambda s: "(training): 0 workers" in s and step_of(s) > 10,
        args.presses,
        "(training): 1 worker ",
        "(training): 0 workers",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--freeze", type=float, default=30.0)
    parser.add_argument("--presses", type=int, default=40)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: overhead,frozen,keys")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} logical cores, Python {platform.python_version()}")
    os.environ.setdefault("LOADERTOP_RUNTIME_DIR", tempfile.mkdtemp(prefix="lt-bench-"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "overhead" not in skip:
            ratios = []
            for i in range(args.rounds):
                a, b = tmp / f"plain{i}.txt", tmp / f"launched{i}.txt"
                if i % 2 == 0:
                    plain(args, a)
                    launched(args, b)
                else:
                    launched(args, b)
                    plain(args, a)
                ratios.append(rates(b) / rates(a))
                print(f"round {i + 1}: plain {rates(a):.0f} samples/s, launched and watched {rates(b):.0f}")
            ratio = statistics.geometric_mean(ratios)
            print(
                f"launcher + monitor, 0 workers, GIL-heavy loading: launched / plain = {ratio:.3f} "
                f"(per round {' '.join(f'{r:.3f}' for r in ratios)}; goal >= 0.99) "
                f"{'OK' if ratio >= 0.99 else 'MISSED'}"
            )
        if "frozen" not in skip:
            out = tmp / "frozen.txt"
            seconds = args.seconds
            args.seconds = 15 + args.freeze + 15
            started = time.monotonic()
            facts = launched(args, out, freeze_after_s=15)
            args.seconds = seconds
            # The script's seconds count from its own start, a little after ours: take whole seconds inside.
            lag = 1 + round(facts["frozen_from_s"] - started) - 15
            watched = rates(out, SKIP_S, 13)
            frozen = rates(out, 16 + max(lag, 0), 14 + args.freeze)
            print(
                f"monitor frozen (SIGSTOP) {args.freeze:.0f} s: {frozen:.0f} samples/s frozen, {watched:.0f} watched "
                f"normally: frozen / watched = {frozen / watched:.3f} (goal >= 0.99) "
                f"{'OK' if frozen / watched >= 0.99 else 'MISSED'}; script RSS {facts['rss_before_mb']:.0f} MB "
                f"-> {facts['rss_frozen_mb']:.0f} MB at the end of the freeze"
            )
        if "keys" not in skip:
            latencies = key_latency(args, tmp)
            figures, p95 = percentiles_text(latencies)
            print(
                f"key press -> screen, a script at 0 workers (GIL-heavy), {len(latencies)} presses: "
                f"{figures} (goal p95 < 50 ms) {'OK' if p95 < 50 else 'MISSED'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
