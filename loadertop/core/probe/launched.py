"""Inside a script that ``loadertop run -- COMMAND`` started: every DataLoader becomes loadertop's.

The launcher puts ``bootstrap/`` on the script's PYTHONPATH and its settings in the
``LOADERTOP_PROBE`` environment variable. ``bootstrap/sitecustomize.py`` calls
``install_from_environment``, which waits for the script to import torch (nothing is imported
before: a script that never imports torch runs as it would) and then makes
``torch.utils.data.DataLoader`` loadertop's drop-in class. The first process of the run that
imports torch claims it (the script, not a spawned DataLoader worker); under torchrun each rank
claims its own (torchrun's process none). There ``--workers`` sets every loader's worker count,
``--switch`` changes the training loader's (the first one created, or the one a framework's
trainer marks: ``loadertop.integrations``, injected once the framework is imported) after the
batches named, and each batch goes to ``--record``, the monitors' socket and loadertop's lines
on stderr through a bounded queue and a writer thread (``publisher``): the loop never waits on
the writing.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

from loadertop.core.probe.publisher import Publisher, batch_size_of, describe_workers, say_on_stderr
from loadertop.core.protocol.environment import ENV, ProbeSettings, rank_of_process
from loadertop.core.protocol.messages import AutotuneStatus, Hello, MessageError, Peer, TunerState

_run: LaunchedRun | None = None  # the run this process acts for, once it claimed it


def current_run() -> LaunchedRun | None:
    """The run this process acts for under ``loadertop run`` (None otherwise, and in DataLoader workers)."""
    return _run


def log(**metrics: Any) -> None:
    """Record metrics (``loss=...``) for the training loader's latest batch; nothing outside ``loadertop run``.

    Tensors are detached and read by loadertop's writer thread, never here: the training thread
    is not made to wait for the device. In ``--record`` each call is a line ``{"event": "log",
    "loader": ..., "step": ..., "loss": ...}``; the epoch lines show the mean loss.
    """
    run = _run
    if run is not None:
        run.log(metrics)


def log_at(step: int, **metrics: Any) -> None:
    """``log`` for the training loader's batch ``step`` (1-based, over the run), not its latest: for
    integrations with frameworks that fetch batches ahead of the step they report."""
    run = _run
    if run is not None:
        run.log_at(step, metrics)


def install_from_environment() -> None:
    """Instrument torch's DataLoader as soon as the script imports torch (from sitecustomize)."""
    settings = ProbeSettings.from_environment(os.environ[ENV])
    _after_import("torch", lambda _module: _instrument(settings))


def watch_this_process() -> LaunchedRun | None:
    """Watch this process's DataLoaders without the launcher, as ``loadertop run`` would (for a framework
    callback that a script added itself): every DataLoader made from now on is loadertop's, and monitors
    can attach (``loadertop attach``) and switch them. The run, once started; None under the launcher
    (in a process that did not claim the launched run: a DataLoader worker, a spawned child).
    """
    if _run is None and ENV not in os.environ:
        _instrument(ProbeSettings(command=tuple(getattr(sys, "orig_argv", sys.argv))))
        if _run is not None and _run.server is not None:
            _run._say(f"watching this process's DataLoaders: `loadertop attach {os.getpid()}` from another terminal")
    return _run


def _instrument(settings: ProbeSettings) -> None:
    import torch.utils.data

    from loadertop.core.probe.loader import DataLoader

    global _run
    torch.utils.data.DataLoader = DataLoader  # type: ignore[misc]
    if _claim(settings.claim):
        _run = LaunchedRun(settings)
        DataLoader.creation_hook = _run
        for name in FRAMEWORKS:  # their trainers get loadertop's callback, once imported
            _after_import(name, _framework_imported)


TUNING_STATUS_S = 0.5
"""How often the writer looks whether the autotuner's status changed (to publish it)."""

FRAMEWORKS = {"lightning.pytorch.trainer.trainer": "lightning", "pytorch_lightning.trainer.trainer": "lightning",
              "transformers.trainer": "transformers", "lightning.pytorch": None, "pytorch_lightning": None}
"""The modules of the trainers the launcher gives its callback, each with its plugin: the module of
``loadertop.integrations`` found by that name, imported only once the framework is, never by this module
itself. A trainer's module rather than its package, which may be still importing when torch is
(``pytorch_lightning`` imports torch first); the Lightning packages themselves (no plugin) only to say,
once imported, when they have no Trainer to hook into."""


def _after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Run ``then(module)`` once module ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def _framework_imported(module: ModuleType) -> None:
    """A framework's trainer module is loaded: every trainer it makes gets loadertop's callback.

    A version loadertop cannot hook into is said in one line; its loaders are still watched.
    """
    try:
        plugin = FRAMEWORKS[module.__name__]
        if plugin is None:
            module.Trainer  # noqa: B018 - a version without one: said below, in one line
        else:
            importlib.import_module(f"loadertop.integrations.{plugin}").inject(module)
    except Exception as exc:  # noqa: BLE001 - the script must run whatever the framework's version
        package = module.__name__.split(".")[0]
        version = getattr(sys.modules.get(package), "__version__", "of unknown version")
        say_on_stderr(f"cannot add loadertop's callback to {package} {version} ({type(exc).__name__}: {exc}): its "
                      "DataLoaders are still watched and switched, but not told apart nor given its loss")


def _is_distributed_launcher() -> bool:
    """torchrun (or ``python -m torch.distributed.run``/``launch``) itself: it starts the ranks, trains nothing.

    Under ``-m`` torch is imported while runpy still looks for the module, before ``sys.argv[0]``
    names it: the interpreter's own command line (``sys.orig_argv``) says which module it runs.
    """
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "torchrun":
        return True
    parts = os.path.normpath(program).split(os.sep)
    if parts[-3:] in (["torch", "distributed", "run.py"], ["torch", "distributed", "launch.py"]):
        return True
    line = list(getattr(sys, "orig_argv", ()))
    return any(line[i] == "-m" and line[i + 1] in ("torch.distributed.run", "torch.distributed.launch")
               for i in range(len(line) - 1))


def _claim(path: str | None) -> bool:
    """Be the process of the run that acts on its loaders: the first to get here (atomic create).

    Under torchrun each rank is one (its claim is its rank's), and torchrun's own process is none.
    """
    if _is_distributed_launcher():
        return False
    rank = rank_of_process()
    if path is None:
        return True
    if rank is not None:
        path = f"{path}.rank{rank.rank}"
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return False
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` once module ``name`` has been imported, without changing how it is found."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then
        self._finding = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """A module loader that calls ``then(module)`` after the module ran; everything else is the original's."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._then(module)
        except Exception as exc:  # noqa: BLE001 - the script must run even when loadertop cannot watch it
            print(f"loadertop: cannot instrument DataLoaders ({type(exc).__name__}: {exc}); the script runs "
                  "unwatched", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class LaunchedRun(Publisher):
    """The creation hook of a launched script: its settings applied, every loader published (see ``Publisher``)."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.rank = rank_of_process()
        hello = Hello(pid=os.getpid(), command=tuple(settings.command) or tuple(sys.argv), cwd=os.getcwd(),
                      started=time.time(), log=settings.log)
        say = say_on_stderr
        if self.rank is not None:
            hello = replace(hello, rank=self.rank.rank, local_rank=self.rank.local_rank,
                            world_size=self.rank.world_size, local_world_size=self.rank.local_world_size,
                            node_rank=self.rank.node_rank)
            prefix = f"rank {self.rank.rank}: "

            def say(text: str) -> None:
                say_on_stderr(prefix + text)

        self._peers: Any = None
        self._next_peer = 0.0
        self._peer_refused = False  # said once: a summary of another node's that is not a peer message
        if self.rank is not None and self.rank.world_size > self.rank.local_world_size:  # ranks on other nodes
            from loadertop.core.probe.peers import PeerExchange

            self._peers = PeerExchange(rank=self.rank.rank, local_rank=self.rank.local_rank,
                                       node_rank=self.rank.node_rank, world_size=self.rank.world_size)
        self.tuning: Any = None  # a LoaderTuning once autotune is first asked for (--autotune, a monitor, "auto")
        self._tuning_lock = threading.Lock()
        self._tuning_published: AutotuneStatus | None = None
        self._next_tuning = 0.0
        super().__init__(hello=hello, record=settings.record, serve=settings.serve, say=say,
                         rank=self.rank.rank if self.rank is not None else None)
        if self.server is not None:
            self.server.on_autotune = self._autotune_request
        if settings.autotune:
            self.set_autotune(True, why="--autotune")
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self.close)

    # ------------------------------------------------------------ autotune

    def set_autotune(self, enabled: bool, *, why: str) -> str | None:
        """Tune the training loader's workers (from its running count), or stop (the count stays).

        ``why`` says who asked, in the line said. Returns the reason when it cannot (no CPU clock).
        """
        tuning = self._tuning()
        if tuning is None:
            return "this run cannot read its CPU (psutil): no autotune"
        if enabled == tuning.enabled:
            return None
        if enabled:
            from loadertop.core.probe.autotune_host import describe_budget

            ranks = self.rank.local_world_size if self.rank is not None else 1
            self._say(f"autotune on ({why}): the training loader's workers are tuned within "
                      f"{describe_budget(tuning.budget, ranks)}")
        else:
            self._say(f"autotune off ({why}): the workers stay as they are")
        tuning.set_enabled(enabled)
        return None

    def _tuning(self) -> Any:
        """The run's tuner, made on first use (None where the tree's CPU cannot be read)."""
        with self._tuning_lock:
            if self.tuning is None and self._clock is not None:
                from loadertop.core.probe.autotune_host import default_budget
                from loadertop.core.probe.tuning import LoaderTuning

                ranks = self.rank.local_world_size if self.rank is not None else 1
                budget = default_budget(cores=self.settings.cpu_budget, memory_gib=self.settings.memory_budget_gib,
                                        ranks_on_node=ranks)
                self.tuning = LoaderTuning(budget=budget, clock=self._clock, on_change=self.autotune,
                                           on_thread=lambda thread_id: self.exclude_threads([thread_id]))
                if self.training is not None:
                    self._follow(self.training)
            return self.tuning

    def _follow(self, loader: Any) -> None:
        """The tuner follows the training loader (a framework may mark another later)."""
        tuning = self.tuning
        if tuning is None or tuning.loader is loader:
            return
        tuning.follow(loader)
        if not loader.continues_exactly:
            said = f"autotune: {loader.name} is an IterableDataset (or in_order=False): its changes apply at epoch ends"
            self._put(("say", said))

    def _autotune_request(self, enabled: bool) -> str | None:
        """A monitor's ``autotune`` message (the server's thread)."""
        return self.set_autotune(enabled, why="the monitor")

    def _publish_tuning(self) -> None:
        """The tuner's status to the monitors when it changed, looked at twice a second (the writer thread;
        the server keeps the latest for monitors that attach later)."""
        if time.monotonic() < self._next_tuning:
            return
        self._next_tuning = time.monotonic() + TUNING_STATUS_S
        tuning = self.tuning
        if tuning is not None:
            try:
                status = tuning.status_message()
            except Exception:  # noqa: BLE001 - read while the tuner's thread changes it: next time
                return
        else:
            training = self.training
            status = AutotuneStatus(loader=training.name if training is not None else None, state=TunerState.OFF)
        if status != self._tuning_published:
            self._tuning_published = status
            self._publish(status)

    # ---------------------------------------------------------------- hook

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``--workers`` replaces the script's count; settings that need workers are dropped at 0."""
        workers = self.settings.workers
        if workers is None:
            return arguments
        arguments = dict(arguments, num_workers=workers)
        if workers == 0:
            for name, neutral in (("prefetch_factor", None), ("persistent_workers", False),
                                  ("multiprocessing_context", None), ("timeout", 0)):
                if name in arguments:
                    arguments[name] = neutral
        return arguments

    def created(self, loader: Any) -> None:
        """Watch ``loader``; the training loader that ``--switch`` addresses is the first one created, or
        the one a framework marks (Lightning's, from ``trainer.train_dataloader``)."""
        again = self._made_again(loader)
        if again is not None:  # the same loader made anew: it goes on under its name (and role)
            loader.name = again.name
        else:
            taken = {known.name for known in self.loaders}
            if loader.name in taken:  # made at the same line as another (a helper that makes every loader)
                loader.name = next(f"{loader.name}#{n}" for n in itertools.count(2)
                                   if f"{loader.name}#{n}" not in taken)
        self.watch(loader)
        if again is not None:
            return
        role = " (training: --switch applies to it)" if loader is self.training else ""
        self._say(f"DataLoader {loader.name}: {describe_workers(loader.num_workers)}, "
                  f"batch {batch_size_of(loader)}{role}")
        if getattr(loader, "auto_workers", False):  # num_workers="auto": the run's tuner, on the training loader
            if self.training is not None and loader is not self.training:
                self._say(f"DataLoader {loader.name}: num_workers='auto': the run tunes its training loader, "
                          f"{self.training.name}; this one keeps {describe_workers(loader.num_workers)}")
            else:
                self.set_autotune(True, why=f"{loader.name}: num_workers='auto'")

    def _made_again(self, loader: Any) -> Any:
        """The loader ``loader`` stands in for, if it is one made anew: over the same dataset as one not
        running, by a framework (accelerate wraps the Trainer's, Lightning re-creates one to inject a
        sampler) or at the same line (a loader made every epoch)."""
        for known in reversed(self.loaders):
            if known.dataset is loader.dataset and known._running() is None and (
                    loader.made_by_package or known.site == loader.site):
                return known
        return None

    def mark_training(self, loader: Any) -> None:
        """A framework marked ``loader`` as the training loader: say so, as for the first one created."""
        first = loader is not self.training
        super().mark_training(loader)
        self._follow(loader)
        if first and self.framework_marks_training:
            self._say(f"DataLoader {loader.name} is the training loader (--switch applies to it)")

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: Any) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, value, tb))
        self._put(("exception", text))
        self._previous_excepthook(kind, value, tb)

    # -------------------------------------------------------- loop thread

    def _on_batch(self, loader: Any, batch: Any, training: bool) -> None:
        super()._on_batch(loader, batch, training)
        tuning = self.tuning
        if training and tuning is not None:
            tuning.feed(batch)  # one append: the tuner's thread makes it an observation
        switches = self.settings.switches
        if not switches:  # the common case: nothing more to do on the loop's path
            return
        step = self._steps[loader.name]
        keys = [f"{loader.name}@{step}", str(step)] if training else [f"{loader.name}@{step}"]
        if self.rank is not None:  # this rank's own (--switch rankR:...) before every rank's
            keys = [f"rank{self.rank.rank}:{key}" for key in keys] + keys
        workers = next((switches[key] for key in keys if key in switches), None)
        if workers is not None:
            before = loader.num_workers  # the settings asked last (an overlapped switch still in progress: its)
            loader.switch(workers)
            self._put(("say", f"{loader.name}: switching {before} -> {describe_workers(workers)} after batch {step}"))

    def _tick(self) -> None:
        """Between the writer's bursts: the tuner's status when it changed; once a second under a multi-node
        torchrun, this rank's summary to the job's store and the others' to monitors."""
        self._publish_tuning()
        peers = self._peers
        if peers is None or time.monotonic() < self._next_peer:
            return
        from loadertop.core.probe.peers import PEER_INTERVAL_S

        self._next_peer = time.monotonic() + PEER_INTERVAL_S
        for name, workers in peers.take_switches():  # a monitor on another node switched this rank
            reason = self._switch_request(name, workers)
            if reason is not None:
                self._say(f"a switch through the job's store: {reason}")
        summary = self.recent_summary()
        if summary is not None:
            for peer in peers.exchange(summary):
                try:
                    self._publish(Peer.from_wire(peer))
                except MessageError as exc:  # another node's loadertop wrote it: it may be of another version
                    if not self._peer_refused:
                        self._peer_refused = True
                        self._say(f"a rank's summary in the job's store is not one this loadertop reads ({exc})")
        if peers.failed is not None:
            self._say(f"the job's c10d store cannot carry loadertop's summaries ({peers.failed}): monitors see "
                      "only this node's ranks")
            self._peers = None

    def own_rank(self) -> int | None:
        """This process's rank in its torchrun job (None outside one)."""
        return self.rank.rank if self.rank is not None else None

    def _relay_switch(self, rank: int, name: str | None, workers: int) -> str | None:
        """A monitor here switches rank ``rank`` of another node: the writer passes it on through the store."""
        if self._peers is None or self.rank is None or not 0 <= rank < self.rank.world_size:
            return super()._relay_switch(rank, name, workers)
        self._peers.ask_switch(rank, name, workers)
        self._put(("say", f"rank {rank} (another node): the monitor asks for {describe_workers(workers)}"))
        return None

    def _summary(self, sums: dict[tuple[str, int], list[float]]) -> None:
        super()._summary(sums)
        names = {loader.name for loader in self.loaders}
        for key in self.settings.switches:
            named = re.match(r"rank(\d+):", key)
            if named is not None:  # --switch rankR:...: one rank's
                number = int(named.group(1))
                if self.rank is None:
                    self._say(f"--switch {key}:{self.settings.switches[key]}: names rank {number} of a torchrun job, "
                              "but this script runs as one process (not under torchrun)")
                elif number >= self.rank.world_size and self.rank.rank == 0:
                    self._say(f"--switch {key}:{self.settings.switches[key]}: the job has no rank {number} (its "
                              f"ranks: 0 to {self.rank.world_size - 1})")
                if self.rank is None or number != self.rank.rank:
                    continue
            loader, _, _ = key[named.end() if named else 0:].rpartition("@")
            if loader and loader not in names:
                known = ", ".join(sorted(names)) or "none"
                self._say(f"--switch {key}:{self.settings.switches[key]}: the script created no DataLoader named "
                          f"{loader!r} (its loaders: {known})")

    def close(self) -> None:
        """Write what is queued and the summary (at the script's exit), then close the socket and the claim."""
        if self.tuning is not None:
            self.tuning.stop()
        super().close()
        if self.settings.claim:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.claim)
