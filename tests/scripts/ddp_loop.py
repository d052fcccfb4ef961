"""A torchrun script written the way users write them: DDP over gloo on the CPU, a DistributedSampler per rank.

    torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_loop.py OUT_PREFIX [--slow-rank R]

Each rank writes OUT_PREFIX.rank<R>.json: the sample indices of every batch it trained on, and
the final weights' sum (the same on every rank: DDP averages the gradients). --slow-rank makes
one rank's dataset wait 5 ms more per sample (its storage is slow: an input straggler); --fail RANK:BATCH
makes a rank raise.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class Numbers(Dataset):
    """Sample i is ([i, i/100, ...], i % 3), after 1 ms of CPU and wait_s of waiting (slow storage, say)."""

    def __init__(self, size, wait_s):
        self.size = size
        self.wait_s = wait_s

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if self.wait_s:
            time.sleep(self.wait_s)
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        x = torch.full((8,), index / 100.0)
        x[0] = float(index)
        return x, index % 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--slow-rank", type=int, default=-1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fail", default="", help="RANK:BATCH: that rank raises at that batch")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dataset = Numbers(96, 0.005 if rank == args.slow_rank else 0.0)
    sampler = DistributedSampler(dataset, shuffle=True, seed=7)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            seen.append(x[:, 0].long().tolist())
            if args.fail and [rank, len(seen)] == [int(v) for v in args.fail.split(":")]:
                raise RuntimeError(f"rank {rank} fails at batch {len(seen)}")
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with open(f"{args.out}.rank{rank}.json", "w") as f:
        json.dump(
            {
                "seen": seen,
                "weights": model.module[0].weight.sum().item(),
                "world": dist.get_world_size(),
                "local_rank": int(os.environ["LOCAL_RANK"]),
            },
            f,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
