"""Loader configuration: the knobs a hot restart may change, validated with clear messages."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

START_METHODS = ("fork", "spawn", "forkserver")

WORKERS_ONLY: dict[str, Any] = {
    "prefetch_factor": None,
    "persistent_workers": False,
    "multiprocessing_context": None,
    "timeout": 0,
}
"""The DataLoader settings torch refuses at 0 workers (its argument names), each with the neutral value it takes
there: the one list of them (``LoaderConfig.validate`` says the same of the command line's flags)."""


def available_start_methods() -> tuple[str, ...]:
    """The multiprocessing start methods this platform offers, in START_METHODS order."""
    import multiprocessing

    offered = set(multiprocessing.get_all_start_methods())
    return tuple(m for m in START_METHODS if m in offered)


class ConfigError(ValueError):
    """A loader setting that cannot work; the message says what to change."""


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    """The DataLoader settings loadertop varies between (re)starts.

    Attributes:
        num_workers: worker processes; 0 loads in the training thread itself.
        batch_size: samples per batch.
        pin_memory: page-locked host memory for faster host-to-GPU copies (CUDA only).
        persistent_workers: keep the workers alive across epochs.
        prefetch_factor: batches loaded in advance by each worker (None: PyTorch's default, 2).
        start_method: how workers start: ``fork``, ``spawn`` or ``forkserver`` (None: the platform's default).
        timeout_s: the longest wait for a batch from the workers before failing (0: wait forever).
    """

    num_workers: int = 0
    batch_size: int = 32
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    start_method: str | None = None
    timeout_s: float = 0.0

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
            raise ConfigError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.prefetch_factor is not None and (
            isinstance(self.prefetch_factor, bool)
            or not isinstance(self.prefetch_factor, int)
            or self.prefetch_factor < 1
        ):
            raise ConfigError(f"prefetch factor must be an integer >= 1, got {self.prefetch_factor!r}")
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise ConfigError(f"start method must be one of {', '.join(START_METHODS)}, got {self.start_method!r}")
        if self.start_method is not None and self.start_method not in available_start_methods():
            raise ConfigError(
                f"start method {self.start_method!r} is not available on this platform "
                f"(available: {', '.join(available_start_methods())})"
            )
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s >= 0:
            raise ConfigError(f"timeout must be a number of seconds >= 0, got {self.timeout_s!r}")

    def validate_strict(self) -> None:
        """Like validate, and also refuse settings that only apply with workers.

        Used for what the user typed: PyTorch rejects prefetch_factor and
        persistent_workers when num_workers is 0, and so do we, in words.
        """
        self.validate()
        if self.num_workers == 0 and self.prefetch_factor is not None:
            raise ConfigError("--prefetch-factor needs --workers 1 or more (with 0 workers nothing is prefetched)")
        if self.num_workers == 0 and self.persistent_workers:
            raise ConfigError("--persistent-workers needs --workers 1 or more (with 0 workers there are none to keep)")
        if self.num_workers == 0 and self.start_method is not None:
            raise ConfigError("--start-method needs --workers 1 or more (with 0 workers no process is started)")
        if self.num_workers == 0 and self.timeout_s:
            raise ConfigError("--timeout needs --workers 1 or more (with 0 workers the step loads the batch itself)")

    def with_workers(self, num_workers: int) -> LoaderConfig:
        """A copy with another worker count."""
        return replace(self, num_workers=num_workers)

    def loader_kwargs(self, *, pin_memory_allowed: bool) -> dict[str, Any]:
        """Keyword arguments for torch.utils.data.DataLoader.

        Settings that only apply with workers are dropped at 0 workers, so that a
        hot restart to 0 workers keeps working whatever else was chosen.
        """
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "pin_memory": self.pin_memory and pin_memory_allowed,
        }
        if self.num_workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
            if self.start_method is not None:
                kwargs["multiprocessing_context"] = self.start_method
            if self.timeout_s:
                kwargs["timeout"] = float(self.timeout_s)
        return kwargs

    def _labels(self) -> list[tuple[str, str]]:
        """(short, long) labels of every setting that is in effect."""
        labels = [
            (f"w{self.num_workers}", describe_workers(self.num_workers)),
            (f"b{self.batch_size}", f"batch {self.batch_size}"),
        ]
        if self.pin_memory:
            labels.append(("pin", "pin_memory"))
        if self.persistent_workers and self.num_workers > 0:
            labels.append(("persist", "persistent"))
        if self.prefetch_factor is not None and self.num_workers > 0:
            labels.append((f"pf{self.prefetch_factor}", f"prefetch {self.prefetch_factor}"))
        if self.start_method is not None and self.num_workers > 0:
            labels.append((self.start_method, self.start_method))
        if self.timeout_s and self.num_workers > 0:
            labels.append((f"t{self.timeout_s:g}", f"timeout {self.timeout_s:g} s"))
        return labels

    @property
    def key(self) -> str:
        """A short, stable label naming this configuration, e.g. ``w2 b32``."""
        return " ".join(short for short, _ in self._labels())

    def describe(self) -> str:
        """A readable one-line description, e.g. ``2 workers, batch 32``."""
        return ", ".join(long for _, long in self._labels())


def describe_workers(n: int) -> str:
    """``1 worker``, ``N workers``."""
    return "1 worker" if n == 1 else f"{n} workers"
