"""The built-in training from the options, for ``loadertop run`` and ``loadertop sweep``: the loader's settings, the
workload, the ``Trainer``, and the files they write; each refusal a ``UsageError``. torch is imported only when
one is built."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from loadertop.cli.parser import UsageError

if TYPE_CHECKING:
    from loadertop.core.protocol.config import LoaderConfig
    from loadertop.core.train.engine import Trainer
    from loadertop.core.train.workload import Workload


def loader_config(args: argparse.Namespace, num_workers: int) -> LoaderConfig:
    """The loader's settings the options give, with ``num_workers``; checked, and the device too."""
    from loadertop.core.protocol.config import ConfigError, LoaderConfig
    from loadertop.core.train.engine import resolve_device

    config = LoaderConfig(
        num_workers=num_workers,
        batch_size=args.batch_size,
        pin_memory=args.pin_memory,
        persistent_workers=args.persistent_workers,
        prefetch_factor=args.prefetch_factor,
        start_method=args.start_method,
        timeout_s=args.timeout,
    )
    try:
        config.validate_strict()
        resolve_device(args.device)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return config


def chosen_workload(args: argparse.Namespace) -> Workload:
    """The --workload factory's, the --dataset's or the built-in workload (its images written once, said on stderr)."""
    from loadertop.core.train.workload import WorkloadError, load_workload

    if args.workload is not None and args.dataset is not None:
        raise UsageError("choose --workload or --dataset, not both")
    if (args.workload is not None or args.dataset is not None) and args.io_latency_ms:
        raise UsageError("--io-latency-ms applies to the built-in workload only")
    if args.workload is not None:
        try:
            workload = load_workload(args.workload, data_dir=args.data)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None
    elif args.dataset is not None:
        from loadertop.core.train.datasets import make_dataset_workload

        try:
            workload = make_dataset_workload(args.dataset, args.data, seed=args.seed)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None
    else:
        from loadertop.core.train.builtin import MARKER, default_data_dir, make_workload

        root = Path(args.data).expanduser() if args.data is not None else default_data_dir(args.seed)
        if not (root / MARKER).exists():
            print(f"loadertop: writing the built-in images (once) to {root} ...", file=sys.stderr, flush=True)
        try:
            workload = make_workload(seed=args.seed, data_dir=args.data, io_latency_ms=args.io_latency_ms)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if args.threads is not None:
        workload.num_threads = args.threads
    return workload


def check_start_method(workload: Workload, config: LoaderConfig) -> None:
    """spawn/forkserver workers get a pickled dataset: refuse one that cannot be, before training."""
    from loadertop.core.train.workload import WorkloadError, check_picklable

    if config.num_workers:
        try:
            check_picklable(workload, config)
        except WorkloadError as exc:
            raise UsageError(str(exc)) from None


def build_trainer(
    args: argparse.Namespace,
    workload: Workload,
    config: LoaderConfig,
    *,
    epochs: int,
    max_batches: int | None,
    stall_timeout_s: float = 0.0,
) -> Trainer:
    """The built-in ``Trainer`` of ``workload`` with ``config``, on --device, seeded by --seed, --on-nan's way."""
    from loadertop.core.train.engine import Trainer
    from loadertop.core.train.workload import WorkloadError

    try:
        trainer = Trainer(
            workload,
            config,
            epochs=epochs,
            max_batches=max_batches,
            device=args.device,
            seed=args.seed,
            on_nan=args.on_nan,
            stall_timeout_s=stall_timeout_s,
        )
        trainer.time_stages = not getattr(args, "no_stages", False)
        return trainer
    except (WorkloadError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def open_output(path: str, option: str) -> IO[str]:
    """``path`` opened for writing ('-' is stdout); a one-line usage error when it cannot be."""
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
