"""Pairwise preference data for reward-model distillation (PAJAMA, arXiv 2506.10403, spec §10 / §12.6).

:class:`PreferenceDataModule` trains on a preference pool labelled either by **program judges** (the PAJAMA setting:
labels from the aggregated hand-written or generated judge programs; the pool's own labels are never read) or by its
**human** labels (the upper reference), and tests on other labelled sets. The labelled rows used to tune the program
judges (``tune_size`` rows of the pool) are held out of training in *both* settings, and serve as the validation set
(with their human labels), so the two settings train on exactly the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_ws.contracts import ATTENTION_MASK, IDX, INPUT_IDS, LABELS, TARGET, WEIGHT
from lightning_ws.datamodules.resumable import ResumableDataLoader
from lightning_ws.datamodules.text import EpochSeededRandomSampler, load_tokenizer
from lightning_ws.errors import ConfigError, DataError

__all__ = [
    "ATTENTION_MASK_A",
    "ATTENTION_MASK_B",
    "INPUT_IDS_A",
    "INPUT_IDS_B",
    "PairDataset",
    "PreferenceDataModule",
    "collate_pairs",
]

# Pair batch keys (local: contracts.py has the single-sequence keys only).
INPUT_IDS_A, INPUT_IDS_B = f"{INPUT_IDS}_a", f"{INPUT_IDS}_b"
ATTENTION_MASK_A, ATTENTION_MASK_B = f"{ATTENTION_MASK}_a", f"{ATTENTION_MASK}_b"


class PairDataset(Dataset):
    """Tokenised pairs: ids of (query, A) and (query, B), soft target P(B), weight, gold label (-1 unknown), idx."""

    def __init__(self, ids_a: list[list[int]], ids_b: list[list[int]], target: np.ndarray, weight: np.ndarray,
                 labels: np.ndarray, idx: np.ndarray) -> None:
        self.ids_a, self.ids_b = ids_a, ids_b
        self.target, self.weight = np.asarray(target, np.float32), np.asarray(weight, np.float32)
        self.labels, self.idx = np.asarray(labels, np.int64), np.asarray(idx, np.int64)

    def __len__(self) -> int:
        return len(self.ids_a)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"a": self.ids_a[i], "b": self.ids_b[i], TARGET: float(self.target[i]), WEIGHT: float(self.weight[i]),
                LABELS: int(self.labels[i]), IDX: int(self.idx[i])}


def collate_pairs(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad A and B sequences of a batch to one length."""
    T = max(max(len(it["a"]), len(it["b"])) for it in items)

    def pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    ia, ma = pad([it["a"] for it in items])
    ib, mb = pad([it["b"] for it in items])
    return {INPUT_IDS_A: ia, ATTENTION_MASK_A: ma, INPUT_IDS_B: ib, ATTENTION_MASK_B: mb,
            TARGET: torch.tensor([it[TARGET] for it in items], dtype=torch.float32),
            WEIGHT: torch.tensor([it[WEIGHT] for it in items], dtype=torch.float32),
            LABELS: torch.tensor([it[LABELS] for it in items], dtype=torch.long),
            IDX: torch.tensor([it[IDX] for it in items], dtype=torch.long)}


class PreferenceDataModule(pl.LightningDataModule):
    """Reward-model training pairs labelled by program judges or by humans (see the module docstring).

    Batches: ``input_ids_a``/``attention_mask_a``, ``input_ids_b``/``attention_mask_b`` ``(B, T)``, ``target``
    ``(B,)`` P(B preferred) (soft program label, or 0/1), ``weight`` ``(B,)``, ``labels`` ``(B,)`` gold (0 = A,
    1 = B; -1 unknown; used for metrics only) and ``idx``. Test loaders: one per ``test_data`` entry, in order
    (names in :attr:`test_names`).

    Args:
        train_data: pool name (``hh_rlhf``, ``pandalm_test``, ``llmbar``) or a JSONL path.
        labels: ``"programs"`` (default) or ``"human"``.
        programs: ``"handwritten"`` (the committed set) or a program-store folder.
        aggregator: label model over program votes (default ``"auto"``; ``"majority_vote"``...).
        soft_labels: train on P(B) (default) rather than its rounding.
        min_confidence: drop program-labelled pairs with ``|P(B) - 0.5| <= min_confidence`` (uncovered pairs, with
            P = 0.5, are always dropped).
        tune_size: labelled pool rows that tune the programs and form the validation set (default 500, as the
            reference's validation split).
        max_train: train on a seeded subset of this many of the remaining rows (default all).
        test_data: labelled test sets (default ``["llmbar", "pandalm_test"]``).
        max_test: cap each test set (seeded subset; default all).
        tokenizer: local tokenizer folder (``None`` = the shipped MiniLM's).
        max_length: tokens per (query, response) sequence (default 256).
        batch_size, eval_batch_size: pairs per batch.
        seed: subset, split and shuffle seed.
        cache_dir: program-score cache (default none).
        sandbox_workers: sandbox processes for scoring (default 2).
        num_workers: DataLoader workers.
    """

    def __init__(self, train_data: str = "hh_rlhf", labels: Literal["programs", "human"] = "programs",
                 programs: str = "handwritten", aggregator: str = "auto", soft_labels: bool = True,
                 min_confidence: float = 0.0, tune_size: int = 500, max_train: int | None = None,
                 test_data: Sequence[str] = ("llmbar", "pandalm_test"), max_test: int | None = None,
                 tokenizer: str | None = None, max_length: int = 256, batch_size: int = 16,
                 eval_batch_size: int = 32, seed: int = 0, cache_dir: str | None = None, sandbox_workers: int = 2,
                 num_workers: int = 0) -> None:
        super().__init__()
        if labels not in ("programs", "human"):
            raise ConfigError(f"labels must be 'programs' or 'human', got {labels!r}.")
        if not 0.0 <= min_confidence < 0.5:
            raise ConfigError(f"min_confidence must be in [0, 0.5), got {min_confidence}.")
        if int(tune_size) < 10:
            raise ConfigError(f"tune_size must be >= 10 labelled rows, got {tune_size}.")
        if max_length < 16 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("max_length must be >= 16 and batch sizes >= 1.")
        if not test_data:
            raise ConfigError("test_data must name at least one labelled set.")
        self.save_hyperparameters()
        self.train_data, self.labels, self.programs = train_data, labels, programs
        self.aggregator, self.soft_labels, self.min_confidence = aggregator, bool(soft_labels), float(min_confidence)
        self.tune_size = int(tune_size)
        self.max_train = None if max_train is None else int(max_train)
        self.test_data = list(test_data)
        self.max_test = None if max_test is None else int(max_test)
        self.tokenizer_path, self.max_length = tokenizer, int(max_length)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.seed, self.cache_dir = int(seed), cache_dir
        self.sandbox_workers, self.num_workers = int(sandbox_workers), int(num_workers)
        self.datasets: dict[str, PairDataset] = {}
        self.test_names: list[str] = []
        self.label_report: dict[str, Any] = {}
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _encode(self, pairs: Any, target: np.ndarray, weight: np.ndarray) -> PairDataset:
        from lightning_ws.pajama.distill import encode_query_response

        ids_a = encode_query_response(self.tokenizer, pairs.queries, pairs.responses_a, self.max_length)
        ids_b = encode_query_response(self.tokenizer, pairs.queries, pairs.responses_b, self.max_length)
        return PairDataset(ids_a, ids_b, target, weight, pairs.y, np.arange(len(pairs)))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from lightning_ws.pajama.data import load_preferences, split_by_id

        pool = load_preferences(self.train_data)
        labelled = np.flatnonzero(pool.y >= 0)
        if len(labelled) <= self.tune_size:
            raise DataError(f"{self.train_data} has {len(labelled)} labelled rows; tune_size={self.tune_size} "
                            f"leaves none to train on.")
        frac = self.tune_size / len(pool)
        tune_idx, rest = split_by_id(pool.ids, frac, seed=self.seed)
        tune_idx = tune_idx[pool.y[tune_idx] >= 0]
        rng = np.random.default_rng(self.seed)
        if self.max_train is not None and self.max_train < len(rest):
            rest = np.sort(rng.choice(rest, self.max_train, replace=False))
        tune, train = pool.take(tune_idx), pool.take(rest)
        if self.labels == "human":
            keep = train.y >= 0
            target = train.y.astype(np.float32)
            self.label_report = {"source": "human", "train_rows": int(keep.sum())}
        else:
            from lightning_ws.pajama.distill import program_labels

            pl_ = program_labels(train, tune, self.programs, aggregator=self.aggregator, cache_dir=self.cache_dir,
                                 workers=self.sandbox_workers, seed=self.seed)
            p = pl_.p_b
            keep = pl_.covered & (np.abs(p - 0.5) > self.min_confidence)
            target = (p if self.soft_labels else (p > 0.5).astype(np.float64)).astype(np.float32)
            agree = ((p > 0.5).astype(int) == train.y)[keep & (train.y >= 0) & (p != 0.5)]
            self.label_report = {"source": "programs", "programs": self.programs, "aggregator": self.aggregator,
                                 "train_rows": int(keep.sum()), "pool_rows": len(train),
                                 "coverage": float(pl_.covered.mean()),
                                 "label_accuracy_vs_human": float(agree.mean()) if agree.size else float("nan"),
                                 "selected_programs": pl_.summary["selected"]}
        train = train.take(np.flatnonzero(keep))
        self.datasets["train"] = self._encode(train, target[keep], np.ones(int(keep.sum()), np.float32))
        self.datasets["val"] = self._encode(tune, tune.y.astype(np.float32), np.ones(len(tune), np.float32))
        self.test_names = []
        for k, name in enumerate(self.test_data):
            d = load_preferences(name)
            if self.max_test is not None and self.max_test < len(d):
                d = d.take(np.sort(np.random.default_rng(self.seed + 1 + k).choice(len(d), self.max_test,
                                                                                    replace=False)))
            self.datasets[f"test_{k}"] = self._encode(d, d.y.astype(np.float32), np.ones(len(d), np.float32))
            self.test_names.append(d.name)

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_pairs(items, int(self.tokenizer.pad_token_id or 0))

    def train_dataloader(self) -> DataLoader:
        """Training pairs, shuffled per epoch with ``(seed, epoch)``; resumes mid-epoch."""
        ds = self.datasets["train"]
        return ResumableDataLoader(ds, batch_size=self.batch_size, sampler=EpochSeededRandomSampler(ds, self.seed),
                                   collate_fn=self._collate, num_workers=self.num_workers, datamodule=self)

    def _eval(self, key: str) -> DataLoader:
        return DataLoader(self.datasets[key], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """The tuning rows with their human labels."""
        return self._eval("val")

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per ``test_data`` set."""
        return [self._eval(f"test_{k}") for k in range(len(self.test_data))]

    def predict_dataloader(self) -> DataLoader:
        """The first test set."""
        return self._eval("test_0")
