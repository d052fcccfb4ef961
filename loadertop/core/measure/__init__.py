"""What is measured of a run and its machine: the process tree's CPU-seconds and memory (PSS/USS), system
sampling (cores, /dev/shm, NVML), container limits, and the store of batches and their summaries. No torch."""
