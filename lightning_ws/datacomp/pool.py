"""A noisy image-caption pool built from real images, with the truth known (Lightning-free).

DataComp's pools are web-scraped pairs, a large share of which are bad (arXiv 2304.14108). To measure filters against
truth, :func:`build_pool` turns real labelled photographs (the shipped CIFAR-10 test subset) into image-caption
pairs and corrupts a known share of them:

* ``mismatch``: the caption describes another class (a web image with an unrelated alt-text);
* ``junk``: boilerplate or garbage text ("Click here to download", file names, symbol runs, non-Latin noise);
* ``blank``: an extra, almost uniform image (a placeholder / failed download) with an ordinary caption;
* ``near_duplicate``: an extra, slightly altered copy of a clean pair (contrast and brightness change, JPEG
  re-encoded at another quality), captioned with another clean caption of the same class. Of a duplicate pair
  exactly one sample is redundant; the truth marks the one with the **larger uid** as bad (the convention that
  :func:`~lightning_ws.datacomp.filters.duplicate_lf` keeps).

Every sample's ``meta`` has ``uid``, ``idx`` (its position in the pool), ``noise`` (one of the above or ``clean``),
``truth_keep`` and the class label.
Clean captions come from templates over class names and synonyms; the zero-shot prompts used for evaluation
(:data:`ZEROSHOT_TEMPLATES`) are different templates over the plain class names.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.datacomp.shards import Sample, make_uid
from lightning_ws.errors import ConfigError, DataFileNotFoundError

__all__ = [
    "CIFAR10_CLASSES",
    "ZEROSHOT_TEMPLATES",
    "NoiseSpec",
    "load_cifar10_subset",
    "load_coco_captions",
    "build_pool",
    "clean_caption",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SYNONYMS = {
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner"),
    "automobile": ("car", "automobile", "sedan", "vehicle", "hatchback"),
    "bird": ("bird", "sparrow", "songbird", "finch", "bird on a branch"),
    "cat": ("cat", "kitten", "kitty", "tabby cat", "house cat"),
    "deer": ("deer", "fawn", "stag", "doe", "wild deer"),
    "dog": ("dog", "puppy", "pet dog", "hound", "terrier"),
    "frog": ("frog", "toad", "tree frog", "green frog", "bullfrog"),
    "horse": ("horse", "pony", "stallion", "mare", "foal"),
    "ship": ("ship", "boat", "cargo ship", "vessel", "ferry"),
    "truck": ("truck", "lorry", "pickup truck", "dump truck", "fire truck"),
}
_CAPTION_TEMPLATES = (
    "a photo of a {}", "a picture of the {}", "a {} outdoors", "my {} last summer", "close-up shot of a {}",
    "an image showing a {}", "a small {} in the frame", "the {} in daylight", "a blurry snapshot of a {}",
    "look at this {}", "a {} seen from the side", "a low resolution photo of my {}", "there is a {} here",
    "a cropped photo of a {}", "an old {}", "a nice {}",
)
#: Prompts for zero-shot classification (not used for the pool's captions).
ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.", "a photo of the small {}.")
_BOILERPLATE = (
    "Click here to download this image", "IMG_{n}.JPG", "DSC{n}", "stock photo {n} royalty free", "Free shipping on "
    "orders over ${n}", "page {n} of {m}", "untitled-{n}", "image not found", "Copyright {n} all rights reserved",
    "buy now {n}% off", "thumbnail_{n}_{m}.png", "subscribe for more", "https://example.com/img/{n}",
)


@dataclass
class NoiseSpec:
    """Shares of bad pairs. ``mismatch`` and ``junk`` corrupt that share of the source images' captions; ``blank``
    and ``near_duplicate`` add that many extra samples (as a share of the source images)."""

    mismatch: float = 0.15
    junk: float = 0.10
    blank: float = 0.05
    near_duplicate: float = 0.10

    def __post_init__(self) -> None:
        for name in ("mismatch", "junk", "blank", "near_duplicate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"NoiseSpec.{name} must lie in [0, 1], got {v}.")
        if self.mismatch + self.junk > 1.0:
            raise ConfigError(f"mismatch + junk must be <= 1, got {self.mismatch + self.junk}.")


def _data_file(name: str) -> Path:
    path = Path(str(resources.files("lightning_ws") / "data" / "images" / name))
    if not path.is_file():
        raise DataFileNotFoundError(f"shipped image data {path} is missing; reinstall lightning_ws.")
    return path


def load_cifar10_subset(split: str = "pool", path: str | Path | None = None) -> list[tuple[str, bytes, int]]:
    """The shipped CIFAR-10 test images: ``[(name, jpeg_bytes, label)]``, sorted by name.

    Args:
        split: ``"pool"`` (images 0000-0199 of each class, 2,000) or ``"heldout"`` (0900-0999, 1,000; never put in
            a pool: the zero-shot evaluation set) or ``"all"``.
        path: another tar(.gz) of ``<class>/<nnnn>.jpg`` members (e.g. the full CIFAR-10 test tar).
    """
    if split not in ("pool", "heldout", "all"):
        raise ConfigError(f"split must be 'pool', 'heldout' or 'all', got {split!r}.")
    src = Path(path) if path is not None else _data_file("cifar10_test_subset.tar.gz")
    out = []
    with tarfile.open(src) as tf:
        for m in tf:
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            cls, stem = m.name.split("/")[-2], Path(m.name).stem
            idx = int(stem)
            if (split == "pool" and idx >= 200) or (split == "heldout" and idx < 900):
                continue
            out.append((m.name, tf.extractfile(m).read(), CIFAR10_CLASSES.index(cls)))
    out.sort(key=lambda r: r[0])
    return out


def load_coco_captions(path: str | Path | None = None) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The shipped COCO photos (64 px) and their captions: ``({image_name: jpeg_bytes}, caption rows)``."""
    src = Path(path) if path is not None else _data_file("coco_captions_mini_64px.tar.gz")
    images: dict[str, bytes] = {}
    rows: list[dict[str, Any]] = []
    with tarfile.open(src) as tf:
        for m in tf:
            if not m.isfile():
                continue
            data = tf.extractfile(m).read()
            if m.name == "captions.jsonl":
                rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            else:
                images[m.name] = data
    return images, rows


def clean_caption(label: int, rng: random.Random) -> str:
    """A templated caption for a CIFAR-10 class (a synonym in a random template)."""
    return rng.choice(_CAPTION_TEMPLATES).format(rng.choice(_SYNONYMS[CIFAR10_CLASSES[label]]))


def _junk_caption(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return rng.choice(_BOILERPLATE).format(n=rng.randrange(10, 99999), m=rng.randrange(2, 999))
    if kind < 0.8:
        return "".join(rng.choice("#$%&*@!?~^+=|0123456789") for _ in range(rng.randrange(4, 20)))
    return "".join(chr(rng.randrange(0x4E00, 0x4E00 + 2000)) for _ in range(rng.randrange(3, 12)))


def _encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _blank_image(rng: random.Random, size: int = 32) -> bytes:
    color = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float64)
    nprng = np.random.default_rng(rng.randrange(2**31))
    arr = np.clip(color[None, None, :] + nprng.normal(0, 1.0, (size, size, 3)), 0, 255)
    return _encode_jpeg(arr)


def _near_duplicate(jpeg: bytes, rng: random.Random) -> bytes:
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
    arr = (arr - 128.0) * rng.uniform(0.9, 1.1) + 128.0 + rng.uniform(-12, 12)  # contrast and brightness
    return _encode_jpeg(np.clip(arr, 0, 255), quality=rng.choice((80, 90, 95)))


def build_pool(images: Sequence[tuple[str, bytes, int]], noise: NoiseSpec | None = None, *,
               seed: int = 0) -> list[Sample]:
    """Build the noisy pool (see module docstring) from ``[(name, jpeg_bytes, label)]``; samples in random order.

    Args:
        images: source photographs with class labels (e.g. :func:`load_cifar10_subset`).
        noise: shares of bad pairs (default :class:`NoiseSpec`).
        seed: seeds every random choice (own generator; global RNGs untouched).
    """
    noise = noise or NoiseSpec()
    if not images:
        raise ConfigError("build_pool needs at least one source image.")
    rng = random.Random(seed)
    n = len(images)
    order = list(range(n))
    rng.shuffle(order)
    n_mis, n_junk = round(noise.mismatch * n), round(noise.junk * n)
    kinds = {i: "clean" for i in range(n)}
    for i in order[:n_mis]:
        kinds[i] = "mismatch"
    for i in order[n_mis:n_mis + n_junk]:
        kinds[i] = "junk"
    samples: list[Sample] = []
    for i, (name, data, label) in enumerate(images):
        kind = kinds[i]
        if kind == "mismatch":
            other = rng.choice([c for c in range(len(CIFAR10_CLASSES)) if c != label])
            caption = clean_caption(other, rng)
        elif kind == "junk":
            caption = _junk_caption(rng)
        else:
            caption = clean_caption(label, rng)
        samples.append(Sample(image=data, caption=caption, meta={
            "uid": make_uid("pool", seed, name), "source": name, "label": int(label), "noise": kind,
            "truth_keep": kind == "clean", "width": 32, "height": 32}))
    clean_idx = [i for i in range(n) if kinds[i] == "clean"]
    for j in range(round(noise.blank * n)):
        label = rng.randrange(len(CIFAR10_CLASSES))
        samples.append(Sample(image=_blank_image(rng), caption=clean_caption(label, rng), meta={
            "uid": make_uid("pool", seed, "blank", j), "source": f"blank/{j}", "label": -1, "noise": "blank",
            "truth_keep": False, "width": 32, "height": 32}))
    dup_src = rng.sample(clean_idx, min(len(clean_idx), round(noise.near_duplicate * n)))
    for j, i in enumerate(dup_src):
        orig = samples[i]
        copy = Sample(image=_near_duplicate(orig.image, rng), caption=clean_caption(orig.meta["label"], rng), meta={
            "uid": make_uid("pool", seed, "dup", j), "source": f"dup/{orig.meta['source']}",
            "label": orig.meta["label"], "noise": "clean", "truth_keep": True, "width": 32, "height": 32,
            "duplicate_of": orig.uid})
        # of the pair, the member with the larger uid is the redundant one
        redundant = copy if copy.uid > orig.uid else orig
        redundant.meta["noise"], redundant.meta["truth_keep"] = "near_duplicate", False
        samples.append(copy)
    rng.shuffle(samples)
    for i, s in enumerate(samples):  # a dense sample id (for callbacks that keep per-sample tables)
        s.meta["idx"] = i
    return samples
