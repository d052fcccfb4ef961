"""Example workloads: ``loadertop --workload examples.NAME:make_workload`` from the project root."""
