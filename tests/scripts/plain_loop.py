"""A training script written the way users write them: run it with python, or under loadertop unmodified.

A plain loop with CPU autocast (bfloat16), AdamW, a step LR schedule, gradient clipping and
accumulation, a validation loader each epoch, shuffling from the global RNG (torch.manual_seed),
dropout. It writes what it saw to the JSON file named by its first argument: the sample
indices of every training and validation batch, and a few draws of the global RNG at the end
(the script's later randomness).

    python tests/scripts/plain_loop.py out.json [--sampler random|distributed|buckets] [--workers N] [--log]
"""

import argparse
import json
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class Numbers(Dataset):
    """Sample i is ([i, i/100, ...], i % 3), after ~1 ms of CPU (decoding, say)."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        x = torch.full((8,), index / 100.0)
        x[0] = float(index)
        return x, index % 3


class Buckets(Sampler):
    """A custom batch_sampler: batches of 3, 5 and 8 indices in turn, shuffled from the global RNG."""

    def __init__(self, size):
        self.size = size

    def __iter__(self):
        order = torch.randperm(self.size).tolist()
        sizes, i, k = (3, 5, 8), 0, 0
        while i < self.size:
            yield order[i : i + sizes[k % 3]]
            i += sizes[k % 3]
            k += 1

    def __len__(self):
        return -(-self.size // 16) * 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--sampler", default="random", choices=("random", "distributed", "buckets"))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--log", action="store_true", help="report the loss with loadertop.log (one added line)")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set, val_set = Numbers(96), Numbers(32)
    if args.sampler == "distributed":
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=5)
        train = DataLoader(train_set, batch_size=8, sampler=sampler, num_workers=args.workers)
    elif args.sampler == "buckets":
        train = DataLoader(train_set, batch_sampler=Buckets(96), num_workers=args.workers)
    else:
        train = DataLoader(train_set, batch_size=8, shuffle=True, num_workers=args.workers)
    val = DataLoader(val_set, batch_size=16, num_workers=0)

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    accumulate = 2
    seen = {"train": [], "val": []}
    for epoch in range(2):
        if args.sampler == "distributed":
            sampler.set_epoch(epoch)
        model.train()
        for i, (x, y) in enumerate(train):
            seen["train"].append(x[:, 0].long().tolist())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y) / accumulate
            loss.backward()
            if args.log:
                import loadertop

                loadertop.log(loss=loss * accumulate, lr=scheduler.get_last_lr()[0])
            if (i + 1) % accumulate == 0:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
        model.eval()
        with torch.no_grad():
            total = 0.0
            for x, y in val:
                seen["val"].append(x[:, 0].long().tolist())
                total += nn.functional.cross_entropy(model(x), y).item()
        print(f"epoch {epoch + 1}: val loss {total / len(val):.4f}", flush=True)
    seen["later_draws"] = torch.rand(4).tolist()
    seen["weights"] = model[0].weight.sum().item()
    with open(args.out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
