"""A script a user would watch: trains until stopped (or for --seconds), printing a line per epoch.

A map-style dataset with ~2 ms of CPU per sample (decoding, say), a small model with SGD, a
validation loader every epoch, and the loss through loadertop.log when --log is given. The
pids of its DataLoader workers are not its business: loadertop finds them.

    python tests/scripts/long_loop.py [--seconds S] [--workers N] [--log] [--fail-after N] [--no-loader]
"""

import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Decoded(Dataset):
    """Sample i is a vector of i's, after ~2 ms of CPU; label i % 4."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        return torch.full((16,), index / self.size), index % 4


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--log", action="store_true")
    parser.add_argument("--fail-after", type=int, default=None, help="raise after this many batches")
    parser.add_argument("--no-loader", action="store_true", help="never create a DataLoader")
    args = parser.parse_args()
    print(f"long_loop: starting, {args.workers} workers", flush=True)
    if args.no_loader:
        time.sleep(args.seconds)
        return
    torch.manual_seed(0)
    train = DataLoader(Decoded(512), batch_size=16, shuffle=True, num_workers=args.workers)
    val = DataLoader(Decoded(64), batch_size=32, num_workers=0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    deadline = time.monotonic() + args.seconds
    step = 0
    epoch = 0
    while time.monotonic() < deadline:
        epoch += 1
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if args.log:
                import loadertop

                loadertop.log(loss=loss)
            step += 1
            if args.fail_after is not None and step >= args.fail_after:
                raise RuntimeError(f"long_loop: failing on purpose after {step} batches")
            if time.monotonic() >= deadline:
                break
        with torch.no_grad():
            val_loss = sum(nn.functional.cross_entropy(model(x), y).item() for x, y in val) / len(val)
        print(f"long_loop: epoch {epoch} val loss {val_loss:.4f}", flush=True)
    print("long_loop: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
