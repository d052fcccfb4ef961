"""A Lightning script written the way users write them: run it with python, or under loadertop unmodified.

A LightningModule with train_dataloader() and val_dataloader() (shuffled from the seed that
seed_everything sets), AdamW and a step LR schedule, gradient clipping, 2 epochs on the CPU.
It writes what it saw to the JSON file named by its first argument: the sample indices of every
training and validation batch, the training losses, what training_step logged for each batch (the
loss, and the accuracy every other batch), the final weights' sum, and which of the two Lightning
packages were imported.

    python tests/scripts/fit_lightning.py out.json [--workers N] [--callback] [--manual]
        [--namespace=pytorch_lightning] [--pause-at STEP:FILE] [--iterable]
    torchrun --standalone --nproc_per_node=2 tests/scripts/fit_lightning.py out.json --ddp

--ddp trains with strategy="ddp" on 2 CPU processes (each rank writes out.json.rank<R>); Lightning
then re-creates the loaders with a DistributedSampler.

--callback adds loadertop's Lightning callback explicitly (the launcher adds it anyway: once).
--manual optimizes by hand (manual optimization: training_step returns nothing, the loss is only logged).
--namespace=pytorch_lightning imports the older package, `import pytorch_lightning as L`, as older scripts do.
--iterable trains on an IterableDataset of the same samples, in order (unsized: Lightning fetches a batch ahead).
--pause-at STEP:FILE waits at the STEP-th training step until FILE exists (a test switches it meanwhile).
"""

import argparse
import json
import os
import sys
import time

if "--namespace=pytorch_lightning" in sys.argv:
    import pytorch_lightning as L
else:
    import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset


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


class Stream(IterableDataset):
    """The samples of a dataset, in order, as a stream (no length)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return (self.dataset[i] for i in range(len(self.dataset)))


class Classifier(L.LightningModule):
    def __init__(self, workers, manual=False, pause=None, iterable=False):
        super().__init__()
        self.workers = workers
        self.iterable = iterable
        self.automatic_optimization = not manual
        self.pause = pause
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
        self.seen = {"train": [], "val": [], "losses": [], "logged": []}

    def train_dataloader(self):
        if self.iterable:
            return DataLoader(Stream(Numbers(160)), batch_size=8, num_workers=self.workers)
        return DataLoader(Numbers(160), batch_size=8, shuffle=True, num_workers=self.workers)

    def val_dataloader(self):
        return DataLoader(Numbers(48), batch_size=16, num_workers=0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen["train"].append(x[:, 0].long().tolist())
        if self.pause is not None and len(self.seen["train"]) == self.pause[0]:
            deadline = time.monotonic() + 120
            while not os.path.exists(self.pause[1]) and time.monotonic() < deadline:
                time.sleep(0.05)
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.seen["losses"].append(loss.item())
        self.log("train_loss", loss)
        logged = {"train_loss": loss.item()}
        if batch_idx % 2 == 0:  # a value logged now and then belongs to the batches it was logged at
            accuracy = (logits.argmax(1) == y).float().mean()
            self.log("train_acc", accuracy)
            logged["train_acc"] = accuracy.item()
        self.seen["logged"].append(logged)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        optimizer.step()
        return None

    def on_train_epoch_end(self):
        if not self.automatic_optimization:
            self.lr_schedulers().step()

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
    parser.add_argument("--manual", action="store_true")
    parser.add_argument("--namespace", choices=["lightning", "pytorch_lightning"], default="lightning")
    parser.add_argument("--pause-at")
    parser.add_argument("--iterable", action="store_true")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    pause = None
    if args.pause_at:
        step, _, path = args.pause_at.partition(":")
        pause = (int(step), path)
    model = Classifier(args.workers, manual=args.manual, pause=pause, iterable=args.iterable)
    callbacks = []
    if args.callback:
        from loadertop.integrations.lightning import LoaderTopCallback

        callbacks.append(LoaderTopCallback())
    parallel = {"strategy": "ddp", "devices": 2} if args.ddp else {"devices": 1}
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        **parallel,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=None if args.manual else 1.0,
        callbacks=callbacks,
    )
    trainer.fit(model)
    model.seen["weights"] = model.net[0].weight.sum().item()
    model.seen["callbacks"] = sorted(type(c).__name__ for c in trainer.callbacks)
    model.seen["imported"] = sorted(name for name in ("lightning", "pytorch_lightning") if name in sys.modules)
    with open(f"{args.out}.rank{trainer.global_rank}" if args.ddp else args.out, "w") as f:
        json.dump(model.seen, f)


if __name__ == "__main__":
    main()
