"""Weaver distillation data: (instruction, response) pairs with Weaver scores, split by problem (arXiv 2506.18203)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_ws.contracts import AGREEMENT, ATTENTION_MASK, CORRECT, IDX, INPUT_IDS, PROBLEM, TARGET, TOKEN_TYPE_IDS
from lightning_ws.datamodules.resumable import ResumableDataLoader
from lightning_ws.datamodules.text import EpochSeededRandomSampler, load_tokenizer
from lightning_ws.errors import ConfigError, DataError

__all__ = ["WeaverDistillDataModule", "ProblemPairDataset", "encode_pairs"]


def encode_pairs(tokenizer: Any, instructions: Sequence[str], responses: Sequence[str], max_length: int
                 ) -> tuple[list[list[int]], list[list[int]] | None]:
    """Tokenise (instruction, response) pairs, truncating the *response* first.

    Pairs whose instruction alone leaves fewer than 8 tokens for the response fall back to ``longest_first``
    truncation (which then shortens the instruction too), since ``only_second`` cannot fit them.

    Returns:
        ``(input_ids, token_type_ids or None)``: unpadded id lists, one per pair.
    """
    if max_length < 16:
        raise ConfigError(f"max_length must be >= 16 tokens, got {max_length}.")
    q_lens = [len(x) for x in tokenizer(list(instructions), add_special_tokens=False)["input_ids"]]
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    short = [i for i, n in enumerate(q_lens) if n + n_special + 8 <= max_length]
    long = [i for i, n in enumerate(q_lens) if n + n_special + 8 > max_length]
    ids: list[list[int] | None] = [None] * len(q_lens)
    types: list[list[int] | None] = [None] * len(q_lens)
    has_types = False
    for rows, mode in ((short, "only_second"), (long, "longest_first")):
        if not rows:
            continue
        enc = tokenizer([instructions[i] for i in rows], [responses[i] for i in rows], truncation=mode,
                        max_length=max_length)
        tt = enc.get("token_type_ids")
        has_types = has_types or tt is not None
        for j, i in enumerate(rows):
            ids[i] = list(enc["input_ids"][j])
            types[i] = list(tt[j]) if tt is not None else None
    return ids, (types if has_types else None)  # type: ignore[return-value]


class ProblemPairDataset(Dataset):
    """One item = one problem with all its candidates (so a batch holds whole problems, for the ranking loss).

    Attributes:
        problems: ``(Q,)`` global problem ids of this split.
        input_ids: ``Q`` lists of ``N`` token-id lists. token_type_ids: same layout, or ``None``.
        targets: ``(Q, N)`` Weaver scores. correct: ``(Q, N)`` bool (all False when unknown).
        present: ``(Q, N)`` bool, False for a padding slot of a problem with fewer candidates (no answer, no score:
            :meth:`~lightning_ws.weaver.VerificationData.present`); the collate drops such slots.
        num_candidates: ``N``.
    """

    def __init__(self, problems: np.ndarray, input_ids: list[list[list[int]]],
                 token_type_ids: list[list[list[int]]] | None, targets: np.ndarray, correct: np.ndarray,
                 agreement: np.ndarray | None = None, present: np.ndarray | None = None) -> None:
        self.problems = np.asarray(problems, dtype=np.int64)
        self.input_ids = input_ids
        self.token_type_ids = token_type_ids
        self.targets = np.asarray(targets, dtype=np.float32)
        self.correct = np.asarray(correct, dtype=bool)
        self.num_candidates = int(self.targets.shape[1])
        self.agreement = (np.zeros(self.targets.shape, dtype=np.float32) if agreement is None
                          else np.asarray(agreement, dtype=np.float32))
        self.present = (np.ones(self.targets.shape, dtype=bool) if present is None
                        else np.asarray(present, dtype=bool))

    def __len__(self) -> int:
        return int(self.problems.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {PROBLEM: int(self.problems[i]), INPUT_IDS: self.input_ids[i], TARGET: self.targets[i],
                CORRECT: self.correct[i], AGREEMENT: self.agreement[i], _PRESENT: self.present[i]}
        if self.token_type_ids is not None:
            item[TOKEN_TYPE_IDS] = self.token_type_ids[i]
        return item


def collate_problems(items: Sequence[dict[str, Any]], pad_id: int, num_candidates: int) -> dict[str, torch.Tensor]:
    """Flatten whole problems into a candidate batch, padded to the longest pair in the batch (dynamic padding).
    Padding slots of problems with fewer candidates (an item's ``present`` mask) are left out: ``PROBLEM`` / ``IDX``
    then list only the real candidates (``IDX`` keeps each one's original slot)."""
    padded = any(_PRESENT in it and not np.all(it[_PRESENT]) for it in items)
    if padded:
        items = [_present_only(it) for it in items]
    seqs = [s for it in items for s in it[INPUT_IDS]]
    longest = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((B, longest), dtype=torch.long)
    types = torch.zeros((B, longest), dtype=torch.long) if TOKEN_TYPE_IDS in items[0] else None
    row = 0
    for it in items:
        for n, s in enumerate(it[INPUT_IDS]):
            ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
            if types is not None:
                types[row, : len(s)] = torch.as_tensor(it[TOKEN_TYPE_IDS][n], dtype=torch.long)
            row += 1
    if padded:
        problem = torch.as_tensor([it[PROBLEM] for it in items for _ in it["_slots"]], dtype=torch.long)
        cand = torch.as_tensor([n for it in items for n in it["_slots"]], dtype=torch.long)
    else:
        problem = torch.as_tensor([it[PROBLEM] for it in items], dtype=torch.long).repeat_interleave(num_candidates)
        cand = torch.arange(num_candidates, dtype=torch.long).repeat(len(items))
    batch = {INPUT_IDS: ids, ATTENTION_MASK: mask,
             TARGET: torch.from_numpy(np.concatenate([it[TARGET] for it in items])).float(),
             CORRECT: torch.from_numpy(np.concatenate([it[CORRECT] for it in items])).long(),
             PROBLEM: problem, IDX: problem * num_candidates + cand}
    if AGREEMENT in items[0]:
        batch[AGREEMENT] = torch.from_numpy(np.concatenate([it[AGREEMENT] for it in items])).float()
    if types is not None:
        batch[TOKEN_TYPE_IDS] = types
    return batch


#: item key of the present-candidate mask (internal to this module's dataset and collate)
_PRESENT = "present"


def _present_only(item: dict[str, Any]) -> dict[str, Any]:
    """One problem's item restricted to its present candidates, with ``_slots`` = their original positions."""
    keep = np.flatnonzero(np.asarray(item.get(_PRESENT, np.ones(len(item[INPUT_IDS]), dtype=bool))))
    out = dict(item)
    out[INPUT_IDS] = [item[INPUT_IDS][n] for n in keep]
    if TOKEN_TYPE_IDS in item:
        out[TOKEN_TYPE_IDS] = [item[TOKEN_TYPE_IDS][n] for n in keep]
    for key in (TARGET, CORRECT, AGREEMENT):
        if key in item:
            out[key] = np.asarray(item[key])[keep]
    out["_slots"] = keep.tolist()
    return out


class WeaverDistillDataModule(pl.LightningDataModule):
    """Cross-encoder distillation data for Weaver (Saad-Falcon et al., arXiv 2506.18203, spec §9).

    Each example is an (instruction, candidate response) pair whose regression target is Weaver's per-candidate
    P(correct). Problems (never single candidates) are split into train / val / test with a seeded permutation, so no
    problem appears in two splits (the reference splits by sample, which leaks problems into its test set).

    A batch holds ``batch_problems`` whole problems, flattened to ``batch_problems * N`` candidates (so every
    candidate of a problem is in the same batch, which the within-problem ranking loss needs), dynamically padded:
    ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes them) ``(B, T)`` long,
    ``target`` ``(B,)`` float (Weaver score), ``correct`` ``(B,)`` long (0/1 ground truth, used only for metrics),
    ``problem`` ``(B,)`` long (global problem id) and ``idx`` ``(B,)`` long (stable id ``problem * N + candidate``).
    The training loader shuffles problems per epoch with ``(seed, epoch)`` and resumes mid-epoch exactly.

    Weaver scores come from ``scores_path`` (``weaver_scores.safetensors`` / ``.json`` written by ``lightning-ws weaver
    select --out DIR``, shape ``(P, N)`` of the *full* data) or, when it is ``None``, are computed here: a
    ``Weaver(**weaver_kwargs)`` is fitted in ``label_free`` mode on the **training problems only** (no labels, no
    validation/test problems) and then scores every split. A scores file from the CLI was fitted on *all* problems
    (transductively, without labels in its default ``label_free`` mode); say which you used when reporting.

    Args:
        data: ``"gsm8k"`` (the shipped 1319 x 4 GSM8K candidates with offline heuristic verifiers) or a
            :class:`~lightning_ws.weaver.VerificationData` with ``instructions`` and ``samples``.
        scores_path: Weaver score file (or its folder); ``None`` = compute label-free scores on the train problems.
        tokenizer: local tokenizer folder (``None`` = the shipped MiniLM's; use the encoder's folder).
        max_length: maximum pair length in tokens (default 256; the response is truncated first).
        batch_problems: problems per training batch (default 8 -> 32 candidates for N = 4).
        eval_batch_problems: problems per evaluation batch (default 16).
        val_fraction: fraction of problems for validation (default 0.1).
        test_fraction: fraction of problems for test (default 0.2).
        max_problems: use a seeded random subset of this many problems (default all; for quick runs).
        seed: seed of the subset, the split, the per-epoch shuffle and the Weaver fit.
        weaver_kwargs: arguments of :class:`~lightning_ws.weaver.Weaver` when scores are computed here.
        num_workers: DataLoader workers.
    """

    def __init__(self, data: Any = "gsm8k", scores_path: str | None = None, tokenizer: str | None = None,
                 max_length: int = 256, batch_problems: int = 8, eval_batch_problems: int = 16,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, max_problems: int | None = None,
                 seed: int = 0, weaver_kwargs: dict[str, Any] | None = None, num_workers: int = 0) -> None:
        super().__init__()
        from lightning_ws.weaver import VerificationData

        if not (data == "gsm8k" if isinstance(data, str) else isinstance(data, VerificationData)):
            raise ConfigError(f"data must be 'gsm8k' or a VerificationData, got {data!r:.80}.")
        if int(batch_problems) < 1 or int(eval_batch_problems) < 1:
            raise ConfigError(f"batch_problems and eval_batch_problems must be >= 1, got {batch_problems}, "
                              f"{eval_batch_problems}.")
        if max_length < 16:
            raise ConfigError(f"max_length must be >= 16 tokens, got {max_length}.")
        if max_problems is not None and int(max_problems) < 3:
            raise ConfigError(f"max_problems must be >= 3 (train/val/test need a problem each), got {max_problems}.")
        for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= float(f) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {f}.")
        self.data = data
        self.scores_path = scores_path
        self.tokenizer_path = tokenizer
        self.max_length = int(max_length)
        self.batch_problems = int(batch_problems)
        self.eval_batch_problems = int(eval_batch_problems)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.max_problems = None if max_problems is None else int(max_problems)
        self.seed = int(seed)
        self.weaver_kwargs = dict(weaver_kwargs or {})
        self.num_workers = int(num_workers)
        self.datasets: dict[str, ProblemPairDataset] = {}
        self.splits: dict[str, np.ndarray] = {}
        self.weaver_scores: np.ndarray | None = None
        self.score_source: str | None = None
        self._tokenizer = None
        self._vdata = None

    # ------------------------------------------------------------------ data
    @property
    def tokenizer(self) -> Any:
        """The (lazily loaded) Hugging Face tokenizer."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def verification_data(self) -> Any:
        """The full :class:`~lightning_ws.weaver.VerificationData` (loaded once)."""
        if self._vdata is None:
            if isinstance(self.data, str):
                from lightning_ws.weaver import load_gsm8k_verification

                self._vdata = load_gsm8k_verification()
            else:
                self._vdata = self.data
            if self._vdata.instructions is None or self._vdata.samples is None:
                raise DataError("distillation needs the texts: VerificationData.instructions and .samples are None; "
                                "load the data with keep_texts=True.")
        return self._vdata

    def _prepare_splits(self) -> None:
        vd = self.verification_data()
        P = vd.num_problems
        pool = np.arange(P)
        if self.max_problems is not None and self.max_problems < P:
            pool = np.sort(np.random.default_rng(self.seed + 1).choice(P, self.max_problems, replace=False))
        from lightning_ws.weaver.distill import split_problems

        tr, va, te = split_problems(
            pool.size, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed)
        self.splits = {"train": pool[tr], "val": pool[va], "test": pool[te]}

    def _scores(self) -> np.ndarray:
        from lightning_ws.weaver import Weaver
        from lightning_ws.weaver.distill import load_score_file

        vd = self.verification_data()
        if self.scores_path:
            s = load_score_file(self.scores_path)
            if s.shape != (vd.num_problems, vd.num_candidates):
                raise DataError(f"the score file {self.scores_path} has shape {s.shape} but the data has "
                                f"{(vd.num_problems, vd.num_candidates)} (problems x candidates); write it with "
                                f"`lightning-ws weaver select` on the same data.")
            self.score_source = f"file:{self.scores_path}"
            return s
        kw = {"seed": self.seed, **self.weaver_kwargs}
        w = Weaver(**kw).fit(vd.subset(self.splits["train"]), "label_free")
        self.weaver = w
        self.score_source = "label_free Weaver fitted on the training problems"
        return w.score(vd)

    def weaver_selection_accuracy(self, split: str) -> float:
        """Select@1 of the teacher scores on ``split`` (argmax per problem, first index on ties)."""
        from lightning_ws.weaver.distill import flat_selection_accuracy

        ds = self.datasets[split]
        p = np.repeat(ds.problems, ds.num_candidates)
        real = ds.present.reshape(-1)  # padding slots are no candidates
        return flat_selection_accuracy(p[real], ds.targets.reshape(-1)[real], ds.correct.reshape(-1)[real])

    def setup(self, stage: str | None = None) -> None:
        """Split problems, get Weaver scores and tokenise every split (once)."""
        if self.datasets:
            return
        vd = self.verification_data()
        self._prepare_splits()
        scores = self._scores()
        self.weaver_scores = scores
        correct = vd.correct if vd.correct is not None else np.zeros(scores.shape, dtype=bool)
        from lightning_ws.weaver.guard import answer_share

        present = vd.present()
        agreement = answer_share(vd.answer_ids(), present)
        N = vd.num_candidates
        for split, probs in self.splits.items():
            instr = [vd.instructions[p] for p in probs for _ in range(N)]
            resp = [vd.samples[p][n] for p in probs for n in range(N)]
            ids, types = encode_pairs(self.tokenizer, instr, resp, self.max_length)
            group = [ids[i * N:(i + 1) * N] for i in range(len(probs))]
            tgroup = None if types is None else [types[i * N:(i + 1) * N] for i in range(len(probs))]
            self.datasets[split] = ProblemPairDataset(probs, group, tgroup, scores[probs], correct[probs],
                                                      agreement[probs], present[probs])

    # ------------------------------------------------------------------ loaders
    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_problems(items, int(self.tokenizer.pad_token_id or 0), items[0][TARGET].shape[0])

    def train_dataloader(self) -> DataLoader:
        """Whole problems shuffled per epoch with ``(seed, epoch)``; resumes mid-epoch exactly."""
        ds = self.datasets["train"]
        return ResumableDataLoader(ds, batch_size=self.batch_problems, sampler=EpochSeededRandomSampler(ds, self.seed),
                                   collate_fn=self._collate, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, datamodule=self)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.eval_batch_problems, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """Validation problems, in order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test problems, in order."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Test problems, in order."""
        return self._eval_loader("test")

    # ------------------------------------------------------------------ info
    def describe(self) -> dict[str, Any]:
        """Split sizes and where the Weaver scores came from (for logs and reports)."""
        return {"score_source": self.score_source, **{f"n_{k}_problems": int(v.size) for k, v in self.splits.items()}}
