"""A Lightning script written the way users write them: run it with python, or under loadertop unmodified.

A LightningModule with train_dataloader() and val_dataloader() (shuffled from the seed that
seed_everything sets), AdamW and a step LR schedule, gradient clipping, 2 epochs on the CPU.
It writes what it saw to the JSON file named by its first argument: the sample indices of every
training and validation batch, the logged training losses, and the final weights' sum.

    python tests/scripts/fit_lightning.py out.json [--workers N] [--callback]
    torchrun --standalone --nproc_per_node=2 tests/scripts/fit_lightning.py out.json --ddp

--ddp trains with strategy="ddp" on 2 CPU processes (each rank writes out.json.rank<R>); Lightning
then re-creates the loaders with a DistributedSampler.

--callback adds loadertop's Lightning callback explicitly (the launcher adds it anyway: once).
"""

import argparse
import json
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Numbers(Dataset):
    """Sample i is ([i, i/100, ...], i % 3), after ~2 ms of CPU (decoding, say)."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        x = torch.full((8,), index / 100.0)
        x[0] = float(index)
        return x, index % 3


class Classifier(L.LightningModule):
    def __init__(self, workers):
        super().__init__()
        self.workers = workers
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
        self.seen = {"train": [], "val": [], "losses": []}

    def train_dataloader(self):
        return DataLoader(Numbers(160), batch_size=8, shuffle=True, num_workers=self.workers)

    def val_dataloader(self):
        return DataLoader(Numbers(48), batch_size=16, num_workers=0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen["train"].append(x[:, 0].long().tolist())
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.seen["losses"].append(loss.item())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.seen["val"].append(x[:, 0].long().tolist())
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--callback", action="store_true")
    parser.add_argument("--ddp", action="store_true")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    model = Classifier(args.workers)
    callbacks = []
    if args.callback:
        from loadertop.integrations.lightning import LoaderTopCallback

        callbacks.append(LoaderTopCallback())
    parallel = {"strategy": "ddp", "devices": 2} if args.ddp else {"devices": 1}
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", **parallel, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=callbacks)
    trainer.fit(model)
    model.seen["weights"] = model.net[0].weight.sum().item()
    model.seen["callbacks"] = sorted(type(c).__name__ for c in trainer.callbacks)
    with open(f"{args.out}.rank{trainer.global_rank}" if args.ddp else args.out, "w") as f:
        json.dump(model.seen, f)


if __name__ == "__main__":
    main()
