"""LightningDataModule for CLIP training on DataComp-layout webdataset shards.

:class:`WebDatasetDataModule` streams ``(image, caption)`` batches from shards with
:class:`~lightning_ws.datacomp.shards.ShardStream` (rank and worker splitting, resampling, equal-length epochs on
every rank, seeded shuffling) and provides two validation sets:

* zero-shot classification: the shipped held-out CIFAR-10 test images (never in the demo pool), with class names and
  prompt templates (:attr:`zeroshot_classnames`, :attr:`zeroshot_templates`);
* image-text retrieval: the shipped COCO photographs with five captions each.

Epoch propagation: the train loader's sampler has ``set_epoch``, which Lightning calls at the start of every epoch;
it writes the epoch into a shared counter the workers read, so every epoch reshuffles (also with non-persistent
workers). Exact resume: on a restart, the batches the trainer already consumed in the current epoch are skipped on
the raw byte stream (num_workers >= 0; not with persistent workers); a checkpoint written on an epoch's last batch
resumes at the start of the next epoch (the epoch is taken from the checkpoint, because Lightning creates the first
iterator of a resumed fit before it calls ``set_epoch``).

Batches: ``{"image": (B, 3, S, S) float, "text": (B, T) long, "uid": list[str], "idx": (B,) int64}`` (+ ``"domain"``
with ``domain_field`` or with domains).

**Domains (R&B).** ``train_shards`` may be a mapping ``{domain name: shard spec}``. The module then satisfies
:class:`lightning_ws.contracts.SupportsMixture`: each domain is its own shard stream, every batch slot draws a domain
from the current mixture (:class:`~lightning_ws.datacomp.shards.MixtureShardStream`), ``batch["domain"]`` holds the
domain index, and ``set_mixture(p)`` changes the draws without rebuilding the loader. A new mixture applies from a
fixed number of batches after the one the trainer consumes next (``mixture_lag``, at least the loader's look-ahead),
which keeps runs with workers reproducible and resumes exact (see :class:`~lightning_ws.datacomp.shards.MixtureSchedule`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _InfiniteConstantSampler

from lightning_ws.contracts import DOMAIN, IDX, IMAGE, IMAGE_IDX, LABEL, TEXT, UID
from lightning_ws.datacomp.clip import clip_image_transform, get_tokenizer
from lightning_ws.datacomp.pool import CIFAR10_CLASSES, ZEROSHOT_TEMPLATES, load_cifar10_subset, load_coco_captions
from lightning_ws.datacomp.shards import (
    MixtureSchedule,
    MixtureShardStream,
    Sample,
    ShardStream,
    SharedEpoch,
    array_to_uids,
    decode_image,
    list_shards,
    load_uid_array,
)
from lightning_ws.errors import ConfigError, check_choice

#: Metadata key the mixture stream writes each sample's domain index under.
_DOMAIN_META = "__domain__"

__all__ = ["WebDatasetDataModule", "ClipSampleMap", "collate_clip"]


class ClipSampleMap:
    """Decode a shard sample into ``(image tensor, token ids, uid)`` (picklable, runs in workers)."""

    def __init__(self, image_size: int, context_length: int, domain_field: str | None = None) -> None:
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.domain_field = domain_field
        self._transform = None
        self._tokenize = None

    def __getstate__(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "context_length": self.context_length,
                "domain_field": self.domain_field}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def image(self, data: bytes) -> torch.Tensor:
        if self._transform is None:
            self._transform = clip_image_transform(self.image_size)
        return self._transform(decode_image(data))

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenize is None:
            self._tokenize = get_tokenizer(self.context_length)
        return self._tokenize(texts)

    def __call__(self, s: Sample) -> tuple[torch.Tensor, torch.Tensor, str, int, int]:
        domain = -1
        if self.domain_field is not None:
            value = s.meta.get(self.domain_field)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"sample {s.uid}: metadata field {self.domain_field!r} must be an integer >= 0 "
                                  f"(a domain id), got {value!r}.")
            domain = value
        idx = s.meta.get(IDX)
        idx = idx if isinstance(idx, int) else int(s.uid[:15], 16)
        return self.image(s.image), self.tokens([s.caption])[0], s.uid, idx, domain


def collate_clip(items: list[tuple[torch.Tensor, torch.Tensor, str, int, int]]) -> dict[str, Any]:
    """Batch dict: ``image``, ``text``, ``uid`` (hex strings), ``idx`` (int64 from the uid's first 60 bits, a sample
    id for sample-scoring callbacks) and, with a domain field, ``domain``."""
    out = {IMAGE: torch.stack([i[0] for i in items]), TEXT: torch.stack([i[1] for i in items]),
           UID: [i[2] for i in items], IDX: torch.tensor([i[3] for i in items], dtype=torch.int64)}
    if items[0][4] >= 0:
        out[DOMAIN] = torch.tensor([i[4] for i in items], dtype=torch.int64)
    return out


class _EpochSampler(_InfiniteConstantSampler):
    """The iterable loader's placeholder sampler, with the ``set_epoch`` Lightning calls each epoch."""

    def __init__(self, dataset: ShardStream) -> None:
        super().__init__()
        self._dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self._dataset.set_epoch(epoch)


class _ShardLoader(DataLoader):
    """DataLoader over a :class:`ShardStream` whose ``sampler.set_epoch`` reaches the workers.

    Stateful for Lightning (``state_dict``/``load_state_dict``: the epoch and the batches of it consumed, as the data
    module records them), so a mid-epoch resume skips what was consumed and Lightning does not warn that the loader
    is "not resumable".
    """

    def __init__(self, dataset: ShardStream, resume: dict[str, int] | None = None, datamodule: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        # DataLoader forbids passing a sampler with an IterableDataset; replace its placeholder with one that has
        # set_epoch (same iteration behaviour).
        object.__setattr__(self, "sampler", _EpochSampler(dataset))
        object.__setattr__(self, "_resume", resume)
        object.__setattr__(self, "_datamodule", datamodule)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed"}`` while training (the data module's position), else ``{}``."""
        dm = self._datamodule
        return dict(dm.state_dict()) if dm is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed batches of the interrupted epoch at the next iteration (if it is that epoch)."""
        if state:
            object.__setattr__(self, "_resume", {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])})

    def __iter__(self):
        resume = self._resume
        if resume is not None:
            # The first iterator after a restart is created by Lightning's ``setup_data`` *before* it calls
            # ``sampler.set_epoch``, so the epoch comes from the checkpoint, not from the shared counter. A checkpoint
            # written on an epoch's last batch (inside the loop, before the epoch closed) resumes at the start of the
            # next epoch, as Lightning does (it marks that epoch finished); otherwise the same epoch continues after
            # the batches already consumed.
            epoch, consumed = int(resume["epoch"]), int(resume["consumed"])
            if consumed >= int(self.dataset.batches_per_epoch or 0) > 0:
                epoch, consumed = epoch + 1, 0
            self.dataset.set_epoch(epoch)
            self.dataset.skip_batches = consumed
        object.__setattr__(self, "_resume", None)
        it = super().__iter__()
        self.dataset.skip_batches = 0  # one epoch only (the iterator snapshotted it)
        return it


class _ImageLabelSet(Dataset):
    def __init__(self, images: list[bytes], labels: list[int], fmap: ClipSampleMap) -> None:
        self.images, self.labels, self.fmap = images, labels, fmap

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {IMAGE: self.fmap.image(self.images[i]), LABEL: torch.tensor(self.labels[i]), IDX: torch.tensor(i)}


class _PairSet(Dataset):
    def __init__(self, images: list[bytes], captions: list[str], image_idx: list[int], fmap: ClipSampleMap) -> None:
        self.images, self.captions, self.image_idx, self.fmap = images, captions, image_idx, fmap
        self.tokens = fmap.tokens(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {IMAGE: self.fmap.image(self.images[self.image_idx[i]]), TEXT: self.tokens[i],
                IMAGE_IDX: torch.tensor(self.image_idx[i])}


class WebDatasetDataModule(pl.LightningDataModule):
    """CLIP data from DataComp-layout shards (see module docstring).

    Args:
        train_shards: shard folder, brace pattern, file or list; or a mapping ``{domain name: spec}`` for a
            domain mixture (see module docstring).
        batch_size: per-rank batch size.
        batches_per_epoch: batches per rank per epoch (``with_epoch``); default: shard samples // (batch x world),
            counted once from the shards' ``.json`` members at setup.
        keep_uids: optional DataComp uid ``.npy`` (``u8,u8``): train only on these samples (filtered on the fly).
        image_size: training / evaluation resolution (must match the model's vision config).
        context_length: text tokens (must match the model's text config).
        resampled: draw shards with replacement.
        shuffle_buffer: per-worker sample shuffle buffer.
        num_workers: DataLoader workers (each gets whole shards).
        seed: stream seed (shard order, shuffle buffer).
        zeroshot: ``"cifar10"`` (shipped held-out images) or None.
        zeroshot_path: another ``<class>/<nnnn>.jpg`` tar for the zero-shot set (class names from folder names must
            be CIFAR-10's); ``None``: the shipped subset.
        retrieval: ``"coco"`` (shipped 154 photos x 5 captions) or None.
        val_batch_size: batch size of the evaluation sets.
        domain_field: a ``.json`` metadata field with integer domain ids, passed as ``batch["domain"]`` (for
            domain-mixing callbacks such as R&B).
        demo_pool_if_missing: when ``train_shards`` is a folder that does not exist, build the shipped noisy demo
            pool there first (:func:`lightning_ws.datacomp.pool.build_pool`, seed 0; rank zero, in
            ``prepare_data``), as ``lightning-ws datacomp build-pool`` would. With a ``{domain: folder}`` mapping,
            each missing folder gets a demo domain built from a disjoint slice of the shipped images: the first
            domain clean, the others with 50% mismatched and 30% junk captions.
        mixture: initial domain mixture (domains only; default uniform, R&B's stratified start).
        p_eval: evaluation proportions per domain that R&B's update targets (domains only; default: proportional
            to the domains' training sample counts, i.e. the pool's own mix).
        mixture_lag: batches between the one the trainer consumes next and the first batch a new mixture applies
            to (default ``2 + num_workers * 2``: Lightning's one-batch prefetch plus the workers' prefetch).
    """

    def __init__(self, train_shards: str | list[str] | dict[str, str | list[str]], *, batch_size: int = 64,
                 batches_per_epoch: int | None = None,
                 keep_uids: str | None = None, image_size: int = 32, context_length: int = 32,
                 resampled: bool = False, shuffle_buffer: int = 1000, num_workers: int = 0, seed: int = 0,
                 zeroshot: Literal["cifar10"] | None = "cifar10", zeroshot_path: str | None = None, retrieval: Literal["coco"] | None = "coco",
                 val_batch_size: int = 256, domain_field: str | None = None,
                 demo_pool_if_missing: bool = False, mixture: list[float] | None = None,
                 p_eval: list[float] | None = None, mixture_lag: int | None = None) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got {batch_size} / {val_batch_size}.")
        check_choice("zeroshot", zeroshot, Literal["cifar10"] | None)
        check_choice("retrieval", retrieval, Literal["coco"] | None)
        if keep_uids is not None and not Path(keep_uids).is_file():
            raise ConfigError(f"keep_uids file {keep_uids} not found (a DataComp uid .npy).")
        self.save_hyperparameters()
        self.train_shards = train_shards
        self._domains: list[str] | None = None
        if isinstance(train_shards, Mapping):
            if not train_shards:
                raise ConfigError("train_shards is an empty mapping; give {domain name: shard spec}.")
            if domain_field is not None:
                raise ConfigError("domain_field reads domain ids from metadata; with a {domain: shards} mapping the "
                                  "domain is the mapping key. Give one or the other.")
            self._domains = [str(k) for k in train_shards]
        elif mixture is not None or p_eval is not None:
            raise ConfigError("mixture / p_eval need domains: give train_shards as {domain name: shard spec}.")
        if mixture_lag is not None and mixture_lag < 1:
            raise ConfigError(f"mixture_lag must be >= 1, got {mixture_lag}.")
        self.mixture_lag = int(mixture_lag) if mixture_lag is not None else 2 + 2 * int(num_workers)
        self._mixture_arg = self._check_mixture(mixture, "mixture") if mixture is not None else None
        self._p_eval_arg = self._check_mixture(p_eval, "p_eval") if p_eval is not None else None
        self._schedule: MixtureSchedule | None = None
        self._schedule_state: dict[str, Any] | None = None
        self._domain_sizes: torch.Tensor | None = None
        self.batch_size, self.batches_per_epoch = int(batch_size), batches_per_epoch
        self.keep_uids, self.image_size, self.context_length = keep_uids, int(image_size), int(context_length)
        self.resampled, self.shuffle_buffer, self.num_workers = resampled, int(shuffle_buffer), int(num_workers)
        self.seed = int(seed)
        self.zeroshot, self.zeroshot_path, self.retrieval = zeroshot, zeroshot_path, retrieval
        self.val_batch_size = int(val_batch_size)
        self.domain_field = domain_field
        self.demo_pool_if_missing = bool(demo_pool_if_missing)
        self.zeroshot_classnames: list[str] = list(CIFAR10_CLASSES)
        self.zeroshot_templates: list[str] = list(ZEROSHOT_TEMPLATES)
        self._epoch = SharedEpoch(0)
        self._resume: dict[str, int] | None = None
        self._train: ShardStream | MixtureShardStream | None = None
        self._stream_started = False
        self._val: list[Dataset] = []
        self.val_names: list[str] = []

    @property
    def sample_map(self) -> ClipSampleMap:
        field = _DOMAIN_META if self._domains is not None else self.domain_field
        return ClipSampleMap(self.image_size, self.context_length, field)

    # ------------------------------------------------------------------ SupportsMixture
    def _check_mixture(self, p: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
        from lightning_ws.rnb.functional import validate_mixture

        return validate_mixture(p, self.num_domains, name=name)

    def _require_domains(self, what: str) -> list[str]:
        if self._domains is None:
            raise ConfigError(f"{what} needs domains: give train_shards as a mapping {{domain name: shard spec}} "
                              f"(e.g. in YAML `train_shards: {{web: shards/web, books: shards/books}}`).")
        return self._domains

    @property
    def num_domains(self) -> int:
        """Number of domains (1 without a domain mapping)."""
        return len(self._domains) if self._domains is not None else 1

    @property
    def domain_names(self) -> list[str]:
        return list(self._domains) if self._domains is not None else ["all"]

    @property
    def domain_sizes(self) -> torch.Tensor:
        """``(m,)`` training samples per domain (after ``keep_uids``), counted from the shards' ``.json`` members."""
        if self._domain_sizes is None:
            keep = self._keep_filter()
            specs = list(self.train_shards.values()) if self._domains is not None else [self.train_shards]
            self._domain_sizes = torch.tensor([_count_samples(list_shards(s), keep) for s in specs],
                                              dtype=torch.int64)
        return self._domain_sizes.clone()

    @property
    def p_eval(self) -> torch.Tensor | None:
        """The evaluation mixture R&B targets: ``p_eval`` if given, else proportional to :attr:`domain_sizes`."""
        if self._domains is None:
            return None
        if self._p_eval_arg is not None:
            return self._p_eval_arg.clone()
        sizes = self.domain_sizes.double()
        return sizes / sizes.sum()

    @property
    def mixture(self) -> torch.Tensor:
        """The most recently set training mixture (it reaches the data ``mixture_lag`` batches later)."""
        self._require_domains("mixture")
        if self._schedule is not None:
            return torch.tensor(self._schedule.current(), dtype=torch.float64)
        if self._mixture_arg is not None:
            return self._mixture_arg.clone()
        return torch.full((self.num_domains,), 1.0 / self.num_domains, dtype=torch.float64)

    def set_mixture(self, p: Sequence[float] | torch.Tensor) -> None:
        """Set the training mixture without rebuilding the loader (see module docstring for when it applies).

        Raises:
            ConfigError: no domains, or ``p`` of the wrong length / not a distribution.
        """
        self._require_domains("set_mixture")
        t = self._check_mixture(p, "mixture p")
        trainer = self._trainer_or_none()
        if self._schedule is None or trainer is None or not self._stream_started:
            self._mixture_arg = t  # before training: the mixture of the first batch
            if self._schedule is not None:
                self._schedule.reset(t.tolist())
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        self._schedule.set(t.tolist(), epoch=int(trainer.current_epoch), next_batch=int(progress.ready))

    def _trainer_or_none(self) -> Any:
        try:
            return self.trainer
        except RuntimeError:
            return None

    def _keep_filter(self) -> Any:
        if self.keep_uids is None:
            return None
        return _UidFilter(array_to_uids(load_uid_array(self.keep_uids)))

    def prepare_data(self) -> None:
        if not self.demo_pool_if_missing:
            return
        from lightning_ws.datacomp.pool import NoiseSpec, build_pool
        from lightning_ws.datacomp.shards import write_shards

        if self._domains is not None:
            # demo domains: disjoint slices of the shipped images; the first domain clean, the others noisy
            targets = [Path(str(v)) for v in self.train_shards.values()]
            images = load_cifar10_subset("pool")
            k = len(targets)
            for i, target in enumerate(targets):
                if target.exists() or "{" in str(target):
                    continue
                noise = NoiseSpec(0, 0, 0, 0) if i == 0 else NoiseSpec(mismatch=0.5, junk=0.3)
                write_shards(build_pool(images[i::k], noise, seed=1 + i), target, samples_per_shard=128)
            return
        target = Path(self.train_shards) if isinstance(self.train_shards, (str, Path)) else None
        if target is not None and not target.exists() and "{" not in str(target):
            write_shards(build_pool(load_cifar10_subset("pool"), seed=0), target, samples_per_shard=256)

    def _world(self) -> int:
        return int(getattr(self.trainer, "world_size", 1) or 1) if self.trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self._train is None and self._domains is not None:
            self._train = self._mixture_stream()
        if stage in (None, "fit") and self._train is None:
            keep = self._keep_filter()
            nb = self.batches_per_epoch
            stream = ShardStream(self.train_shards, map_sample=self.sample_map, collate=collate_clip,
                                 batch_size=self.batch_size, batches_per_epoch=1, resampled=self.resampled,
                                 shuffle_buffer=self.shuffle_buffer, seed=self.seed, epoch=self._epoch, keep=keep)
            if nb is None:
                n = _count_samples(stream.urls, keep)
                nb = n // (self.batch_size * self._world())
                if nb < 1:
                    raise ConfigError(f"{n} training samples are fewer than one batch of {self.batch_size} per rank "
                                      f"on {self._world()} rank(s); lower batch_size or add data.")
            stream.batches_per_epoch = int(nb)
            self._train = stream
        if stage in (None, "fit", "validate") and not self._val:
            fmap = self.sample_map
            if self.zeroshot == "cifar10":
                rows = load_cifar10_subset("heldout" if self.zeroshot_path is None else "all", self.zeroshot_path)
                self._val.append(_ImageLabelSet([r[1] for r in rows], [r[2] for r in rows], fmap))
                self.val_names.append("zeroshot")
            if self.retrieval == "coco":
                images, rows = load_coco_captions()
                names = sorted(images)
                index = {n: i for i, n in enumerate(names)}
                self._val.append(_PairSet([images[n] for n in names], [r["caption"] for r in rows],
                                          [index[r["image"]] for r in rows], fmap))
                self.val_names.append("retrieval")

    def _mixture_stream(self) -> MixtureShardStream:
        sizes = self.domain_sizes
        nb = self.batches_per_epoch
        if nb is None:
            nb = int(sizes.sum()) // (self.batch_size * self._world())
            if nb < 1:
                raise ConfigError(f"{int(sizes.sum())} training samples are fewer than one batch of {self.batch_size} "
                                  f"per rank on {self._world()} rank(s); lower batch_size or add data.")
        empty = [n for n, k in zip(self.domain_names, sizes.tolist()) if k == 0]
        if empty:
            raise ConfigError(f"domain(s) {empty} have no training samples (after keep_uids); drop them from "
                              f"train_shards.")
        self._schedule = MixtureSchedule(self.mixture.tolist(), lag=self.mixture_lag)
        if self._schedule_state is not None:
            self._schedule.load_state_dict(self._schedule_state)
            self._schedule_state = None
        return MixtureShardStream(list(self.train_shards.values()), map_sample=self.sample_map, collate=collate_clip,
                                  batch_size=self.batch_size, batches_per_epoch=int(nb), schedule=self._schedule,
                                  shuffle_buffer=self.shuffle_buffer, seed=self.seed, epoch=self._epoch,
                                  keep=self._keep_filter(), domain_key=_DOMAIN_META)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        resume, self._resume = self._resume, None
        self._stream_started = True
        return _ShardLoader(self._train, resume=resume, datamodule=self, num_workers=self.num_workers,
                            persistent_workers=False,
                            pin_memory=False)

    def state_dict(self) -> dict[str, Any]:
        """Where the training stream stands: the epoch and the batches of it handed to the loop so far."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        state: dict[str, Any] = {"epoch": int(trainer.current_epoch),
                                 "consumed": int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)}
        if self._schedule is not None:
            state["mixture_schedule"] = self._schedule.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])} if state else None
        if state and "mixture_schedule" in state:
            if self._schedule is not None:
                self._schedule.load_state_dict(state["mixture_schedule"])
            else:
                self._schedule_state = dict(state["mixture_schedule"])

    def val_dataloader(self) -> list[DataLoader]:
        if not self._val:
            self.setup("validate")
        return [DataLoader(ds, batch_size=self.val_batch_size, shuffle=False, num_workers=0) for ds in self._val]

    def predict_dataloader(self) -> DataLoader:
        """The zero-shot classification set, in order (``lightning-ws predict``: class probabilities per image)."""
        if not self._val:
            self.setup("validate")
        if "zeroshot" not in self.val_names:
            raise ConfigError("predict classifies the zero-shot set, and this data module has none: set zeroshot "
                              "(e.g. cifar10). For DataComp filter signals use configs/predict/clip_signals.yaml.")
        ds = self._val[self.val_names.index("zeroshot")]
        return DataLoader(ds, batch_size=self.val_batch_size, shuffle=False, num_workers=0)


class _UidFilter:
    def __init__(self, uids: Sequence[str]) -> None:
        self.uids = frozenset(uids)

    def __call__(self, s: Sample) -> bool:
        return s.uid in self.uids


def _count_samples(urls: Sequence[str], keep: Any) -> int:
    """Samples in the shards (reading only tar headers, plus ``.json`` members when a uid filter is given)."""
    import json
    import tarfile

    n = 0
    for url in urls:
        with tarfile.open(url) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".json"):
                    if keep is None:
                        n += 1
                    else:
                        uid = json.loads(tf.extractfile(m).read()).get(UID, "")
                        n += uid in keep.uids
    return n



class ShardSignalDataModule(pl.LightningDataModule):
    """``predict`` data for the filter-signal pass: one pass over the shards that have no signal cache yet, each
    rank and worker reading whole shards (:mod:`lightning_ws.datacomp.signals`).

    Args:
        shards: shard folder, brace pattern, file or list.
        cache_dir: where the caches go (shards already cached there are skipped).
        batch_size: samples per batch.
        clip_image_size, context_length: CLIP inputs (``clip_image_size=None``: no CLIP score).
        det_image_size: detector input size (None: no detector).
        num_workers: DataLoader workers.
    """

    def __init__(self, shards: str | list[str], cache_dir: str, *, batch_size: int = 256,
                 clip_image_size: int | None = 32, context_length: int = 32, det_image_size: int | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.shards, self.cache_dir = shards, cache_dir
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.fmap_args = (clip_image_size, context_length, det_image_size)
        self.pending: list[str] = []

    def predict_dataloader(self) -> DataLoader:
        from lightning_ws.datacomp.signals import SignalSampleMap, collate_signals, pending_shards

        self.pending = pending_shards(self.shards, self.cache_dir)
        if not self.pending:
            raise ConfigError(f"every shard already has a signal cache in {self.cache_dir}; delete them to recompute.")
        stream = ShardStream(self.pending, map_sample=SignalSampleMap(*self.fmap_args), collate=collate_signals,
                             batch_size=self.batch_size, batches_per_epoch=None, allow_idle_workers=True)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)
