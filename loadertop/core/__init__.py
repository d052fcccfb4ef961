"""The headless half of loadertop: engine, metrics and workloads. Never imports textual or rich."""
