"""Where runs listen: a per-user directory of Unix sockets (mode 0700, sockets 0600), and finding them.

``$XDG_RUNTIME_DIR/loadertop`` where the session has one, else ``$TMPDIR/loadertop-<uid>``.
A run's socket is ``<pid>.sock`` (the pid of the process that serves it) and its script's
output, under ``loadertop run``, ``<pid>.log`` beside it. A socket nobody answers on (its run
was killed) is stale: ``live_runs`` removes it.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadertop.core.protocol.codec import MAX_LINE_BYTES, LineReader
from loadertop.core.protocol.messages import SERVER_TYPES, Hello, MessageError, MessageType

HELLO_TIMEOUT_S = 2.0


class RuntimeDirError(RuntimeError):
    """The per-user directory cannot be used safely (one line for the user)."""


def runtime_dir(*, create: bool = True) -> Path:
    """The per-user directory for sockets, created 0700 and checked to be the user's alone."""
    base = os.environ.get("LOADERTOP_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR") and os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "loadertop"
    else:
        path = Path(tempfile.gettempdir()) / f"loadertop-{os.getuid()}"
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create {path}: {exc.strerror}; set LOADERTOP_RUNTIME_DIR") from exc
    if path.exists():
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise RuntimeDirError(f"{path} is not a directory of this user's; set LOADERTOP_RUNTIME_DIR")
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)
    return path


def run_socket_path(pid: int | None = None) -> Path:
    """The socket of the run served by ``pid`` (default: this process)."""
    return runtime_dir() / f"{os.getpid() if pid is None else pid}.sock"


def listen(path: Path) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path``, mode 0600 (a stale file there is replaced)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment where another user could connect
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.listen(8)
    server.setblocking(False)
    return server


@dataclass(frozen=True)
class RunInfo:
    """A live run as its hello describes it.

    Attributes:
        socket_path: where it listens.
        pid: the process that serves it (the script).
        command: the command line it was started with.
        started: UNIX time it started.
        log_path: the file its output goes to (None: a terminal).
        rank, local_rank, world_size, local_world_size, node_rank: its place in a torchrun job (None outside one).
    """

    socket_path: Path
    pid: int
    command: tuple[str, ...]
    started: float
    log_path: str | None
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    node_rank: int | None = None


def read_hello(path: Path, timeout_s: float = HELLO_TIMEOUT_S) -> RunInfo | None:
    """Connect to ``path`` and read the run's hello; None when nobody answers (stale)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout_s)
    try:
        client.connect(str(path))
        reader = LineReader(known=SERVER_TYPES)
        received = 0
        while received < MAX_LINE_BYTES:
            data = client.recv(4096)
            if not data:
                return None
            received += len(data)
            for message in reader.feed(data):
                if message["type"] == MessageType.HELLO:
                    hello = Hello.from_wire(message)
                    return RunInfo(
                        path,
                        hello.pid,
                        hello.command,
                        hello.started or 0.0,
                        hello.log,
                        hello.rank,
                        hello.local_rank,
                        hello.world_size,
                        hello.local_world_size,
                        hello.node_rank,
                    )
        return None
    except (OSError, MessageError):
        return None
    finally:
        client.close()


def _refused(path: Path) -> bool:
    """Whether nobody listens on ``path`` (a socket file left behind)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(HELLO_TIMEOUT_S)
    try:
        client.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        client.close()
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_runs(*, remove_stale: bool = True) -> list[RunInfo]:
    """Every run of this user's that answers, oldest first; sockets of dead runs are removed."""
    directory = runtime_dir(create=False)
    if not directory.is_dir():
        return []
    runs = []
    for path in sorted(directory.glob("*.sock")):
        stem = path.stem
        pid = int(stem) if stem.isdigit() else None
        alive = pid is None or _alive(pid)
        info = read_hello(path) if alive else None
        if info is None:
            # Stale: its process is gone, or nobody listens (the pid was reused). A live run that did not
            # answer in time (busy starting) keeps its socket: it is only left out of this listing.
            if remove_stale and (not alive or _refused(path)):
                path.unlink(missing_ok=True)
            continue
        runs.append(info)
    return sorted(runs, key=lambda r: r.started)


def describe(info: RunInfo) -> str:
    """``pid 1234: python train.py (started 12:03:04)``."""
    import time

    when = time.strftime("%H:%M:%S", time.localtime(info.started)) if info.started else "?"
    return f"pid {info.pid}: {' '.join(info.command) or '?'} (started {when})"
