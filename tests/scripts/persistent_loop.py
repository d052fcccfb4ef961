"""A training script whose loader keeps its workers across epochs (``persistent_workers=True``, 1 worker).

Run it with python, or under loadertop unmodified: tests/e2e/test_scripts.py switches it to 0 workers
at the end of its first epoch and back to 1 in its third, and compares. Shuffling from the global RNG
(torch.manual_seed), dropout, AdamW, a validation loader each epoch. It prints each epoch's validation
loss and writes what it saw to the JSON file named by its first argument: the sample indices of every
training and validation batch, the final weights and a few draws of the global RNG at the end.

    python tests/scripts/persistent_loop.py out.json
"""

import json
import sys

import torch
from plain_loop import Numbers
from torch import nn
from torch.utils.data import DataLoader


def main():
    torch.manual_seed(0)
    train = DataLoader(Numbers(96), batch_size=8, shuffle=True, num_workers=1, persistent_workers=True)
    val = DataLoader(Numbers(32), batch_size=16)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = {"train": [], "val": []}
    for epoch in range(3):
        model.train()
        for x, y in train:
            seen["train"].append(x[:, 0].long().tolist())
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            total = 0.0
            for x, y in val:
                seen["val"].append(x[:, 0].long().tolist())
                total += nn.functional.cross_entropy(model(x), y).item()
        print(f"epoch {epoch + 1}: val loss {total / len(val):.6f}", flush=True)
    seen["later_draws"] = torch.rand(4).tolist()
    seen["weights"] = [p.detach().reshape(-1).tolist() for p in model.parameters()]
    with open(sys.argv[1], "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
