"""A training script written the way users write them, on a dataset whose cost is known (for autotune).

Each sample waits 4 ms (slow storage) and burns 0.3 ms of CPU (decoding): with 0 workers the
loop waits about 35 ms for a batch of 8, and workers that wait side by side make batches
faster, past the core count. Shuffled from the global RNG (torch.manual_seed). It writes what
it saw to the JSON file named by its first argument: the sample indices of every batch, the
loader's worker count after each batch (``loader.num_workers``), and the final weights' sum.

    python tests/scripts/tune_loop.py OUT.json [--auto] [--workers N] [--epochs E] [--size N]

``--auto``: ``loadertop.DataLoader(..., num_workers="auto")`` instead of torch's DataLoader.
"""

import argparse
import json

import torch
from torch import nn
from torch.utils.data import DataLoader

from loadertop.core.train.calibrated import CostDataset


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--auto", action="store_true", help="loadertop.DataLoader(..., num_workers='auto')")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=640)
    args = parser.parse_args()

    torch.manual_seed(0)
    dataset = CostDataset(args.size, sleep_s=0.004, cpu_s=0.0003)
    if args.auto:
        import loadertop

        loader = loadertop.DataLoader(dataset, batch_size=8, shuffle=True, num_workers="auto")
    else:
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=args.workers)
    model = nn.Linear(1, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen, workers = [], []
    for _epoch in range(args.epochs):
        for x, y in loader:
            seen.append(x[:, 0].long().tolist())
            workers.append(loader.num_workers)
            loss = nn.functional.cross_entropy(model(x / 1000.0), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with open(args.out, "w") as f:
        json.dump({"seen": seen, "workers": workers, "weights": model.weight.sum().item()}, f)
    print(f"tune_loop: {len(seen)} batches", flush=True)


if __name__ == "__main__":
    main()
