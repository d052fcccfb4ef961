"""A Hugging Face Trainer script written the way users write them: run it with python, or under loadertop unmodified.

A small torch model that returns its loss, a torch Dataset of dict samples (~2 ms of CPU each),
``transformers.Trainer`` with ``dataloader_num_workers``, a linear LR schedule, gradient clipping,
2 epochs on the CPU, evaluation each epoch, the loss logged at every step. It writes what it saw
to the JSON file named by its first argument: the sample indices of every training batch, the
losses the Trainer logged, and the final weights' sum.

    python tests/scripts/train_hf.py out.json [--workers N]
"""

import argparse
import json
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed


class Numbers(Dataset):
    """Sample i is {"x": [i, i/100, ...], "labels": i % 3, "index": i}, after ~2 ms of CPU."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        x = torch.full((8,), index / 100.0)
        return {"x": x, "labels": index % 3, "index": index}


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        self.seen = []

    def forward(self, x, labels=None, index=None):
        if self.training and index is not None:
            self.seen.append(index.tolist())
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class KeepLosses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    set_seed(0)
    model = Classifier()
    keep = KeepLosses()
    with tempfile.TemporaryDirectory() as output_dir:
        training = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=2,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=16,
            dataloader_num_workers=args.workers,
            learning_rate=1e-2,
            max_grad_norm=1.0,
            logging_steps=1,
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=training, train_dataset=Numbers(160), eval_dataset=Numbers(48), callbacks=[keep]
        )
        trainer.train()
    with open(args.out, "w") as f:
        json.dump(
            {
                "train": model.seen,
                "losses": keep.losses,
                "weights": model.net[0].weight.sum().item(),
                "callbacks": sorted(type(c).__name__ for c in trainer.callback_handler.callbacks),
            },
            f,
        )


if __name__ == "__main__":
    main()
