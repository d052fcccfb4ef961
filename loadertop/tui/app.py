"""The loadertop monitor: pulls a ``SessionView`` a few times a second and sends key presses as commands."""

from __future__ import annotations

import asyncio
import signal
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Static

from loadertop.core.protocol.config import LoaderConfig
from loadertop.core.protocol.messages import TunerState
from loadertop.core.protocol.status import TrainerState
from loadertop.core.sessions.view import SessionLike, SessionView
from loadertop.tui.screens import ConfigForm, HelpScreen, SweepResult
from loadertop.tui.widgets import (
    AutotunePanel,
    ComparisonTable,
    CoreMeters,
    ErrorPanel,
    GpuPanel,
    LoadComputePanel,
    LogPanel,
    LossChart,
    PendingBar,
    RanksPanel,
    RunHeader,
    StagesPanel,
    ViewWidget,
    WorkersPanel,
)
from loadertop.tui.widgets.autotune import MIN_SCREEN_WIDTH as AUTOTUNE_MIN_WIDTH
from loadertop.tui.widgets.autotune import has_content as autotune_has_content
from loadertop.tui.widgets.pending import describe_change

MAX_WORKERS = 64
WORKER_KEYS = Binding.Group("±1 worker", compact=True)
"""+ and - share one place in the footer: room for every key at 80 columns."""
QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
STAGES_MIN_WIDTH = 110
"""From this many columns the stage panel is beside the charts unless t hides it; narrower, t shows it in the loss
chart's place."""


class LoaderTopApp(App[None]):
    """Watch training and change the DataLoader's workers without stopping the run.

    Args:
        session: the live ``Session`` (or a ``ReplaySession`` for tests and screenshots).
        refresh_hz: how often the screen pulls a new view.
        start_session: start the session when the app mounts (False when it already runs).
    """

    CSS_PATH = "loadertop.tcss"
    TITLE = "loadertop"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-tiny-w"), (60, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [(0, "-tiny-h"), (16, "-short"), (30, "-tall")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "plus,equals_sign",
            "more_workers",
            "+1 worker",
            key_display="+",
            id="more",
            tooltip="One worker more (pending until r)",
            group=WORKER_KEYS,
        ),
        Binding(
            "minus",
            "fewer_workers",
            "-1 worker",
            key_display="-",
            id="fewer",
            tooltip="One worker fewer (pending until r)",
            group=WORKER_KEYS,
        ),
        *[Binding(str(n), f"set_workers({n})", f"{n} workers", show=False) for n in range(10)],
        Binding("r", "apply", "apply", id="apply", tooltip="Hot-restart with the pending settings"),
        Binding("s", "sweep", "sweep", id="sweep", tooltip="Measure each worker count in turn, then recommend"),
        Binding(
            "a",
            "autotune",
            "autotune",
            id="autotune",
            tooltip="Autotune on/off: find and hold the best worker count while training runs",
        ),
        Binding("escape", "cancel_sweep", "cancel sweep", show=False),
        Binding(
            "t",
            "stages",
            "stages",
            id="stages",
            show=False,
            tooltip="Where a sample's time goes: show or hide the stage panel",
        ),
        Binding("p", "pause", "pause", id="pause", tooltip="Pause or resume training"),
        Binding("c", "settings", "settings", id="settings", tooltip="Batch size, pin_memory, persistence, prefetch"),
        Binding(
            "l",
            "next_loader",
            "next loader",
            id="loader",
            tooltip="A script's next DataLoader: shown, and what the keys switch",
        ),
        Binding("k", "next_rank", "next rank", id="rank", tooltip="Show and command a torchrun job's next rank"),
        Binding("A", "apply_all", "switch all ranks", id="apply-all", tooltip="Switch every rank to the pending count"),
        Binding(
            "d",
            "detach",
            "detach",
            id="detach",
            tooltip="Leave a script running and quit (loadertop attach watches it again)",
        ),
        Binding("question_mark", "help", "help", key_display="?", id="help", tooltip="Every key"),
        Binding("q", "quit", "quit", id="quit", tooltip="Stop training and quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    pending: reactive[LoaderConfig | None] = reactive(None)
    """The configuration ``r`` applies; changed by +/-, 0-9 and the settings form."""

    def __init__(self, session: SessionLike, *, refresh_hz: float = 4.0, start_session: bool = True) -> None:
        super().__init__()
        self.session = session
        self.refresh_hz = refresh_hz
        self.start_session = start_session
        self.latest: SessionView | None = None
        self._tick = 0
        self._sweep_state: str | None = None
        self._notice_seen = 0
        self._watching_script = False
        self._ranks_shown = False
        self._autotune_asked = False  # what a asked last, for sessions whose view cannot say
        self._stages_wanted: bool | None = None  # what t asked last (None: shown where there is room)

    def compose(self) -> ComposeResult:
        # Held by reference: queries go to the active screen, which may be the help or the form.
        self._pending_bar = PendingBar(id="pending")
        self._error_panel = ErrorPanel(id="error")
        self._autotune_panel = AutotunePanel(id="autotune")
        self._views: list[ViewWidget] = [
            RunHeader(id="header"),
            self._pending_bar,
            self._panel(LossChart(id="loss"), "loss & accuracy"),
            self._panel(LoadComputePanel(id="load"), "load vs compute (ms per batch)"),
            self._panel(StagesPanel(id="stages"), "where a sample's time goes (t)"),
            self._error_panel,
            self._panel(CoreMeters(id="cpu"), "CPU"),
            self._panel(GpuPanel(id="gpu"), "GPU"),
            self._panel(WorkersPanel(id="workers"), "processes"),
            self._panel(ComparisonTable(id="table"), "worker counts tried"),
            self._panel(self._autotune_panel, "predicted · autotune (a)"),
            self._panel(LogPanel(id="log"), "the script's output"),
            self._panel(RanksPanel(id="ranks"), "ranks (k: next rank, A: switch all)"),
        ]
        header, pending, loss, load, stages, error, cpu, gpu, workers, table, autotune, log, ranks = self._views
        with Vertical(id="main"):
            yield header
            yield pending
            with Horizontal(id="charts"):
                yield loss
                yield load
                yield stages
            yield error
            with Horizontal(id="system"):
                yield cpu
                yield gpu
                yield workers
            with Horizontal(id="comparison"):
                yield table
                yield autotune
            yield log
            yield ranks
        yield Static("terminal too small for loadertop: make it at least 60x16 (q quits)", id="too-small")
        yield Footer()

    @staticmethod
    def _panel(widget: ViewWidget, title: str) -> ViewWidget:
        widget.add_class("panel")
        widget.border_title = title
        return widget

    def on_mount(self) -> None:
        if self.start_session:
            self.session.start()
        self.refresh_view()
        self.set_interval(1 / self.refresh_hz, self.refresh_view, name="pull-view")
        try:
            loop = asyncio.get_running_loop()
            for sig in QUIT_SIGNALS:
                loop.add_signal_handler(sig, self._on_quit_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    def _on_quit_signal(self, signum: int) -> None:
        # SIGTERM, or SIGHUP when the SSH link drops: stop training first, then leave. A script
        # in a process of its own outlives a dropped link: it runs on, and loadertop attach finds it.
        detach = getattr(self.session, "detach", None)
        if signum == signal.SIGHUP and self._watching_script and detach is not None:
            detach()
        else:
            self.session.stop()
        self.exit(return_code=128 + signum)

    # ------------------------------------------------------------------ drawing

    def refresh_view(self, *, force: bool = False) -> None:
        """Pull the session's view and hand it to the panels it is news to (the only place views come from).

        Args:
            force: every panel redraws now (after a key press changed the session).
        """
        view = self.session.view()
        previous = self.latest
        self.latest = view
        self._tick += 1
        if self.pending is None or (previous is not None and self.pending == previous.status.config):
            self.pending = view.status.config  # untouched by the user: it follows what runs
        # The layout first (which panels a script, a built-in run or a torchrun job has), then the panels'
        # views: a frame never shows the new figures in the old layout.
        script = view.script
        if (script is not None) != self._watching_script:
            self._watching_script = script is not None
            self.screen_stack[0].set_class(self._watching_script, "-script")
            self.refresh_bindings()
            if self._watching_script:
                self.query_one("#log").border_title = f"the script's output ({script.log_path or 'its terminal'})"
        # Known once the run's hello arrives: another loadertop's built-in run has no output of its own.
        self.screen_stack[0].set_class(script is not None and script.builtin is not None, "-builtin-run")
        ranks_shown = script is not None and bool(script.ranks)
        if ranks_shown != self._ranks_shown:  # a torchrun job: its ranks side by side
            self._ranks_shown = ranks_shown
            self.screen_stack[0].set_class(ranks_shown, "-ranks")
            self.refresh_bindings()
        stages_shown = self._stages_shown(view)  # narrower than STAGES_MIN_WIDTH, in the loss chart's place
        self.screen_stack[0].set_class(stages_shown, "-stages")
        self.screen_stack[0].set_class(stages_shown and self.size.width < STAGES_MIN_WIDTH, "-stages-in-place")
        for widget in self._views:
            if force or widget.wants(view, self._tick):
                widget.view = view
        self._error_panel.set_class(view.status.error is not None, "-shown")
        self._autotune_panel.set_class(autotune_has_content(view) and self.size.width >= AUTOTUNE_MIN_WIDTH, "-shown")
        if script is not None and script.notice[0] != self._notice_seen:
            self._notice_seen = script.notice[0]
            refused = script.notice[1].startswith("refused")
            self.notify(script.notice[1], severity="warning" if refused else "information", timeout=4)
        sweep_state = view.sweep.state if view.sweep is not None else None
        if sweep_state != self._sweep_state:
            if sweep_state == "done" and self._sweep_state == "running":
                self._sweep_done(view)
            self._sweep_state = sweep_state

    def _stages_shown(self, view: SessionView) -> bool:
        """The stage panel: where the session has figures, beside the charts where there is room, or as t says."""
        if view.stages is None:
            return False
        return self._stages_wanted if self._stages_wanted is not None else self.size.width >= STAGES_MIN_WIDTH

    SCRIPT_ONLY: ClassVar[frozenset[str]] = frozenset({"next_loader", "detach"})
    BUILT_IN_ONLY: ClassVar[frozenset[str]] = frozenset({"sweep", "pause", "settings"})
    RANKS_ONLY: ClassVar[frozenset[str]] = frozenset({"next_rank", "apply_all"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer offers what works here: a script's loop is its own (no pause, sweep or settings)."""
        if action in self.RANKS_ONLY:
            return self._ranks_shown
        if action in self.SCRIPT_ONLY:
            return self._watching_script
        if action in self.BUILT_IN_ONLY:
            return not self._watching_script
        return True

    def watch_pending(self, pending: LoaderConfig | None) -> None:
        self._pending_bar.pending = pending

    # ------------------------------------------------------------------ actions

    def _set_pending_workers(self, workers: int) -> None:
        if self.pending is None:
            return
        self.pending = self.pending.with_workers(max(0, min(workers, MAX_WORKERS)))

    def action_more_workers(self) -> None:
        """One worker more in the pending configuration."""
        if self.pending is not None:
            self._set_pending_workers(self.pending.num_workers + 1)

    def action_fewer_workers(self) -> None:
        """One worker fewer in the pending configuration."""
        if self.pending is not None:
            self._set_pending_workers(self.pending.num_workers - 1)

    def action_set_workers(self, workers: int) -> None:
        """Set the pending worker count."""
        self._set_pending_workers(workers)

    def action_apply(self) -> None:
        """Hot-restart with the pending configuration (or train again once the run has ended)."""
        view = self.latest
        pending = self.pending
        if view is None or pending is None:
            return
        status = view.status
        if not status.state.is_done and pending == status.config and status.pending is None:
            self.notify("nothing to apply: change the workers with +/- or 0-9, the rest with c", timeout=3)
            return
        try:
            self.session.apply(pending)
        except (RuntimeError, ValueError) as exc:
            self.notify(str(exc), severity="error", timeout=6)
            return
        tuning = view.autotune is not None and view.autotune.state != TunerState.OFF
        if status.state.is_done:
            self.notify(f"training again with {pending.describe()}", timeout=3)
        elif tuning and pending.num_workers != status.config.num_workers:
            self.notify(
                f"hot-restart: {describe_change(status.config, pending)}; autotune starts over from "
                f"{pending.num_workers}",
                timeout=3,
            )
        else:
            self.notify(f"hot-restart: {describe_change(status.config, pending)}", timeout=3)
        self.refresh_view(force=True)

    def action_pause(self) -> None:
        """Pause or resume training."""
        view = self.latest
        if view is None:
            return
        state = view.status.state
        try:
            if state.is_done:
                self.notify(f"the run has {state.value}: r trains again", timeout=3)
            elif state is TrainerState.PAUSED:
                self.session.resume()
            else:
                self.session.pause()
        except RuntimeError as exc:
            self.notify(str(exc), severity="warning", timeout=4)
            return
        self.refresh_view(force=True)

    def action_settings(self) -> None:
        """Open the form for the other loader settings."""
        if self.pending is None:
            return
        note = "" if self.latest is None or self.latest.status.device.startswith("cuda") else " (CUDA only)"

        def done(config: LoaderConfig | None) -> None:
            if config is not None:
                self.pending = config

        self.push_screen(ConfigForm(self.pending, pin_memory_note=note), done)

    def action_sweep(self) -> None:
        """Measure each worker count in turn; at the end, offer the recommended one."""
        view = self.latest
        if view is not None and view.sweep is not None and view.sweep.state == "running":
            self.notify("a sweep is running: Esc cancels it", timeout=3)
            return
        try:
            self.session.start_sweep()
        except (RuntimeError, ValueError) as exc:
            self.notify(str(exc), severity="error", timeout=6)
            return
        self.refresh_view(force=True)
        sweep = self.latest.sweep if self.latest is not None else None
        if sweep is not None:
            counts = ", ".join(map(str, sweep.counts))
            self.notify(f"sweep: {counts} workers, {sweep.batches_per_count} batches each; Esc cancels", timeout=4)

    def action_cancel_sweep(self) -> None:
        """Cancel a running sweep; what was measured stays in the table."""
        view = self.latest
        if view is None or view.sweep is None or view.sweep.state != "running":
            return
        self.session.cancel_sweep()
        self.notify("sweep cancelled: the table keeps what was measured", timeout=3)
        self.refresh_view(force=True)

    def action_autotune(self) -> None:
        """Turn autotune on (tuning from the running count) or off (the count stays)."""
        view = self.latest
        tuner = view.autotune if view is not None else None
        on = tuner.state != TunerState.OFF if tuner is not None else self._autotune_asked
        set_autotune = getattr(self.session, "set_autotune", None)
        if set_autotune is None:
            self.notify(
                "this session cannot tune its workers (a recording, or a monitor without autotune)",
                severity="warning",
                timeout=4,
            )
            return
        try:
            set_autotune(not on)
        except (RuntimeError, ValueError) as exc:
            self.notify(str(exc), severity="warning", timeout=6)
            return
        self._autotune_asked = not on
        workers = view.status.config.num_workers if view is not None else None
        if on:
            self.notify("autotune off" + (f": the count stays at {workers}" if workers is not None else ""), timeout=3)
        else:
            count = "the running count" if workers is None else f"{workers} worker{'s' if workers != 1 else ''}"
            self.notify(
                f"autotune on: measuring {count}, then the model's pick; each change and why beside the table",
                timeout=4,
            )
        self.refresh_view(force=True)

    def action_stages(self) -> None:
        """Show or hide the stage panel (narrower than ``STAGES_MIN_WIDTH``, it takes the loss chart's place)."""
        view = self.latest
        if view is None or view.stages is None:
            self.notify("no stage figures in this session (a recording made before stage timing)", timeout=3)
            return
        self._stages_wanted = not self._stages_shown(view)
        self.refresh_view(force=True)

    def _sweep_done(self, view: SessionView) -> None:
        advice = view.advice
        if advice is None or advice.recommended is None:
            self.notify("sweep done: not enough batches to recommend a count", timeout=5)
            return
        recommended = advice.recommended.config
        self.pending = recommended

        def adopt(yes: bool | None) -> None:
            if yes and self.latest is not None and recommended != self.latest.status.config:
                self.action_apply()

        self.push_screen(SweepResult(advice, recommended, view.status.config), adopt)

    def action_next_loader(self) -> None:
        """Show and command a script's next DataLoader."""
        self._show_next(
            "select_next_loader",
            "one loader only: l goes through a script's DataLoaders",
            "showing {}: the keys now switch it",
        )

    def action_next_rank(self) -> None:
        """Show and command a torchrun job's next rank."""
        self._show_next(
            "select_next_rank",
            "one process only: k goes through a torchrun job's ranks",
            "showing rank {}: the keys now switch it (A: every rank)",
        )

    def _show_next(self, method: str, none: str, shown: str) -> None:
        """Ask the session to show its next loader or rank; say which (or why there is no other)."""
        select = getattr(self.session, method, None)
        chosen = select() if select is not None and self._watching_script else None
        if chosen is None:
            self.notify(none, timeout=3)
            return
        self.pending = None  # the next view brings its configuration
        self.refresh_view(force=True)
        self.notify(shown.format(chosen), timeout=3)

    def action_apply_all(self) -> None:
        """Switch every rank of a torchrun job to the pending worker count."""
        apply_all = getattr(self.session, "apply_all", None)
        if apply_all is None or self.pending is None:
            return
        try:
            apply_all(self.pending)
        except (RuntimeError, ValueError) as exc:
            self.notify(str(exc), severity="warning", timeout=4)
            return
        self.notify(f"every rank: switching to {self.pending.num_workers} workers", timeout=3)

    def action_detach(self) -> None:
        """Leave a watched script running and quit."""
        detach = getattr(self.session, "detach", None)
        if detach is None or not self._watching_script:
            self.notify("the built-in workload trains in this process: q stops it (d detaches from scripts)", timeout=4)
            return
        detach()
        self.exit()

    def action_help(self) -> None:
        """Show every key."""
        script = self.latest.script if self.latest is not None else None
        self.push_screen(
            HelpScreen(log_path=script.log_path if script is not None else None, script=script is not None)
        )

    async def action_quit(self) -> None:
        """Stop training (the caller waits for the workers) and leave."""
        self.session.stop()
        self.exit()
