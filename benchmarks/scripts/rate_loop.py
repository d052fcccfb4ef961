"""A benchmark's training script: counts its samples per second into a file, a line per second.

Its dataset spends --cpu-ms of pure-Python work per sample (holding the GIL, as decoding in Python
does), its step is a small model's forward/backward. Runs --seconds, then exits 0.

    python benchmarks/scripts/rate_loop.py RATES.txt [--seconds 40] [--workers 0] [--cpu-ms 0.5] [--log]
"""

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Busy(Dataset):
    def __init__(self, cpu_ms):
        self.cpu_s = cpu_ms / 1000.0

    def __len__(self):
        return 4096

    def __getitem__(self, index):
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        return torch.full((32,), index / 4096.0), index % 8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rates")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cpu-ms", type=float, default=0.5)
    parser.add_argument("--log", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loader = DataLoader(Busy(args.cpu_ms), batch_size=16, shuffle=True, num_workers=args.workers)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    start = time.monotonic()
    second, samples = 1, 0
    with open(args.rates, "w") as out:
        while time.monotonic() - start < args.seconds:
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if args.log:
                    import loadertop

                    loadertop.log(loss=loss)
                samples += len(y)
                now = time.monotonic() - start
                while now >= second:  # one line per whole second: samples in that second
                    out.write(f"{second} {samples}\n")
                    out.flush()
                    second, samples = second + 1, 0
                if now >= args.seconds:
                    break


if __name__ == "__main__":
    main()
