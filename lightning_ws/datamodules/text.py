"""Text classification data: the shipped WRENCH sets (or a user's WRENCH folder), tokenised once, padded per batch.

Batches follow the lightning_ws batch contract: a dict with ``input_ids``, ``attention_mask`` (``(B, T)`` long),
``labels`` (``(B,)`` long, or ``(B, k)`` float soft targets), ``idx`` (``(B,)`` long: the example's row in its split,
a stable sample id) and, when the data has them, ``domain`` and ``weight``.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lightning_ws.contracts import ATTENTION_MASK, IDX, INPUT_IDS, LABELS
from lightning_ws.data import WrenchSplit, load_wrench
from lightning_ws.datamodules.resumable import ResumableDataLoader
from lightning_ws.errors import ConfigError

__all__ = ["TextClassificationDataModule", "TokenizingMixin", "TokenizedTextDataset", "EpochSeededRandomSampler", "pad_collate",
           "load_tokenizer"]


def load_tokenizer(name_or_path: str | None):
    """Load a Hugging Face tokenizer from a local folder (``None`` = the shipped MiniLM's), offline."""
    from transformers import AutoTokenizer

    from lightning_ws.sentence_embeddings import default_encoder_path

    path = name_or_path or default_encoder_path()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as err:
        raise ConfigError(f"could not load a tokenizer from {path!r} without network ({err}). Pass a local "
                          f"folder with tokenizer files, or leave tokenizer empty for the shipped MiniLM.") from None


@dataclass
class TokenizedTextDataset(Dataset):
    """Pre-tokenised texts with labels and optional per-example fields.

    Attributes:
        input_ids: one list of token ids per example (unpadded).
        labels: ``(n,)`` int class ids or ``(n, k)`` float soft targets.
        idx: ``(n,)`` stable sample ids.
        extras: optional per-example arrays (``domain``, ``weight``, ...), each of length ``n``.
    """

    input_ids: list[list[int]]
    labels: np.ndarray
    idx: np.ndarray
    extras: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if len(self.labels) != n or len(self.idx) != n:
            raise ValueError(f"lengths differ: {n} texts, {len(self.labels)} labels, {len(self.idx)} ids.")
        for key, arr in (self.extras or {}).items():
            if len(arr) != n:
                raise ValueError(f"extra field {key!r} has {len(arr)} entries for {n} examples.")

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {INPUT_IDS: self.input_ids[i], LABELS: self.labels[i], IDX: int(self.idx[i])}
        for key, arr in (self.extras or {}).items():
            item[key] = arr[i]
        return item


def pad_collate(items: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` to the longest example of the batch and stack the other fields."""
    longest = max(len(it[INPUT_IDS]) for it in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it[INPUT_IDS])
        ids[row, :n] = torch.as_tensor(it[INPUT_IDS], dtype=torch.long)
        mask[row, :n] = 1
    batch = {INPUT_IDS: ids, ATTENTION_MASK: mask}
    for key in items[0]:
        if key == INPUT_IDS:
            continue
        values = np.stack([np.asarray(it[key]) for it in items])
        tensor = torch.from_numpy(values)
        batch[key] = tensor.float() if tensor.is_floating_point() else tensor.long()
    return batch


class EpochSeededRandomSampler(RandomSampler):
    """A random permutation per epoch that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at every epoch start, so a resumed run sees exactly the orders of an uninterrupted
    one (a plain ``RandomSampler`` draws from the global RNG, which checkpoints do not restore). Under DDP Lightning
    replaces it with a ``DistributedSampler`` (also epoch-seeded).
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration's order a function of ``(seed, epoch)``."""
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from super().__iter__()


class TokenizingMixin:
    """A lazily loaded Hugging Face tokenizer (``self._tokenizer_path``) and unpadded tokenisation to
    ``self.max_length``, shared by the text datamodules."""

    _tokenizer_path: str | None
    _tokenizer: Any
    max_length: int

    @property
    def tokenizer(self):
        """The tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._tokenizer_path)
        return self._tokenizer

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)
        return [list(ids) for ids in enc[INPUT_IDS]]


class TextClassificationDataModule(TokenizingMixin, pl.LightningDataModule):
    """Tokenised WRENCH-format text classification (train / valid / test) with gold labels.

    Args:
        dataset: ``"youtube"`` or ``"sms"`` (shipped) or a folder in WRENCH format.
        tokenizer: local tokenizer folder; ``None`` = the shipped MiniLM's.
        max_length: truncation length in tokens.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size (default: ``2 * batch_size``).
        num_workers: DataLoader workers.
        seed: seed of the training order (per epoch: ``(seed, epoch)``).
        train_limit: use only the first ``train_limit`` training examples (quick runs).

    Attributes:
        num_classes, class_names: from the data set's ``label.json``.
    """

    def __init__(
        self,
        dataset: str = "youtube",
        tokenizer: str | None = None,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_limit: int | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}.")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}.")
        if train_limit is not None and train_limit < 1:
            raise ConfigError(f"train_limit must be >= 1 or null, got {train_limit}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_limit = train_limit
        self._tokenizer_path = tokenizer
        self._tokenizer = None
        self.splits: dict[str, WrenchSplit] = {}
        self.datasets: dict[str, TokenizedTextDataset] = {}
        # Read the test split's header now so that num_classes is known before setup (for argument linking),
        # and a missing data set fails at construction with a clear error.
        self.splits["test"] = load_wrench(dataset, "test")
        self.class_names: list[str] = list(self.splits["test"].class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return len(self.class_names)

    #: whether the train split must carry gold labels (the pseudolabel datamodules train without them)
    _train_needs_gold: bool = True

    def load_split(self, split: str) -> WrenchSplit:
        """The raw split (cached). A train split without gold labels is accepted only where the training targets do
        not come from them (pseudolabel datamodules); validation and test need their gold labels."""
        if split not in self.splits:
            self.splits[split] = load_wrench(self.dataset, split,  # type: ignore[arg-type]
                                             allow_unlabeled=split == "train" and not self._train_needs_gold)
        return self.splits[split]

    def train_targets(self, data: WrenchSplit) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Training targets: ``(keep_rows, labels, extras)``. Gold labels here; subclasses supply pseudolabels."""
        return np.arange(data.n), data.labels, {}

    def setup(self, stage: str | None = None) -> None:
        """Load and tokenise the splits the stage needs (once)."""
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "valid", "test")):
            if split in self.datasets:
                continue
            data = self.load_split(split)
            if split == "train":
                rows, labels, extras = self.train_targets(data)
                if self.train_limit is not None:
                    rows, labels = rows[: self.train_limit], labels[: self.train_limit]
                    extras = {k: v[: self.train_limit] for k, v in extras.items()}
                texts = [data.texts[i] for i in rows]
                self.datasets[split] = TokenizedTextDataset(self._tokenize(texts), labels, np.asarray(rows), extras)
            else:
                self.datasets[split] = TokenizedTextDataset(self._tokenize(data.texts), data.labels,
                                                            np.arange(data.n))

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_collate(items, pad_id=int(self.tokenizer.pad_token_id or 0))

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch with ``(seed, epoch)``; resumes mid-epoch exactly (:class:`ResumableDataLoader`)."""
        ds = self.datasets["train"]
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=EpochSeededRandomSampler(ds, self.seed),
                                   collate_fn=self._collate, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, datamodule=self)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """The ``valid`` split, in order."""
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        """The ``test`` split, in order."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The ``test`` split, in order."""
        return self._eval_loader("test")
