"""``loadertop sweep``: each worker count in turn on one run of the built-in training, then the table, the advice
and the files asked for (--json, --csv, --markdown)."""

from __future__ import annotations

import argparse
import sys

from loadertop.cli.parser import UsageError
from loadertop.cli.training import build_trainer, check_start_method, chosen_workload, loader_config, open_output

SWEEP_EPOCHS = 1_000_000  # a sweep ends when its last count is measured, not by epochs


def command(args: argparse.Namespace) -> int:
    """``loadertop sweep``: each count in turn on one run, then the table, the advice and the files asked for."""
    from loadertop.cli.headless import run_sweep_headless
    from loadertop.core.drive.sweep import Sweep
    from loadertop.core.policy.advice import default_counts, machine_facts
    from loadertop.core.policy.report import csv_text, dumps, markdown_table, report_json

    machine = machine_facts()
    counts = args.counts or default_counts(machine.core_count)
    # Settings that need workers are checked against the largest count, the ones that have them.
    config = loader_config(args, max(counts)).with_workers(counts[0])
    outputs = {
        option: path
        for option, path in (("--json", args.json), ("--csv", args.csv), ("--markdown", args.markdown))
        if path
    }
    if list(outputs.values()).count("-") > 1:
        raise UsageError("only one of --json, --csv and --markdown can write to stdout ('-')")
    files = {option: open_output(path, option) for option, path in outputs.items()}
    to_stdout = "-" in outputs.values()
    try:
        workload = chosen_workload(args)
        check_start_method(workload, config.with_workers(max(counts)))
        trainer = build_trainer(args, workload, config, epochs=SWEEP_EPOCHS, max_batches=None)
        sweep = Sweep(trainer, counts, args.batches, base=config)
        # With a format on stdout, the progress and the table go to stderr.
        code, rows, advice = run_sweep_headless(
            trainer, sweep, sample_interval_s=args.sample_interval, out=sys.stderr if to_stdout else sys.stdout
        )
        if rows:
            meta = {
                "workload": workload.name,
                "device": trainer.status().device,
                "batch_size": config.batch_size,
                "batches_per_count": args.batches,
                "counts": list(counts),
                "measured_longer": list(sweep.counts[sweep.planned :]),
                "complete": code == 0,
                "cpu_accounting": trainer.cpu_clock.mode,
                "cpu_s_before_first_config": trainer.store.cpu_before_first_config_s,
            }
            writers = {
                "--json": lambda: dumps(report_json(rows, advice, machine, stages=trainer.stages(), **meta)),
                "--csv": lambda: csv_text(rows, advice),
                "--markdown": lambda: markdown_table(rows, advice),
            }
            for option, file in files.items():
                file.write(writers[option]())
                file.flush()
        return code
    finally:
        for file in files.values():
            if file is not sys.stdout:
                file.close()
