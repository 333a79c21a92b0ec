"""Data modules whose training stream follows a mutable domain mixture (R&B, arXiv 2505.00358).

* :class:`MixtureDataModule`: texts with domains (YouTube comments by video, YouTube + SMS, a WRENCH set, a JSONL/CSV
  file, or lists passed to :meth:`MixtureDataModule.from_texts`), optionally with regrouped domains from a
  ``lightning-ws rnb regroup`` folder; tokenised once with the shipped MiniLM tokenizer.
* :class:`TensorMixtureDataModule`: the same over in-memory tensors (synthetic benchmarks, tests).

Both expose ``set_mixture(p)`` (used by :class:`lightning_ws.callbacks.rnb.RnBCallback`), ``p_eval``, ``num_domains``,
``domain_names`` and ``domain_sizes``, and save the sampler position in their ``state_dict`` so that a resumed run
sees exactly the batches of an uninterrupted one. Batches follow the lightning_ws contract and carry ``domain``.

The training loader is a :class:`MixtureDataLoader`: a ``DataLoader`` that implements Lightning's stateful-loader
protocol (``state_dict``/``load_state_dict``, the sampler's consumed slots, mixture and drawn-but-unconsumed chunks), so
Lightning stores its position in the checkpoint's loop state and resumes mid-epoch without its "dataloader is not
resumable" warning. The data module's own ``state_dict`` carries the same sampler state (restoring both is idempotent),
which covers the Lightning versions that drop a loader state when the loader was built before the checkpoint was
restored.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_ws.contracts import DOMAIN, IDX, LABELS, X
from lightning_ws.datamodules.tensors import TensorDictDataset
from lightning_ws.datamodules.text import TokenizedTextDataset, TokenizingMixin, pad_collate
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.rnb.data import MixtureTexts, load_mixture_source, texts_fingerprint
from lightning_ws.rnb.functional import validate_mixture
from lightning_ws.rnb.regroup import RegroupResult
from lightning_ws.rnb.sampler import DomainMixtureSampler

__all__ = ["MixtureDataLoader", "MixtureDataModule", "TensorMixtureDataModule"]


def _domain_ids(ids: Any, what: str) -> np.ndarray:
    """``ids`` as a flat int64 array; a :class:`DataError` naming the problem when any id is negative."""
    arr = np.asarray(torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids).cpu().numpy())
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"{what} must be integer domain ids 0..m-1; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and int(arr.min()) < 0:
        neg = int((arr < 0).sum())
        raise DataError(f"{what} has {neg} negative domain id(s) (min {int(arr.min())}); domain ids must be 0..m-1. "
                        "Give rows of unknown domain an id of their own (or drop them) before building the data "
                        "module.")
    return arr


class MixtureDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`DomainMixtureSampler` whose state is the sampler's (resumable mid-epoch).

    Build it like a ``DataLoader`` with ``sampler=`` a :class:`DomainMixtureSampler` created with
    ``track_consumption=True`` (its owner calls ``sampler.advance()`` once per consumed batch, as the mixture data
    modules do in ``on_before_batch_transfer``). :meth:`state_dict` returns the sampler's plain-typed state, so a
    checkpoint written mid-epoch holds the exact stream position; Lightning sees the loader as resumable.
    """

    def __init__(self, dataset: Dataset, *, sampler: DomainMixtureSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, DomainMixtureSampler):
            raise ConfigError(f"MixtureDataLoader needs a DomainMixtureSampler, got {type(sampler).__name__}.")
        if not sampler.track_consumption:
            raise ConfigError("MixtureDataLoader needs a DomainMixtureSampler with track_consumption=True (its "
                              "position is the consumed slots).")
        super().__init__(dataset, sampler=sampler, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """``{"sampler": DomainMixtureSampler.state_dict()}`` (consumed slots, mixture, pending chunks)."""
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put the sampler back where the interrupted run was (an empty state leaves it as is)."""
        sampler_state = (state_dict or {}).get("sampler")
        if sampler_state:
            self.sampler.load_state_dict(sampler_state)


class _MixtureBase(pl.LightningDataModule):
    """Shared sampler, mixture and resume logic (see the module docstring)."""

    def __init__(self, batch_size: int, eval_batch_size: int | None, num_workers: int, seed: int,
                 num_samples_per_epoch: int | None) -> None:
        super().__init__()
        if int(batch_size) < 1 or (eval_batch_size is not None and int(eval_batch_size) < 1):
            raise ConfigError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}.")
        if int(num_workers) < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}.")
        if num_samples_per_epoch is not None and int(num_samples_per_epoch) < 1:
            raise ConfigError(f"num_samples_per_epoch must be >= 1 or null, got {num_samples_per_epoch}.")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.num_samples_per_epoch = num_samples_per_epoch
        self.train_domains: np.ndarray = np.zeros(0, dtype=np.int64)
        self.domain_names: list[str] = []
        self._p_eval: torch.Tensor | None = None
        self._p: torch.Tensor | None = None
        self._sampler: DomainMixtureSampler | None = None
        self._sampler_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ domains and mixture
    @property
    def num_domains(self) -> int:
        """Number of training domains ``m``."""
        return len(self.domain_names)

    @property
    def domain_sizes(self) -> torch.Tensor:
        """``(m,)`` training examples per domain."""
        return torch.bincount(torch.as_tensor(self.train_domains), minlength=self.num_domains)

    @property
    def p_eval(self) -> torch.Tensor | None:
        """``(m,)`` fraction of evaluation examples per domain (what R&B's update needs), or ``None``."""
        return None if self._p_eval is None else self._p_eval.clone()

    @property
    def mixture(self) -> torch.Tensor:
        """The current training mixture ``p`` (uniform over non-empty domains until set)."""
        if self._sampler is not None:
            return self._sampler.mixture
        if self._p is not None:
            return self._p.clone()
        sizes = self.domain_sizes.double()
        return (sizes > 0).double() / float((sizes > 0).sum())

    def set_mixture(self, p: Sequence[float] | torch.Tensor) -> None:
        """Set the training mixture; takes effect at the next chunk the sampler draws (no DataLoader rebuild).

        Raises:
            ConfigError: wrong length or invalid values.
        """
        t = validate_mixture(p, self.num_domains, name="mixture p")
        self._p = t
        if self._sampler is not None:
            self._sampler.set_mixture(t)

    def _set_p_eval(self, p_eval: Sequence[float] | np.ndarray | torch.Tensor | None,
                    eval_domains: np.ndarray | None) -> None:
        if p_eval is not None:
            self._p_eval = validate_mixture(p_eval, self.num_domains, name="p_eval")
        elif eval_domains is not None and len(eval_domains):
            if int(eval_domains.max()) >= self.num_domains:
                raise DataError(f"evaluation domain ids go up to {int(eval_domains.max())} but there are only "
                                f"{self.num_domains} training domains; map evaluation points onto training domains.")
            counts = np.bincount(eval_domains, minlength=self.num_domains).astype(np.float64)
            self._p_eval = torch.as_tensor(counts / counts.sum())

    # ------------------------------------------------------------------ loaders
    def _train_dataset(self) -> Dataset:
        raise NotImplementedError

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """Mixture-following stream: each slot draws a domain from ``p``, then an example within it."""
        ds = self._train_dataset()
        rank, world = self._rank_world()
        self._sampler = DomainMixtureSampler(
            self.train_domains, self._p, num_domains=self.num_domains, batch_size=self.batch_size,
            num_samples=self.num_samples_per_epoch, seed=self.seed, rank=rank, world_size=world,
            track_consumption=True)
        if self._sampler_state is not None:
            self._sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return MixtureDataLoader(ds, batch_size=self.batch_size, sampler=self._sampler, collate_fn=self._collate,
                                 num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count consumed training batches (exact resume of the sampler stream)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self._sampler is not None:
            self._sampler.advance()
        return batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Sampler position and mixture (plain types)."""
        if self._sampler is not None:
            return {"sampler": self._sampler.state_dict()}
        if self._sampler_state is not None:
            return {"sampler": dict(self._sampler_state)}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; applied when the training loader is (re)built."""
        sampler_state = state_dict.get("sampler")
        if sampler_state is None:
            return
        self._p = torch.as_tensor(sampler_state["p"], dtype=torch.float64)
        if self._sampler is not None:
            self._sampler.load_state_dict(sampler_state)
        else:
            self._sampler_state = dict(sampler_state)


class TensorMixtureDataModule(_MixtureBase):
    """In-memory tensors with domain ids, trained through a :class:`DomainMixtureSampler` (R&B, arXiv 2505.00358).

    Batches: ``x``, ``labels``, ``idx`` (row in the training set), ``domain``.

    Args:
        x: ``(n, ...)`` training inputs.
        labels: ``(n,)`` or ``(n, ...)`` training targets.
        domains: ``(n,)`` training domain ids in ``0..m-1``.
        eval_x, eval_labels, eval_domains: optional evaluation split (``eval_domains`` gives ``p_eval``).
        p_eval: explicit evaluation proportions (overrides ``eval_domains``).
        num_domains: ``m`` (default ``max(domains) + 1``).
        domain_names: names for logging (default ``"0".."m-1"``).
        batch_size, eval_batch_size, num_workers: loader settings.
        seed: sampler seed (rank ``r`` uses stream ``(seed, r)``).
        num_samples_per_epoch: slots per epoch per rank (default ``ceil(n / world_size)``).
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, domains: Sequence[int] | np.ndarray | torch.Tensor,
                 eval_x: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None,
                 eval_domains: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 p_eval: Sequence[float] | torch.Tensor | None = None, num_domains: int | None = None,
                 domain_names: Sequence[str] | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, num_samples_per_epoch: int | None = None) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, num_samples_per_epoch)
        self.x, self.labels = torch.as_tensor(x), torch.as_tensor(labels)
        self.train_domains = _domain_ids(domains, "domains")
        if not (len(self.x) == len(self.labels) == len(self.train_domains)):
            raise DataError(f"x, labels and domains must have the same length; got {len(self.x)}, "
                            f"{len(self.labels)}, {len(self.train_domains)}.")
        m = int(num_domains) if num_domains is not None else int(self.train_domains.max()) + 1
        if int(self.train_domains.max()) >= m:
            raise DataError(f"domain ids go up to {int(self.train_domains.max())} but num_domains={m}.")
        self.domain_names = list(domain_names) if domain_names is not None else [str(i) for i in range(m)]
        if len(self.domain_names) != m:
            raise ConfigError(f"{len(self.domain_names)} domain names for {m} domains.")
        self.eval_x = None if eval_x is None else torch.as_tensor(eval_x)
        self.eval_labels = None if eval_labels is None else torch.as_tensor(eval_labels)
        self.eval_domains = None if eval_domains is None else _domain_ids(eval_domains, "eval_domains")
        self._set_p_eval(p_eval, self.eval_domains)

    def _train_dataset(self) -> Dataset:
        return TensorDictDataset({X: self.x, LABELS: self.labels, IDX: torch.arange(len(self.x)),
                                  DOMAIN: torch.as_tensor(self.train_domains)})

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def val_dataloader(self) -> DataLoader:
        """The evaluation split in order (requires ``eval_x`` / ``eval_labels``)."""
        if self.eval_x is None or self.eval_labels is None:
            raise ConfigError("no evaluation data: pass eval_x and eval_labels to TensorMixtureDataModule.")
        fields = {X: self.eval_x, LABELS: self.eval_labels, IDX: torch.arange(len(self.eval_x))}
        if self.eval_domains is not None:
            fields[DOMAIN] = torch.as_tensor(self.eval_domains)
        return DataLoader(TensorDictDataset(fields), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers)


class MixtureDataModule(TokenizingMixin, _MixtureBase):
    """Texts with domains, sampled by a mutable mixture; the data side of R&B (arXiv 2505.00358).

    Domains are the source's original ones (e.g. the YouTube video), or the k-means domains of a regroup result folder
    (``regroup_dir``, written by ``lightning-ws rnb regroup`` with the same source and split arguments), whose
    ``p_eval`` is then used. A regroup folder is tied to its data by a content hash of the train and eval texts (in
    order): a folder made from other, edited or reordered rows is refused. The evaluation split (validation,
    ``p_eval``) and the test split (``test_dataloader``, never used for validation) carry their domain ids too.

    Args:
        source: see :func:`lightning_ws.rnb.data.load_mixture_source` (default: YouTube comments, video = domain).
        regroup_dir: folder of a :class:`~lightning_ws.rnb.regroup.RegroupResult` for this source's training split.
        eval_fraction: held-out fraction per domain when the source has no fixed split.
        split_seed: seed of that split.
        test_fraction: test fraction per domain when the source has no fixed split (default 0.1; taken from the
            training rows, so the eval rows are those of ``test_fraction=0``).
        text_column, label_column, domain_column, split_column: column names of a ``.jsonl``/``.csv`` source (see
            :func:`~lightning_ws.rnb.data.load_mixture_source`; a missing named column is an error naming it).
        p_eval: explicit evaluation proportions (default: from the evaluation split's domains).
        tokenizer: local tokenizer folder; ``None`` = the shipped MiniLM's.
        max_length: truncation length in tokens.
        batch_size: training batch size per device.
        eval_batch_size: validation batch size (default ``2 * batch_size``).
        num_workers: DataLoader workers (the mixture is in shared memory, so workers follow updates).
        seed: sampler seed (rank ``r`` draws stream ``(seed, r)``).
        num_samples_per_epoch: slots per epoch per rank (default ``ceil(n_train / world_size)``).

    Example:
        >>> dm = MixtureDataModule("youtube_comments", batch_size=8)
        >>> dm.num_domains, dm.domain_names[0]
        (5, 'Psy')
    """

    def __init__(self, source: str = "youtube_comments", regroup_dir: str | None = None, eval_fraction: float = 0.2,
                 split_seed: int = 0, p_eval: list[float] | None = None, tokenizer: str | None = None,
                 max_length: int = 64, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, num_samples_per_epoch: int | None = None,
                 test_fraction: float = 0.1, text_column: str = "text", label_column: str | None = "label",
                 domain_column: str | None = "domain", split_column: str | None = "split") -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, num_samples_per_epoch)
        if int(max_length) < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}.")
        self.save_hyperparameters()
        self.max_length = int(max_length)
        self._tokenizer_path = tokenizer
        self._tokenizer = None
        self._datasets: dict[str, TokenizedTextDataset] = {}
        self._attach(load_mixture_source(source, eval_fraction=eval_fraction, split_seed=split_seed,
                                         test_fraction=test_fraction, text_column=text_column,
                                         label_column=label_column, domain_column=domain_column,
                                         split_column=split_column),
                     regroup_dir, p_eval)

    @classmethod
    def from_texts(cls, train_texts: Sequence[str], train_labels: Sequence[int], train_domains: Sequence[int],
                   eval_texts: Sequence[str], eval_labels: Sequence[int], eval_domains: Sequence[int] | None = None,
                   *, domain_names: Sequence[str] | None = None, p_eval: Sequence[float] | None = None,
                   test_texts: Sequence[str] | None = None, test_labels: Sequence[int] | None = None,
                   test_domains: Sequence[int] | None = None, **kwargs: Any) -> MixtureDataModule:
        """Build from in-memory lists (``kwargs``: the loader arguments of ``__init__``).

        Domain ids must be ``0..m-1`` (a negative id is a :class:`DataError`). Without ``test_texts`` there is no
        test split and :meth:`test_dataloader` raises.
        """
        dm = cls.__new__(cls)
        _MixtureBase.__init__(dm, kwargs.pop("batch_size", 32), kwargs.pop("eval_batch_size", None),
                              kwargs.pop("num_workers", 0), kwargs.pop("seed", 0),
                              kwargs.pop("num_samples_per_epoch", None))
        dm.max_length = int(kwargs.pop("max_length", 64))
        dm._tokenizer_path = kwargs.pop("tokenizer", None)
        if kwargs:
            raise ConfigError(f"unknown arguments {sorted(kwargs)}.")
        dm._tokenizer = None
        dm._datasets = {}
        tl = np.asarray(train_labels, dtype=np.int64)
        el = np.asarray(eval_labels, dtype=np.int64)
        td = _domain_ids(train_domains, "train_domains")
        ed = np.zeros(len(eval_texts), dtype=np.int64) if eval_domains is None else _domain_ids(eval_domains,
                                                                                                "eval_domains")
        te_texts = list(test_texts) if test_texts is not None else []
        if (test_labels is None) != (test_texts is None):
            raise ConfigError("pass test_texts and test_labels together.")
        tel = np.asarray(test_labels if test_labels is not None else [], dtype=np.int64)
        ted = np.zeros(len(te_texts), dtype=np.int64) if test_domains is None else _domain_ids(test_domains,
                                                                                               "test_domains")
        m = int(td.max()) + 1
        names = list(domain_names) if domain_names is not None else [str(i) for i in range(m)]
        if len(names) < m:
            raise ConfigError(f"{len(names)} domain names for domain ids up to {m - 1}.")
        data = MixtureTexts(list(train_texts), tl, td, list(eval_texts), el, ed, names,
                            int(max(tl.max(), el.max(), tel.max() if tel.size else 0) + 1), "in-memory",
                            te_texts, tel, ted)
        dm._attach(data, None, p_eval)
        if eval_domains is None and p_eval is None:
            dm._p_eval = None
        return dm

    def _attach(self, data: MixtureTexts, regroup_dir: str | None, p_eval: Sequence[float] | None) -> None:
        if not (len(data.train_texts) == len(data.train_labels) == len(data.train_domains)):
            raise DataError("train texts, labels and domains must have the same length.")
        if not (len(data.eval_texts) == len(data.eval_labels) == len(data.eval_domains)):
            raise DataError("eval texts, labels and domains must have the same length.")
        if not (len(data.test_texts) == len(data.test_labels) == len(data.test_domains)):
            raise DataError("test texts, labels and domains must have the same length.")
        self.data = data
        self._num_classes = int(data.num_classes)
        self.original_domain_names = list(data.domain_names)
        if regroup_dir is not None:
            res = RegroupResult.load(regroup_dir)
            if len(res.train_domains) != len(data.train_texts) or len(res.eval_domains) != len(data.eval_texts):
                raise DataError(
                    f"regroup result {regroup_dir} has {len(res.train_domains)} train / {len(res.eval_domains)} eval "
                    f"rows but source {data.source!r} gives {len(data.train_texts)} / {len(data.eval_texts)}; run "
                    f"`lightning-ws rnb regroup` with the same source, eval_fraction, test_fraction and split_seed.")
            saved = res.metadata.get("data_hash")
            if saved is None:
                warnings.warn(f"regroup result {regroup_dir} has no data_hash (written before content hashes): "
                              "cannot check that its domains belong to these rows in this order; re-run "
                              "`lightning-ws rnb regroup` to tie it to the data.", UserWarning, stacklevel=3)
            elif saved != texts_fingerprint(data.train_texts, data.eval_texts):
                raise DataError(
                    f"regroup result {regroup_dir} was computed on other rows than source {data.source!r} gives now "
                    "(content hash of the train/eval texts differs: the file was edited or reordered, or the split "
                    "arguments differ), so its domain ids would not match the rows. Re-run `lightning-ws rnb regroup` "
                    "on this data with the same split arguments.")
            self.train_domains = _domain_ids(res.train_domains, f"{regroup_dir} train_domains")
            self.eval_domains = _domain_ids(res.eval_domains, f"{regroup_dir} eval_domains")
            self.domain_names = [f"c{i}" for i in range(res.k)]
            self._set_p_eval(p_eval if p_eval is not None else res.p_eval, None)
        else:
            self.train_domains = _domain_ids(data.train_domains, "train domains")
            self.eval_domains = _domain_ids(data.eval_domains, "eval domains")
            self.domain_names = list(data.domain_names)
            self._set_p_eval(p_eval, self.eval_domains)

    @property
    def num_classes(self) -> int:
        """Number of classes (for linking to the model's ``num_classes``)."""
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        """Tokenise the training, evaluation and test texts (once)."""
        if "train" not in self._datasets:
            self._datasets["train"] = TokenizedTextDataset(
                self._tokenize(self.data.train_texts), self.data.train_labels,
                np.arange(len(self.data.train_texts)), {DOMAIN: self.train_domains})
        if "eval" not in self._datasets:
            self._datasets["eval"] = TokenizedTextDataset(
                self._tokenize(self.data.eval_texts), self.data.eval_labels,
                np.arange(len(self.data.eval_texts)), {DOMAIN: self.eval_domains})
        if "test" not in self._datasets and len(self.data.test_texts):
            self._datasets["test"] = TokenizedTextDataset(
                self._tokenize(self.data.test_texts), self.data.test_labels,
                np.arange(len(self.data.test_texts)), self._test_extras())

    def _train_dataset(self) -> Dataset:
        self.setup("fit")
        return self._datasets["train"]

    def _collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_collate(items, pad_id=int(self.tokenizer.pad_token_id or 0))

    def val_dataloader(self) -> DataLoader:
        """The evaluation split, in order, with its domain ids."""
        self.setup("validate")
        return DataLoader(self._datasets["eval"], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers)

    def _test_extras(self) -> dict[str, np.ndarray]:
        # with a regroup folder the test rows have no regrouped domain (Regroup maps train and eval only), so test
        # batches then carry no "domain" rather than ids from another id space
        if self.domain_names != list(self.data.domain_names):
            return {}
        return {DOMAIN: _domain_ids(self.data.test_domains, "test domains")}

    def test_dataloader(self) -> DataLoader:
        """The held-out test split, in order (never the validation split); batches carry ``domain`` unless the
        domains come from a regroup folder.

        Raises:
            ConfigError: when there is no test split (``test_fraction=0`` with a source without a fixed test split,
                or ``from_texts`` without ``test_texts``).
        """
        if not len(self.data.test_texts):
            raise ConfigError("this MixtureDataModule has no test split: set test_fraction > 0, give the file 'test' "
                              "rows in its split column, or pass test_texts to from_texts. (The validation split is "
                              "never reused as a test split: checkpoints chosen on it would be scored on it.)")
        self.setup("test")
        return DataLoader(self._datasets["test"], batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate, num_workers=self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader` (``lightning-ws predict``)."""
        return self.val_dataloader()
