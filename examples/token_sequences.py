"""Not images: variable-length token sequences, a padding collate function and a step function.

    loadertop --workload examples.token_sequences:make_workload
    loadertop sweep --workload examples.token_sequences:make_workload

Each sample is a sequence of 20 to 200 token ids; the label says whether token 7 appears more
often than token 3. The collate function pads a batch to its longest sequence and returns a
dict (``tokens``, ``lengths``, ``labels``), so the batch is not ``(inputs, targets)``: the
workload's ``step_fn`` says how to compute the loss (and accuracy) from it. loadertop moves
the dict's tensors to the device, zeroes the gradients, and runs backward and the optimizer.
"""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence
from torch.utils.data import Dataset

from loadertop import Workload

VOCAB = 64
PAD = 0


class TokenDataset(Dataset):
    """Random token sequences, made per access (like tokenising text on the fly)."""

    def __init__(self, count: int = 4096, seed: int = 0) -> None:
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = random.Random(self.seed * 1_000_003 + index)
        tokens = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(20, 201))]
        label = int(tokens.count(7) > tokens.count(3))
        return torch.tensor(tokens), label


def pad_batch(samples: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch; keep the true lengths."""
    sequences, labels = zip(*samples, strict=True)
    return {
        "tokens": pad_sequence(list(sequences), batch_first=True, padding_value=PAD),
        "lengths": torch.tensor([len(s) for s in sequences]),
        "labels": torch.tensor(labels),
    }


class Counter(nn.Module):
    """Embedding and a GRU over the real (unpadded) tokens, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, padding_idx=PAD)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)
        return self.head(hidden[-1])


def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the accuracy of one batch (loadertop does backward and the optimizer step)."""
    logits = model(batch["tokens"], batch["lengths"])
    loss = nn.functional.cross_entropy(logits, batch["labels"])
    accuracy = (logits.argmax(dim=1) == batch["labels"]).float().mean()
    return loss, accuracy


def make_workload() -> Workload:
    torch.manual_seed(0)
    return Workload(
        dataset=TokenDataset(),
        model=Counter(),
        loss_fn=None,  # step_fn computes the loss
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        collate_fn=pad_batch,
        step_fn=step,
        name="token sequences 20-200 long, padding collate, GRU",
        num_threads=1,
    )
