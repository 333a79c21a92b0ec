"""The filter-signal pass over shards (Lightning-free): per-sample signals in data workers, model signals per batch,
one cache file per shard.

Used by :class:`lightning_ws.modules.FilterSignalModule` + :class:`lightning_ws.callbacks.SignalCacheWriter` under
Lightning's ``predict`` (any number of devices / nodes: each rank and worker reads whole shards, so each shard's
cache is written by exactly one process), and by :func:`compute_signals` in a plain loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ws.datacomp.filters import caption_signals, clip_similarity, image_signals, save_signal_cache
from lightning_ws.datacomp.shards import Sample, decode_image, list_shards

__all__ = ["SignalSampleMap", "collate_signals", "cache_path", "pending_shards", "RowBuffer", "compute_signals"]


def cache_path(cache_dir: str | Path, shard_url: str) -> Path:
    """``<cache_dir>/<shard stem>.signals.safetensors``."""
    return Path(cache_dir) / f"{Path(shard_url).name.removesuffix('.tar')}.signals.safetensors"


def pending_shards(shards: str | Sequence[str], cache_dir: str | Path) -> list[str]:
    """The shards whose cache does not exist yet (signals are computed once)."""
    return [u for u in list_shards(shards) if not cache_path(cache_dir, u).is_file()]


class SignalSampleMap:
    """Sample -> per-sample signals and model inputs (picklable; runs in DataLoader workers)."""

    def __init__(self, clip_image_size: int | None = 32, context_length: int = 32,
                 det_image_size: int | None = None) -> None:
        self.clip_image_size, self.context_length, self.det_image_size = clip_image_size, context_length, det_image_size
        self._tf = None
        self._tok = None

    def __getstate__(self) -> dict[str, Any]:
        return {"clip_image_size": self.clip_image_size, "context_length": self.context_length,
                "det_image_size": self.det_image_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __call__(self, s: Sample) -> dict[str, Any]:
        from lightning_ws.datacomp.clip import clip_image_transform, get_tokenizer

        img = decode_image(s.image)
        sig: dict[str, Any] = dict(image_signals(img))
        sig.update({k: float(v[0]) for k, v in caption_signals([s.caption]).items()})
        item: dict[str, Any] = {"uid": s.uid, "url": s.meta.get("__url__", ""), "caption": s.caption, "signals": sig}
        if self.clip_image_size:
            if self._tf is None:
                self._tf, self._tok = clip_image_transform(self.clip_image_size), get_tokenizer(self.context_length)
            item["image"] = self._tf(img)
            item["text"] = self._tok([s.caption])[0]
        if self.det_image_size:
            from PIL import Image

            arr = np.asarray(img.resize((self.det_image_size,) * 2, Image.BICUBIC), np.float32) / 255.0
            t = torch.from_numpy(arr).permute(2, 0, 1)
            mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
            std = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]
            item["det_image"] = (t - mean) / std
        return item


def collate_signals(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: [i[k] for i in items] for k in ("uid", "url", "caption")}
    keys = items[0]["signals"].keys()
    out["signals"] = {k: torch.tensor([i["signals"][k] for i in items],
                                      dtype=torch.int64 if k == "img_phash" else torch.float32) for k in keys}
    for k in ("image", "text", "det_image"):
        if k in items[0]:
            out[k] = torch.stack([i[k] for i in items])
    return out


class RowBuffer:
    """Collects per-batch signal rows by shard and writes one cache per shard."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.rows: dict[str, dict[str, list]] = {}

    def add(self, uids: Sequence[str], urls: Sequence[str], signals: dict[str, Any]) -> None:
        cols = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                for k, v in signals.items()}
        for i, (uid, url) in enumerate(zip(uids, urls)):
            buf = self.rows.setdefault(url, {"uid": [], **{k: [] for k in cols}})
            buf["uid"].append(uid)
            for k, v in cols.items():
                buf[k].append(v[i])

    def flush(self) -> list[Path]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for url, buf in sorted(self.rows.items()):
            uids = buf.pop("uid")
            cols = {k: np.stack(v) for k, v in buf.items()}
            paths.append(save_signal_cache(cache_path(self.cache_dir, url), uids, cols, {"shard": Path(url).name}))
        self.rows = {}
        return paths


def compute_signals(shards: str | Sequence[str], cache_dir: str | Path, *, clip_model: torch.nn.Module | None = None,
                    detector: Any = None, clip_image_size: int = 32, context_length: int = 32,
                    batch_size: int = 256, device: str = "cpu", recompute: bool = False) -> list[Path]:
    """Single-process signal pass (the same computation as the Lightning ``predict`` path); returns cache paths.

    Shards whose cache exists are skipped unless ``recompute``.
    """
    from lightning_ws.datacomp.shards import iter_shard

    urls = list_shards(shards) if recompute else pending_shards(shards, cache_dir)
    fmap = SignalSampleMap(clip_image_size if clip_model is not None else None, context_length,
                           detector.image_size if detector is not None else None)
    out: list[Path] = []
    if clip_model is not None:
        clip_model = clip_model.to(device).eval()
    for url in urls:
        buf = RowBuffer(cache_dir)
        batch: list[dict[str, Any]] = []

        def run(items: list[dict[str, Any]]) -> None:
            b = collate_signals(items)
            sig = dict(b["signals"])
            if clip_model is not None:
                sig["clip_score"] = clip_similarity(clip_model, b["image"].to(device), b["text"].to(device)).cpu()
            if detector is not None:
                sig.update({k: v.cpu() for k, v in detector(b["det_image"].to(device), b["caption"]).items()})
            buf.add(b["uid"], [url] * len(items), sig)

        for s in iter_shard(url):
            batch.append(fmap(s))
            if len(batch) == batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        out += buf.flush()
    return out
