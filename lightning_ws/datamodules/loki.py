"""scikit-learn digits with only some classes observed in training, plus a label metric (Loki, arXiv 2307.12226).

The metric: Euclidean distances between class *prototypes* (the mean standardised 8x8 image of each digit)
computed on a small, disjoint "metric split" (default 10% of the data, stratified) that is used for nothing else.
Why this metric: Loki helps when the metric reflects which classes a classifier confuses; prototype distance is a
visual similarity (e.g. 3-5-8-9 are close, 0-1 far), whereas the ordinal metric ``|i - j|`` (also offered, as
``metric="ordinal"``) treats 7 as next to 8, which the pixels do not support.  Prototypes are side information
about every class (like class descriptions in zero-shot learning); no labelled training example of an
unobserved class reaches the classifier.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_ws.contracts import IDX, LABELS, X
from lightning_ws.datamodules.tensors import TensorDictDataset
from lightning_ws.errors import ConfigError, check_choice
from lightning_ws.loki.metric_space import LabelMetric

__all__ = ["LokiDigitsDataModule"]


class LokiDigitsDataModule(pl.LightningDataModule):
    """Digits (1,797 8x8 images, 10 classes) where training sees only ``observed_classes`` (arXiv 2307.12226).

    Splits (stratified, from ``np.random.default_rng(seed)``): ``metric_fraction`` for the class prototypes,
    ``val_fraction`` validation, ``test_fraction`` test, the rest training; the training split then keeps only
    observed classes (``idx`` = row index in that filtered training set).  Val/test/predict hold all 10 classes.
    Batches are dicts ``x`` (float32 ``(B, 64)``, standardised with training statistics), ``labels`` (full-space
    class ids 0-9, LongTensor) and ``idx``.  Class ids equal positions in :attr:`label_metric`.

    Args:
        observed_classes: digit classes seen in training (default ``[0, 1, 4, 7, 8]``, a spread of shapes).
        metric: ``"prototype"`` (default, see the module docstring) or ``"ordinal"`` (``|i - j|``).
        batch_size: batch size (default 64).
        val_fraction: fraction for validation (default 0.2).
        test_fraction: fraction for test (default 0.2).
        metric_fraction: fraction for the prototype metric (default 0.1).
        seed: split seed (default 0).
        num_workers: DataLoader workers (default 0).
    """

    num_classes: int = 10

    def __init__(self, observed_classes: list[int] | None = None, metric: Literal["prototype", "ordinal"] = "prototype",
                 batch_size: int = 64, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 metric_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        observed = [0, 1, 4, 7, 8] if observed_classes is None else [int(c) for c in observed_classes]
        if not observed or len(set(observed)) != len(observed) or min(observed) < 0 or max(observed) > 9:
            raise ConfigError(f"observed_classes must be distinct digits in 0..9; got {observed_classes}.")
        check_choice("metric", metric, Literal["prototype", "ordinal"])
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {batch_size}.")
        fracs = {"val_fraction": val_fraction, "test_fraction": test_fraction, "metric_fraction": metric_fraction}
        for name, f in fracs.items():
            if not 0.0 < f < 1.0:
                raise ConfigError(f"{name} must be in (0, 1); got {f}.")
        if sum(fracs.values()) >= 0.9:
            raise ConfigError(f"val+test+metric fractions sum to {sum(fracs.values()):.2f}; leave >= 10% to train.")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0; got {num_workers}.")
        self.save_hyperparameters()
        self.observed_classes = observed
        self.metric_name = metric
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction, self.metric_fraction = val_fraction, test_fraction, metric_fraction
        self._prepared = False
        self._build()

    def _build(self) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        rng = np.random.default_rng(self.seed)
        parts: dict[str, list[np.ndarray]] = {"metric": [], "val": [], "test": [], "train": []}
        for c in range(10):
            rows = rng.permutation(np.nonzero(y == c)[0])
            n = len(rows)
            a = round(n * self.metric_fraction)
            b = a + round(n * self.val_fraction)
            e = b + round(n * self.test_fraction)
            parts["metric"].append(rows[:a])
            parts["val"].append(rows[a:b])
            parts["test"].append(rows[b:e])
            parts["train"].append(rows[e:])
        split = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
        train = split["train"][np.isin(y[split["train"]], self.observed_classes)]
        mu = x[train].mean(0)
        sd = x[train].std(0) + 1.0  # +1: many border pixels are constant; keeps the scale of informative ones
        z = ((x - mu) / sd).astype(np.float32)
        self._x = torch.from_numpy(z)
        self._y = torch.from_numpy(y.astype(np.int64))
        self._split = {"train": train, "val": split["val"], "test": split["test"], "metric": split["metric"]}
        if self.metric_name == "prototype":
            protos = np.stack([z[split["metric"]][y[split["metric"]] == c].mean(0) for c in range(10)])
            self.label_metric = LabelMetric.from_embeddings(list(range(10)), torch.from_numpy(protos).double())
        else:
            d = np.abs(np.arange(10)[:, None] - np.arange(10)[None]).astype(np.float64)
            self.label_metric = LabelMetric.from_matrix(list(range(10)), d)

    def split_arrays(self, name: Literal["train", "val", "test", "metric"]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, labels)`` of a split (for non-Lightning baselines and benchmarks)."""
        if name not in self._split:
            raise ConfigError(f"split must be one of {sorted(self._split)}; got {name!r}.")
        rows = torch.from_numpy(self._split[name])
        return self._x[rows], self._y[rows]

    def _dataset(self, name: str) -> TensorDictDataset:
        x, y = self.split_arrays(name)  # type: ignore[arg-type]
        return TensorDictDataset({X: x, LABELS: y, IDX: torch.arange(len(y))})

    def train_dataloader(self) -> DataLoader:
        """Training batches (observed classes only), shuffled per epoch from ``(seed, epoch)``; resumes mid-epoch."""
        from lightning_ws.datamodules.resumable import ResumableDataLoader
        from lightning_ws.datamodules.text import EpochSeededRandomSampler

        ds = self._dataset("train")
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=EpochSeededRandomSampler(ds, self.seed),
                                   num_workers=self.num_workers, datamodule=self)

    def val_dataloader(self) -> DataLoader:
        """Validation batches over all 10 classes."""
        return DataLoader(self._dataset("val"), batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        """Test batches over all 10 classes."""
        return DataLoader(self._dataset("test"), batch_size=self.batch_size, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches (the test split)."""
        return self.test_dataloader()
