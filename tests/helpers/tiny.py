"""Tiny, fast Lightning fixtures for the shared callback tests (deterministic on CPU; dropout off unless asked)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_ws.contracts import DOMAIN, IDX, LABELS, LOSS, PER_SAMPLE_LOSS, X
from lightning_ws.datamodules.resumable import ResumableDataLoader
from lightning_ws.datamodules.tensors import TensorDictDataset
from lightning_ws.datamodules.text import EpochSeededRandomSampler


def _rows(x: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor) -> TensorDictDataset:
    """``{X, LABELS, IDX, DOMAIN}`` items (the package's one in-memory dict dataset)."""
    return TensorDictDataset({X: x, LABELS: labels, IDX: torch.arange(len(x)), DOMAIN: domain})


class TinyDataModule(pl.LightningDataModule):
    """A seeded linearly separable-ish classification problem with ``num_domains`` domains."""

    def __init__(self, n: int = 64, dim: int = 8, num_classes: int = 3, num_domains: int = 2, batch_size: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, num_classes, generator=g)
        self.labels = (self.x @ w).argmax(-1)
        self.domain = torch.arange(n) % num_domains
        self.batch_size, self.seed, self.num_classes = batch_size, seed, num_classes

    def train_dataloader(self) -> DataLoader:
        ds = _rows(self.x, self.labels, self.domain)
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=EpochSeededRandomSampler(ds, self.seed),
                                   datamodule=self)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_rows(self.x, self.labels, self.domain), batch_size=self.batch_size)


class TinyClassifier(pl.LightningModule):
    """MLP ``x -> hidden -> classifier`` (``self.classifier`` is the final nn.Linear), SGD with momentum.

    ``dropout > 0`` puts a dropout layer before the head (resume tests use it: dropout draws from the global RNG).
    """

    def __init__(self, dim: int = 8, hidden: int = 16, num_classes: int = 3, lr: float = 0.1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))

    def training_step(self, batch, batch_idx):
        logits = self(batch[X])
        per = nn.functional.cross_entropy(logits, batch[LABELS], reduction="none")
        loss = per.mean()
        self.log("train/loss", loss, batch_size=len(per))
        return {LOSS: loss, PER_SAMPLE_LOSS: per}

    def validation_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[X]), batch[LABELS])
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch[X]))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def make_tiny_case(batch_size: int = 8, seed: int = 0, **_: object):
    """Factory for the DDP helper: ``(model, datamodule, callbacks)`` with no callbacks."""
    torch.manual_seed(seed)
    return TinyClassifier(), TinyDataModule(batch_size=batch_size, seed=seed), []
