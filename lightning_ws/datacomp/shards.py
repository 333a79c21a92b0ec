"""DataComp-layout webdataset shards: write, read, stream (Lightning-free).

Layout (as in DataComp, arXiv 2304.14108, ``mlfoundations/datacomp``): ``<dir>/00000000.tar, 00000001.tar, ...``;
each sample is ``<key>.jpg`` (or ``.png``), ``<key>.txt`` (the caption) and ``<key>.json`` (metadata with a 128-bit
``uid`` as 32 hex characters, plus ``caption``, ``width``, ``height`` and whatever else the writer was given).
Reading and writing use the ``webdataset`` library (``TarWriter``, ``tarfile_to_samples``).

:class:`ShardStream` is the streaming dataset used for training and for the filter-signal pass. What it adds to a
plain ``wds.WebDataset``:

* **rank and worker splitting** with a check: every (rank, worker) pair must get at least one shard (otherwise it
  would silently yield nothing and DDP would hang or drop data);
* **resampling** (shards drawn with replacement, seeded by ``seed, epoch, rank, worker``) or **shuffled passes**
  (one permutation per epoch, identical on every rank, then split);
* **equal epochs**: ``batches_per_epoch`` fixes how many batches every rank yields per epoch (``with_epoch``), so all
  DDP ranks run the same number of steps; a rank whose shards run out starts a new pass over them;
* **epoch propagation into workers**: the epoch lives in a :class:`SharedEpoch` (a ``multiprocessing.Value``), so
  DataLoader workers, persistent or not, see the epoch the trainer set (webdataset's own counters live in each
  worker's copy and stay at 0 with non-persistent workers);
* **exact resume**: ``skip_batches`` skips the first batches of an epoch on the raw byte stream (before decoding).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError

__all__ = [
    "Sample",
    "SharedEpoch",
    "ShardStream",
    "write_shards",
    "list_shards",
    "iter_shard",
    "iter_shards",
    "make_uid",
    "uids_to_array",
    "array_to_uids",
    "save_uid_array",
    "load_uid_array",
    "raw_tar_read",
    "MixtureSchedule",
    "MixtureShardStream",
]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    """One image-caption pair as stored in a shard: encoded image bytes, caption, metadata (``uid`` required)."""

    image: bytes
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    ext: str = "jpg"

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])


def make_uid(*parts: Any) -> str:
    """A 128-bit uid (32 hex characters) from any identifying parts, as DataComp's md5-based uids."""
    return hashlib.md5("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _check_uid(uid: str) -> str:
    uid = str(uid).lower()
    if len(uid) != 32 or any(c not in "0123456789abcdef" for c in uid):
        raise DataError(f"uid must be 32 hexadecimal characters (128 bits, as in DataComp), got {uid!r}.")
    return uid


def uids_to_array(uids: Iterable[str]) -> np.ndarray:
    """Hex uids -> DataComp's structured ``u8,u8`` array (high and low 64 bits), in the given order."""
    pairs = [(int(u[:16], 16), int(u[16:], 16)) for u in map(_check_uid, uids)]
    return np.array(pairs, dtype="u8,u8")


def array_to_uids(arr: np.ndarray) -> list[str]:
    """Inverse of :func:`uids_to_array`."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in arr.tolist()]


def save_uid_array(path: str | os.PathLike, uids: Iterable[str]) -> Path:
    """Write a DataComp submission: sorted, unique ``u8,u8`` uids in a ``.npy`` file (atomically, no pickle)."""
    arr = np.unique(uids_to_array(list(uids)))  # np.unique sorts structured arrays lexicographically (hi, lo)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    os.replace(tmp, path)
    return path


def load_uid_array(path: str | os.PathLike) -> np.ndarray:
    """Read a uid ``.npy`` written by :func:`save_uid_array` (or DataComp's tooling)."""
    arr = np.load(path, allow_pickle=False)
    if arr.dtype != np.dtype("u8,u8"):
        raise DataError(f"{path}: expected dtype 'u8,u8' (DataComp uid array), got {arr.dtype}.")
    return arr


# ------------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------------

def write_shards(samples: Iterable[Sample], out_dir: str | os.PathLike, *, samples_per_shard: int = 1000,
                 start_index: int = 0, overwrite: bool = False) -> list[Path]:
    """Write samples into DataComp-layout shards ``<out_dir>/%08d.tar`` (each shard written atomically).

    Keys are the running sample index (``%09d``), as DataComp's downloader names them; the uid is in ``.json``.
    Duplicate uids are an error. Returns the shard paths.

    Raises:
        ConfigError: ``samples_per_shard < 1``, or shards exist in ``out_dir`` and ``overwrite`` is false.
    """
    from lightning_ws.extras import require
    require("webdataset", "datacomp", "webdataset shards")
    import webdataset as wds

    if samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard must be >= 1, got {samples_per_shard}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite and any(out.glob("*.tar")):
        raise ConfigError(f"{out} already holds .tar shards; pass overwrite=True or choose an empty folder "
                          f"(nothing was written).")
    paths: list[Path] = []
    seen: set[str] = set()
    writer = None
    tmp: Path | None = None
    count = 0
    key = 0

    def close() -> None:
        nonlocal writer, tmp
        if writer is not None:
            writer.close()
            final = tmp.with_suffix("")  # drop ".part"
            os.replace(tmp, final)
            paths.append(final)
            writer, tmp = None, None

    try:
        for s in samples:
            uid = _check_uid(s.meta.get("uid", ""))
            if uid in seen:
                raise DataError(f"duplicate uid {uid} in the samples to write.")
            seen.add(uid)
            if writer is None or count >= samples_per_shard:
                close()
                tmp = out / f"{start_index + len(paths):08d}.tar.part"
                writer = wds.TarWriter(str(tmp))
                count = 0
            ext = s.ext.lower().lstrip(".")
            if ext not in IMAGE_EXTS:
                raise DataError(f"image extension must be one of {IMAGE_EXTS}, got {s.ext!r}.")
            meta = dict(s.meta, uid=uid, caption=s.caption)
            writer.write({"__key__": f"{key:09d}", ext: s.image, "txt": s.caption,
                          "json": json.dumps(meta, sort_keys=True)})
            count += 1
            key += 1
        close()
    finally:
        if writer is not None:  # an error mid-shard: drop the partial file, keep the finished shards
            writer.close()
            if tmp is not None and tmp.exists():
                tmp.unlink()
    return paths


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------

def list_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve a shard spec: a folder (all ``*.tar`` in it, sorted), a brace pattern ``a/{00000000..00000009}.tar``,
    a single file, or a list of those."""
    from lightning_ws.extras import require
    require("braceexpand", "datacomp", "shard brace patterns")
    import braceexpand

    if isinstance(spec, (list, tuple)):
        return [u for s in spec for u in list_shards(s)]
    spec = str(spec)
    p = Path(spec)
    if p.is_dir():
        urls = sorted(str(x) for x in p.glob("*.tar"))
        if not urls:
            raise DataFileNotFoundError(f"no .tar shards in {p}.")
        return urls
    urls = list(braceexpand.braceexpand(spec))
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise DataFileNotFoundError(f"shard(s) not found: {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                                    f"(spec {spec!r}).")
    return urls


def _raw_samples(urls: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Undecoded samples (``{"__key__", "__url__", ext: bytes}``) of the given shards, via webdataset."""
    from lightning_ws.extras import require
    require("webdataset", "datacomp", "webdataset shards")
    import webdataset as wds

    yield from wds.tarfile_to_samples()(({"url": u} for u in urls))


def _to_sample(raw: dict[str, Any]) -> Sample:
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None or "json" not in raw:
        raise DataError(f"sample {raw.get('__key__')} in {raw.get('__url__')} lacks an image (.jpg/.png) or .json; "
                        f"DataComp-layout shards hold <key>.jpg, <key>.txt and <key>.json.")
    meta = json.loads(raw["json"])
    caption = raw["txt"].decode("utf-8") if "txt" in raw else str(meta.get("caption", ""))
    if "uid" not in meta:
        raise DataError(f"sample {raw.get('__key__')} in {raw.get('__url__')} has no 'uid' in its .json.")
    meta["__url__"] = raw.get("__url__")
    return Sample(image=raw[ext], caption=caption, meta=meta, ext=ext)


def iter_shard(url: str) -> Iterator[Sample]:
    """The samples of one shard, in order (images stay encoded)."""
    for raw in _raw_samples([url]):
        yield _to_sample(raw)


def iter_shards(spec: str | Sequence[str]) -> Iterator[Sample]:
    """The samples of every shard in ``spec`` (see :func:`list_shards`), in order."""
    for url in list_shards(spec):
        yield from iter_shard(url)


def raw_tar_read(urls: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Baseline reader for benchmarks: every member of every tar with plain :mod:`tarfile` (no grouping)."""
    for url in urls:
        with tarfile.open(url) as tf:
            for m in tf:
                if m.isfile():
                    yield m.name, tf.extractfile(m).read()


def decode_image(data: bytes) -> Any:
    """Encoded bytes -> RGB ``PIL.Image``."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------------------------------
# Streaming dataset
# ------------------------------------------------------------------------------------------------------------------

class SharedEpoch:
    """An epoch counter shared with DataLoader worker processes (a ``multiprocessing.Value``)."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = mp.Value("i", int(epoch))

    def set(self, epoch: int) -> None:
        self._value.value = int(epoch)

    def get(self) -> int:
        return int(self._value.value)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class _Stream(IterableDataset):
    """What both shard streams share: the shared epoch counter, the resume offset, the rank/world (set, or read from
    ``torch.distributed`` / the environment); subclasses yield an epoch's batches from ``_generate``."""

    epoch: SharedEpoch
    skip_batches: int
    _rank: int | None
    _world: int | None

    def __iter__(self) -> Iterator[Any]:
        # snapshot the epoch and the resume offset now (not lazily on the first next())
        return self._generate(self.epoch.get(), int(self.skip_batches))

    def _generate(self, epoch: int, skip: int) -> Iterator[Any]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def rank_world(self) -> tuple[int, int]:
        rank, world = _rank_world()
        return (self._rank if self._rank is not None else rank), (self._world if self._world is not None else world)


class ShardStream(_Stream):
    """Stream decoded, batched samples from DataComp-layout shards (an ``IterableDataset``; see module docstring).

    Args:
        urls: shard spec (folder, brace pattern, file or list; see :func:`list_shards`).
        map_sample: ``Sample -> item`` (decode, transform, tokenize); runs in the workers.
        collate: ``list[item] -> batch``.
        batch_size: samples per batch (per rank).
        batches_per_epoch: batches every rank yields per epoch (``None``: one pass over this rank's shards, which
            may differ between ranks; only safe with one process).
        resampled: draw shards with replacement (seeded) instead of passes over a per-epoch permutation.
        shuffle_buffer: sample shuffle buffer per worker (0 = keep shard order).
        seed: base seed; each (epoch, rank, worker) gets its own generator derived from it.
        epoch: shared epoch counter (set by the datamodule / trainer).
        rank, world_size: override the distributed rank and size (default: from ``torch.distributed``).
        keep: optional ``Sample -> bool`` applied before decoding (e.g. a uid set from a filter).
        drop_last: drop a final short batch (the remainder of a pass); ignored when ``batches_per_epoch`` is set.
        allow_idle_workers: with one pass (``batches_per_epoch=None``), let a worker without a shard yield nothing
            instead of raising (for ``predict``, where ranks need not stay in step).
    """

    def __init__(self, urls: str | Sequence[str], *, map_sample: Callable[[Sample], Any],
                 collate: Callable[[list[Any]], Any], batch_size: int, batches_per_epoch: int | None = None,
                 resampled: bool = False, shuffle_buffer: int = 0, seed: int = 0, epoch: SharedEpoch | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 keep: Callable[[Sample], bool] | None = None, drop_last: bool = False,
                 allow_idle_workers: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ConfigError(f"batches_per_epoch must be >= 1 or None, got {batches_per_epoch}.")
        if shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}.")
        self.urls = list_shards(urls)
        self.map_sample, self.collate = map_sample, collate
        self.batch_size, self.batches_per_epoch = int(batch_size), batches_per_epoch
        self.resampled, self.shuffle_buffer, self.seed = bool(resampled), int(shuffle_buffer), int(seed)
        self.epoch = epoch if epoch is not None else SharedEpoch(0)
        self._rank, self._world = rank, world_size
        self.keep, self.drop_last = keep, drop_last
        self.allow_idle_workers = bool(allow_idle_workers) and batches_per_epoch is None
        self.skip_batches = 0  # set by the datamodule on a mid-epoch resume; applies to the next epoch started

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("ShardStream has no length without batches_per_epoch")
        return self.batches_per_epoch

    def worker_batches(self, worker: int, num_workers: int) -> int | None:
        """Batches the given worker yields per epoch (the rank's total split as evenly as possible)."""
        if self.batches_per_epoch is None:
            return None
        n = self.batches_per_epoch
        return n // num_workers + (1 if worker < n % num_workers else 0)

    def _shard_passes(self, epoch: int, rank: int, world: int, worker: int, nworkers: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(_seed(self.seed, epoch, rank, worker, 1))
            while True:
                yield self.urls[rng.randrange(len(self.urls))]
        for mine in self._pass_lists(epoch, rank, world, worker, nworkers):
            yield from mine
            if self.batches_per_epoch is None:
                return

    def _pass_samples(self, epoch: int, rank: int, world: int, worker: int, nworkers: int,
                      rng: random.Random) -> Iterator[Sample]:
        """Samples of this reader's passes over its shards, each pass shuffled within itself (buffer flushed at its
        end: with a buffer larger than a pass, an epoch is then still a permutation of the pass, without repeats)."""
        urls = list(self._shard_passes(epoch, rank, world, worker, nworkers)) if self.batches_per_epoch is None else None
        passes = [urls] if urls is not None else self._pass_lists(epoch, rank, world, worker, nworkers)
        for mine in passes:
            got = False
            samples: Iterator[Sample] = (_to_sample(r) for r in _raw_samples(mine))
            if self.keep is not None:
                samples = (x for x in samples if self.keep(x))
            if self.shuffle_buffer > 0:
                samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
            for x in samples:
                got = True
                yield x
            if not got and self.batches_per_epoch is not None:
                raise DataError(f"no sample passes the keep filter in this reader's shards {mine[:3]}"
                                f"{' ...' if len(mine) > 3 else ''}; check the uid list against these shards.")

    def _pass_lists(self, epoch: int, rank: int, world: int, worker: int, nworkers: int) -> Iterator[list[str]]:
        """This reader's shards of each pass (one permutation per pass, the same on every rank), passes forever."""
        consumers = world * nworkers
        if len(self.urls) < consumers and not self.allow_idle_workers:
            raise ConfigError(f"{len(self.urls)} shard(s) for {world} rank(s) x {nworkers} worker(s): every "
                              f"worker needs at least one shard. Write more, smaller shards, use fewer workers, or "
                              f"set resampled=True.")
        npass = 0
        while True:
            order = list(self.urls)
            random.Random(_seed(self.seed, epoch, npass, 2)).shuffle(order)  # same permutation on every rank
            yield order[rank::world][worker::nworkers]
            npass += 1

    def _generate(self, epoch: int, skip: int) -> Iterator[Any]:
        rank, world = self.rank_world()
        worker, nworkers = _worker()
        nbatches = self.worker_batches(worker, nworkers)
        # batches of this worker already consumed before the resume (round-robin order of the DataLoader)
        skip_here = max(0, (skip - worker + nworkers - 1) // nworkers) if skip > 0 else 0
        if nbatches is not None and skip_here >= nbatches:
            return
        rng = random.Random(_seed(self.seed, epoch, rank, worker, 3))
        samples: Iterator[Sample]
        if self.resampled:  # one endless draw with replacement: the buffer runs across it
            samples = (_to_sample(r) for r in _raw_samples(self._shard_passes(epoch, rank, world, worker, nworkers)))
            if self.keep is not None:
                samples = _kept(samples, self.keep, 2 * len(self.urls) + 2)
            if self.shuffle_buffer > 0:
                samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        else:  # passes: the shuffle buffer is flushed at the end of each pass, so a pass never mixes with the next
            samples = self._pass_samples(epoch, rank, world, worker, nworkers, rng)
        produced = 0
        batch: list[Any] = []
        skip_samples = skip_here * self.batch_size
        for s in samples:
            if skip_samples > 0:  # skipped before decoding
                skip_samples -= 1
                continue
            batch.append(self.map_sample(s))
            if len(batch) == self.batch_size:
                produced += 1
                if nbatches is not None and produced + skip_here > nbatches:
                    return
                yield self.collate(batch)
                batch = []
                if nbatches is not None and produced + skip_here >= nbatches:
                    return
        if batch and not self.drop_last and nbatches is None:
            yield self.collate(batch)


def _kept(samples: Iterator[Sample], keep: Callable[[Sample], bool], max_empty_shards: int) -> Iterator[Sample]:
    """Filter samples; fail instead of looping forever when shard after shard has nothing to keep."""
    empty, url = 0, None
    for s in samples:
        if keep(s):
            empty = 0
            yield s
        elif s.meta.get("__url__") != url:
            url = s.meta.get("__url__")
            empty += 1
            if empty > max_empty_shards:
                raise DataError(f"no sample passes the keep filter in {max_empty_shards} consecutive shards of this "
                                f"worker; check the uid list against these shards.")


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


# ------------------------------------------------------------------------------------------------------------------
# Domain-mixture streaming (R&B and other mixture rules)
# ------------------------------------------------------------------------------------------------------------------

class MixtureSchedule:
    """The training mixture over time, shared with DataLoader workers (shared-memory tensors).

    Every change is stored with the **batch position from which it applies**: ``(epoch, batch index within the
    epoch)``. :meth:`set` is given the position of the next batch the trainer will consume and adds a fixed ``lag``
    (at least the number of batches the loader can have drawn ahead: Lightning's one-batch prefetch plus
    ``num_workers * prefetch_factor``). A worker drawing batch ``b`` uses the latest change whose position is
    ``<= b``. So which mixture a batch uses does not depend on thread timing: runs with any number of workers are
    reproducible, and a resumed run (the schedule is part of the checkpoint) draws exactly the batches of the
    uninterrupted one. The cost: a new mixture reaches the data ``lag`` batches after it is set.

    A ring of ``capacity`` changes is kept; a worker that needs an entry older than the ring raises (only possible
    with more than ``capacity`` changes within ``lag`` batches).
    """

    def __init__(self, p: Sequence[float], *, lag: int = 2, capacity: int = 64) -> None:
        import torch

        if lag < 1:
            raise ConfigError(f"lag must be >= 1, got {lag}.")
        m = len(p)
        self.lag, self.capacity, self.m = int(lag), int(capacity), m
        # rows: [epoch, batch, p_0 .. p_m-1]; count = changes recorded so far (the ring holds the last `capacity`)
        self._rows = torch.zeros(capacity, 2 + m, dtype=torch.float64).share_memory_()
        self._count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.reset(p)

    def reset(self, p: Sequence[float]) -> None:
        """Forget the history; ``p`` applies from the very first batch."""
        import torch

        self._rows.zero_()
        self._rows[0, 0], self._rows[0, 1] = -1.0, -1.0
        self._rows[0, 2:] = torch.as_tensor(list(map(float, p)), dtype=torch.float64)
        self._count[0] = 1

    def set(self, p: Sequence[float], *, epoch: int, next_batch: int) -> tuple[int, int]:
        """Record ``p`` to apply from batch ``next_batch + lag`` of ``epoch`` (later epochs inherit it); returns that
        position."""
        import torch

        n = int(self._count[0])
        row = self._rows[n % self.capacity]
        row[0], row[1] = float(epoch), float(next_batch + self.lag)
        row[2:] = torch.as_tensor(list(map(float, p)), dtype=torch.float64)
        self._count[0] = n + 1
        return epoch, next_batch + self.lag

    def current(self) -> list[float]:
        """The most recently set mixture."""
        n = int(self._count[0])
        return self._rows[(n - 1) % self.capacity, 2:].tolist()

    def at(self, epoch: int, batch: int) -> list[float]:
        """The mixture that applies to batch ``batch`` of ``epoch``."""
        n = int(self._count[0])
        for i in range(n - 1, max(-1, n - 1 - self.capacity), -1):
            row = self._rows[i % self.capacity]
            if (row[0].item(), row[1].item()) <= (epoch, batch):
                return row[2:].tolist()
        raise DataError(f"the mixture for batch {batch} of epoch {epoch} fell out of the schedule's ring of "
                        f"{self.capacity} changes; set the mixture less often or raise the capacity.")

    def state_dict(self) -> dict[str, Any]:
        n = int(self._count[0])
        rows = [self._rows[i % self.capacity].tolist() for i in range(max(0, n - self.capacity), n)]
        return {"rows": rows, "lag": self.lag}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import torch

        rows = list(state["rows"])[-self.capacity:]
        if not rows or len(rows[0]) != 2 + self.m:
            raise DataError(f"mixture schedule state has rows of width {len(rows[0]) if rows else 0}, expected "
                            f"{2 + self.m} (another number of domains?).")
        self._rows.zero_()
        for i, r in enumerate(rows):
            self._rows[i] = torch.as_tensor(r, dtype=torch.float64)
        self._count[0] = len(rows)


class MixtureShardStream(_Stream):
    """Batches whose samples are drawn from several domains' shards by a mutable mixture (R&B, arXiv 2505.00358).

    Each domain is its own stream of shards (rank and worker splitting per domain: whole shards when the domain has
    at least one shard per (rank, worker), else every reader takes every ``k``-th sample of all of the domain's
    shards; the split is fixed for the epoch, so readers never overlap within an epoch; a reader that exhausts its
    part starts another pass over it, in a new shard order). For every batch slot a domain is
    drawn from the mixture that :class:`MixtureSchedule` assigns to that batch, with a generator seeded by
    ``(seed, epoch, rank, worker, batch)``, and the domain's next sample fills it. ``set_mixture`` therefore needs
    no loader rebuild. Each sample's ``meta[domain_key]`` is set to its domain index before ``map_sample``.

    Same conventions as :class:`ShardStream` for ``batches_per_epoch`` (required here: a mixture stream is
    unbounded), the shared epoch counter and ``skip_batches`` (exact resume: skipped batches are drawn with their
    scheduled mixture and skipped on the raw byte stream).
    """

    def __init__(self, domains: Sequence[str | Sequence[str]], *, map_sample: Callable[[Sample], Any],
                 collate: Callable[[list[Any]], Any], batch_size: int, batches_per_epoch: int,
                 schedule: MixtureSchedule, shuffle_buffer: int = 0, seed: int = 0,
                 epoch: SharedEpoch | None = None, rank: int | None = None, world_size: int | None = None,
                 keep: Callable[[Sample], bool] | None = None, domain_key: str = "__domain__") -> None:
        if batch_size < 1 or batches_per_epoch < 1:
            raise ConfigError(f"batch_size and batches_per_epoch must be >= 1, got {batch_size}, {batches_per_epoch}.")
        if not domains:
            raise ConfigError("a mixture stream needs at least one domain.")
        self.domain_urls = [list_shards(d) for d in domains]
        if schedule.m != len(self.domain_urls):
            raise ConfigError(f"the schedule has {schedule.m} domains, the stream {len(self.domain_urls)}.")
        self.urls = [u for d in self.domain_urls for u in d]
        self.map_sample, self.collate = map_sample, collate
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.schedule, self.shuffle_buffer, self.seed = schedule, int(shuffle_buffer), int(seed)
        self.epoch = epoch if epoch is not None else SharedEpoch(0)
        self._rank, self._world = rank, world_size
        self.keep, self.domain_key = keep, domain_key
        self.skip_batches = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _domain_samples(self, d: int, epoch: int, consumer: int, consumers: int) -> Iterator[Sample]:
        urls = self.domain_urls[d]
        whole = len(urls) >= consumers
        order = list(urls)
        random.Random(_seed(self.seed, epoch, d, 5)).shuffle(order)  # same on every reader
        assigned = order[consumer::consumers] if whole else order  # fixed for the epoch: readers never overlap
        npass = 0
        while True:
            mine = list(assigned)
            if whole:
                random.Random(_seed(self.seed, epoch, d, consumer, npass, 8)).shuffle(mine)
            got = False
            for i, raw in enumerate(_raw_samples(mine)):
                if not whole and i % consumers != consumer:
                    continue
                s = _to_sample(raw)
                if self.keep is not None and not self.keep(s):
                    continue
                got = True
                s.meta[self.domain_key] = d
                yield s
            if not got:
                raise DataError(f"domain {d} has no sample for reader {consumer} of {consumers} (shards {urls[:3]}"
                                f"{' ...' if len(urls) > 3 else ''}, after the keep filter); give it more data.")
            npass += 1

    def _generate(self, epoch: int, skip: int) -> Iterator[Any]:
        rank, world = self.rank_world()
        worker, nworkers = _worker()
        consumer, consumers = rank * nworkers + worker, world * nworkers
        streams: list[Iterator[Sample]] = []
        for d in range(len(self.domain_urls)):
            it = self._domain_samples(d, epoch, consumer, consumers)
            if self.shuffle_buffer > 0:
                it = _buffer_shuffle(it, self.shuffle_buffer, random.Random(_seed(self.seed, epoch, rank, worker,
                                                                                     d, 6)))
            streams.append(it)
        # this worker makes batches worker, worker + nworkers, ... of the rank's epoch (the DataLoader's round robin)
        for b in range(worker, self.batches_per_epoch, nworkers):
            p = np.asarray(self.schedule.at(epoch, b), dtype=np.float64)
            rng = np.random.default_rng(_seed(self.seed, epoch, rank, b, 7))
            doms = rng.choice(len(p), size=self.batch_size, p=p / p.sum())
            if b < skip:  # consumed before the restart: advance the domain streams without decoding
                for d in doms:
                    next(streams[d])
                continue
            yield self.collate([self.map_sample(next(streams[d])) for d in doms])
