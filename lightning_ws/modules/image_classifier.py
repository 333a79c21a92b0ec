"""A small image classifier for parameter-market agents (Train 'n Trade, arXiv 2312.04740).

``arch="mlp"``: the reference's MNIST MLP shape, ``input -> hidden_dims (ReLU) -> classes`` (the paper uses
784-32-32-32-16-10). ``arch="cnn"``: two 3x3 convolutions (``channels``) with ReLU and 2x2 max-pooling, then a linear
classifier. Both are one ``nn.Sequential`` chain (``self.net``), the shape weight matching
(:func:`lightning_ws.market.align.sequential_permutation_spec`) supports. ``norm="batch"`` adds BatchNorm after each
hidden layer (whose running statistics the market callback can repair after a purchase).
"""

from __future__ import annotations

import math
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ws.contracts import LABELS, X
from lightning_ws.errors import ConfigError, check_choice

__all__ = ["ImageClassifier"]

Arch = Literal["mlp", "cnn"]
Norm = Literal["none", "batch"]
Optimizer = Literal["adam", "sgd"]


class ImageClassifier(pl.LightningModule):
    """MLP or small CNN on flattened square grey images ``batch["x"]`` (B, side*side); labels ``batch["labels"]``.

    Args:
        input_dim: pixels per image (a square number for ``arch="cnn"``).
        num_classes: number of classes.
        arch: ``"mlp"`` or ``"cnn"``.
        hidden_dims: MLP hidden widths.
        channels: CNN channels of the two convolutions.
        norm: ``"none"`` or ``"batch"`` (BatchNorm after every hidden layer).
        optimizer: ``"adam"`` (the reference's choice) or ``"sgd"`` (momentum 0.9).
        lr: learning rate (reference: 1e-2).

    Logged: ``train/loss``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    """

    def __init__(self, input_dim: int = 64, num_classes: int = 10, arch: Arch = "mlp",
                 hidden_dims: list[int] | None = None, channels: list[int] | None = None, norm: Norm = "none",
                 optimizer: Optimizer = "adam", lr: float = 1e-2) -> None:
        super().__init__()
        hidden_dims = [32, 32] if hidden_dims is None else list(hidden_dims)
        channels = [8, 16] if channels is None else list(channels)
        check_choice("arch", arch, Arch)
        check_choice("norm", norm, Norm)
        check_choice("optimizer", optimizer, Optimizer)
        if not lr > 0:
            raise ConfigError(f"lr must be > 0; got {lr!r}.")
        if input_dim < 1 or num_classes < 2 or any(h < 1 for h in hidden_dims + channels):
            raise ConfigError(f"need input_dim >= 1, num_classes >= 2, positive widths; got {input_dim}, "
                              f"{num_classes}, {hidden_dims}, {channels}.")
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        if arch == "mlp":
            d = input_dim
            for h in hidden_dims:
                layers += [nn.Linear(d, h)] + ([nn.BatchNorm1d(h)] if norm == "batch" else []) + [nn.ReLU()]
                d = h
            layers.append(nn.Linear(d, num_classes))
            self._side = None
        else:
            side = math.isqrt(input_dim)
            if side * side != input_dim or len(channels) != 2 or side < 4:
                raise ConfigError(f"arch='cnn' needs a square input_dim >= 16 and two channel widths; got "
                                  f"{input_dim}, {channels}.")
            c_in = 1
            for c in channels:
                layers += [nn.Conv2d(c_in, c, 3, padding=1)] + ([nn.BatchNorm2d(c)] if norm == "batch" else [])
                layers += [nn.ReLU(), nn.MaxPool2d(2)]
                c_in = c
            out_side = side // 2 // 2
            layers += [nn.Flatten(), nn.Linear(channels[-1] * out_side * out_side, num_classes)]
            self._side = side
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self._side is not None:
            x = x.reshape(-1, 1, self._side, self._side)
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[X]), batch[LABELS])
        self.log("train/loss", loss, batch_size=len(batch[LABELS]))
        return loss

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> None:
        logits = self(batch[X])
        n = len(batch[LABELS])
        self.log(f"{stage}/loss", F.cross_entropy(logits, batch[LABELS]), batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", (logits.argmax(-1) == batch[LABELS]).float().mean(), batch_size=n, sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``probs`` (softmax), ``pred`` and the batch's ``idx`` (``lightning-ws predict``)."""
        from lightning_ws.contracts import IDX, X

        probs = self(batch[X]).softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if IDX in batch:
            out[IDX] = batch[IDX]
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
