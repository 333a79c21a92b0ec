"""The market store: parameter offers (safetensors + JSON manifest) and trade ledgers on a folder or fsspec URL.

Parameter markets, "Train 'n Trade" (Huang, Vishwakarma, Sala; NeurIPS 2023, arXiv 2312.04740). The paper's code keeps
both agents in one Python process; here every agent is its own training run, and runs meet through a shared store::

    <root>/offers/<run_id>/owner.json                  sha256 of the run's secret owner token (the namespace claim)
    <root>/offers/<run_id>/<offer_id>.safetensors      the offered tensors (never pickle)
    <root>/offers/<run_id>/<offer_id>.json             the manifest (written last: the commit point of an offer)
    <root>/ledgers/<run_id>.json                       the run's purchases (rewritten atomically)

Guarantees:

* **Atomic publication.** On a local folder every file is written to a hidden temporary file in the same folder,
  fsynced and then *linked* to its final name (``os.link`` never replaces an existing file). On an object store
  (``s3://``, ``gs://``, ``memory://``, any fsspec URL) every file is one ``pipe_file`` PUT, which object stores make
  visible all at once. The payload is written before its manifest, and readers only look at manifests, so a reader
  never sees an offer whose payload is still being written.
* **Readers only accept complete, intact offers.** A manifest must parse as JSON with every field; its run id must be
  the folder it sits in; its owner digest must match the namespace claim; the payload must exist, have the announced
  size and sha256, parse as safetensors, and hold exactly the keys, shapes and dtypes the manifest lists. Anything
  else (a truncated file, a tampered tensor, a foreign manifest) is skipped with a warning; nothing is unpickled.
* **A run cannot overwrite another run's offers.** A run publishes only under ``offers/<its run_id>/``, which it
  claims on first use with an exclusive create of ``owner.json`` (holding the sha256 of a secret token, never the
  token). Publishing into a namespace needs the token whose digest is there; offers are write-once (a second write of
  an offer id is refused). The protection is against mistakes (two runs configured with the same id), not against a
  malicious process with write access to the store: such a process can delete files, but cannot make a reader accept
  an altered offer as the original, whose sha256 is in the manifest.
* **Retention.** ``max_offers_per_run`` keeps a run's newest offers and deletes older ones (manifest first, then the
  payload, so no reader sees a manifest without its payload except for a deletion racing a read, which is skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_ws.errors import ConfigError, LightningWSError

__all__ = [
    "MARKET_FORMAT", "MarketStore", "Offer", "OfferManifest", "OwnershipError", "StoreIntegrityWarning",
    "key_shape_fingerprint", "new_run_id",
]

MARKET_FORMAT = "lightning_ws.market/1"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_OFFER_ID = re.compile(r"^[0-9]{9}-[0-9a-f]{16}$")
_MANIFEST_FIELDS = {
    "format": str, "run_id": str, "offer_id": str, "step": int, "epoch": int, "created": float, "keys": dict,
    "fingerprint": str, "sha256": str, "nbytes": int, "asking_price": float, "val_loss": (float, type(None)),
    "owner_digest": str, "payload": str,
}


class OwnershipError(LightningWSError):
    """A run tried to publish into a namespace that another run owns, or to overwrite an existing offer."""


class StoreIntegrityWarning(UserWarning):
    """An offer in the store is incomplete, corrupt, tampered with or foreign, and was skipped."""


def new_run_id(prefix: str = "run") -> str:
    """``<prefix>-<12 random hex>``: a fresh run id (from ``secrets``; global RNGs are untouched)."""
    if not _RUN_ID.match(prefix):
        raise ConfigError(f"run id prefix {prefix!r} must be letters, digits, '_', '.', '-' (start alphanumeric).")
    return f"{prefix}-{secrets.token_hex(6)}"


def key_shape_fingerprint(keys: Mapping[str, Sequence[Any]]) -> str:
    """sha256 of the sorted ``{key: [shape, dtype]}`` listing: equal fingerprints = interchangeable tensor sets."""
    canon = json.dumps({k: [list(v[0]), str(v[1])] for k, v in sorted(keys.items())}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _listing(tensors: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in tensors.items()}


@dataclass(frozen=True)
class OfferManifest:
    """The JSON manifest of one offer (see the module docstring for the layout)."""

    run_id: str
    offer_id: str
    step: int
    epoch: int
    created: float
    keys: dict[str, list[Any]]
    fingerprint: str
    sha256: str
    nbytes: int
    asking_price: float
    val_loss: float | None
    owner_digest: str
    payload: str
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = MARKET_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "run_id": self.run_id, "offer_id": self.offer_id, "step": self.step,
                "epoch": self.epoch, "created": self.created, "keys": self.keys, "fingerprint": self.fingerprint,
                "sha256": self.sha256, "nbytes": self.nbytes, "asking_price": self.asking_price,
                "val_loss": self.val_loss, "owner_digest": self.owner_digest, "payload": self.payload,
                "extra": self.extra}

    @classmethod
    def from_json(cls, obj: Any) -> OfferManifest:
        """Validate a parsed manifest; raise ``ValueError`` naming the first problem."""
        if not isinstance(obj, dict):
            raise ValueError("manifest is not a JSON object")
        for name, typ in _MANIFEST_FIELDS.items():
            if name not in obj:
                raise ValueError(f"manifest lacks {name!r}")
            value = obj[name]
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if typ == (float, type(None)) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or isinstance(value, bool):
                raise ValueError(f"manifest field {name!r} has type {type(obj[name]).__name__}")
        if obj["format"] != MARKET_FORMAT:
            raise ValueError(f"unknown format {obj['format']!r} (this reader understands {MARKET_FORMAT!r})")
        if not _OFFER_ID.match(obj["offer_id"]) or obj["payload"] != f"{obj['offer_id']}.safetensors":
            raise ValueError(f"bad offer id / payload name {obj['offer_id']!r} / {obj['payload']!r}")
        for k, v in obj["keys"].items():
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], list) and isinstance(v[1], str)):
                raise ValueError(f"bad key listing for {k!r}")
        extra = obj.get("extra", {})
        return cls(run_id=obj["run_id"], offer_id=obj["offer_id"], step=int(obj["step"]), epoch=int(obj["epoch"]),
                   created=float(obj["created"]), keys=obj["keys"], fingerprint=obj["fingerprint"],
                   sha256=obj["sha256"], nbytes=int(obj["nbytes"]), asking_price=float(obj["asking_price"]),
                   val_loss=None if obj["val_loss"] is None else float(obj["val_loss"]),
                   owner_digest=obj["owner_digest"], payload=obj["payload"],
                   extra=extra if isinstance(extra, dict) else {})


@dataclass(frozen=True)
class Offer:
    """A verified offer: its manifest and its tensors (CPU)."""

    manifest: OfferManifest
    tensors: dict[str, torch.Tensor]


class MarketStore:
    """Offers and ledgers of a parameter market in a local folder or at an fsspec URL.

    Args:
        url: a local folder (created when missing) or an fsspec URL (``s3://bucket/market``, ``memory://m``; the
            matching fsspec backend must be installed).
        storage_options: keyword arguments for the fsspec filesystem (credentials, endpoint, ...).

    Example::

        store = MarketStore(tmp_path / "market")
        token = store.claim("agent-a")                   # once per run (keep the token: it is the right to publish)
        store.publish("agent-a", token, model.state_dict(), step=100, epoch=1, asking_price=0.1, val_loss=0.4)
        for offer in store.latest_offers(exclude=("agent-a",)):
            ...
    """

    def __init__(self, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
        url = os.fspath(url)
        if not url:
            raise ConfigError("MarketStore needs a folder or an fsspec URL, got an empty string.")
        self.url = url
        self._local = "://" not in url or url.startswith("file://")
        if self._local:
            self.root = str(Path(url.removeprefix("file://")).expanduser().resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)
            self._fs = None
        else:
            try:
                from lightning_ws.extras import require
                require("fsspec", "market", "a parameter-market store at a URL")
                import fsspec
            except ImportError as err:  # pragma: no cover - fsspec ships with the core dependencies
                raise ConfigError(f"store URL {url!r} needs fsspec (pip install fsspec).") from err
            try:
                self._fs, self.root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
            except (ImportError, ValueError) as err:
                raise ConfigError(f"cannot open market store {url!r}: {err}. Install the fsspec backend for this "
                                  f"protocol (e.g. s3fs for s3://, gcsfs for gs://).") from err
            self.root = self.root.rstrip("/")

    # ------------------------------------------------------------------ file primitives
    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if not self._local else str(Path(self.root, *parts))

    def _exists(self, path: str) -> bool:
        return os.path.exists(path) if self._local else self._fs.exists(path)

    def _read(self, path: str) -> bytes:
        if self._local:
            with open(path, "rb") as fh:
                return fh.read()
        return self._fs.cat_file(path)

    def _write_new(self, path: str, data: bytes) -> None:
        """Create ``path`` with ``data`` atomically; ``FileExistsError`` if it exists (never overwrite)."""
        if self._local:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, path)  # atomic and no-clobber: raises FileExistsError when ``path`` exists
            finally:
                os.unlink(tmp)
            return
        if self._fs.exists(path):  # object stores have no portable create-if-absent; check, then one atomic PUT
            raise FileExistsError(path)
        self._fs.pipe_file(path, data)

    def _write_replace(self, path: str, data: bytes) -> None:
        """Write ``path`` atomically, replacing an older version (ledgers only)."""
        if self._local:
            from lightning_ws.io import atomic_write_bytes

            atomic_write_bytes(path, data)
        else:
            self._fs.pipe_file(path, data)

    def _remove(self, path: str) -> None:
        try:
            if self._local:
                os.unlink(path)
            else:
                self._fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _list(self, folder: str) -> list[str]:
        """Names (not paths) in ``folder``; empty when it does not exist."""
        if self._local:
            try:
                return sorted(os.listdir(folder))
            except FileNotFoundError:
                return []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(folder, detail=False))
        except FileNotFoundError:
            return []

    # ------------------------------------------------------------------ ownership
    @staticmethod
    def _check_run_id(run_id: str) -> None:
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ConfigError(f"run id {run_id!r} must be 1-128 letters, digits, '_', '.', '-' and start with a letter "
                              f"or digit.")

    def claim(self, run_id: str, token: str | None = None) -> str:
        """Claim the namespace ``offers/<run_id>/`` and return the owner token (the right to publish there).

        With ``token=None`` a fresh secret token is made; the claim fails when another run already owns ``run_id``.
        With the token of an earlier claim (a resumed run keeps it in its checkpoint) the claim is re-confirmed.

        Raises:
            OwnershipError: ``run_id`` is owned by another run (use another id, or pass that run's token).
        """
        self._check_run_id(run_id)
        token = token or secrets.token_hex(16)
        digest = hashlib.sha256(token.encode()).hexdigest()
        owner = self._join("offers", run_id, "owner.json")
        body = json.dumps({"format": MARKET_FORMAT, "run_id": run_id, "owner_digest": digest,
                           "claimed": time.time()}).encode()
        try:
            self._write_new(owner, body)
            return token
        except FileExistsError:
            pass
        current = self._owner_digest(run_id)
        if current != digest:
            raise OwnershipError(
                f"run id {run_id!r} is already owned by another run in the market store {self.url!r} "
                f"({owner}). Its offers are never overwritten: choose another run id (or leave run_id unset for a "
                f"fresh one), or resume that run from its checkpoint, which holds its owner token.")
        return token

    def _owner_digest(self, run_id: str) -> str | None:
        try:
            obj = json.loads(self._read(self._join("offers", run_id, "owner.json")))
            return obj["owner_digest"] if isinstance(obj, dict) and isinstance(obj.get("owner_digest"), str) else None
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None

    # ------------------------------------------------------------------ publish
    def publish(self, run_id: str, token: str, tensors: Mapping[str, torch.Tensor], *, step: int, epoch: int,
                asking_price: float = 0.0, val_loss: float | None = None, max_offers_per_run: int | None = 3,
                extra: Mapping[str, Any] | None = None) -> OfferManifest:
        """Publish ``tensors`` as a new offer of ``run_id`` (payload first, manifest last); apply retention.

        The offer id is ``<step:09d>-<first 16 hex of the payload sha256>``: re-publishing identical tensors at the same
        step (a resumed run) finds the offer already there and returns it; nothing is ever overwritten.

        Raises:
            OwnershipError: ``token`` is not the owner token of ``run_id``.
            ConfigError: empty or non-tensor input, a negative price, a non-finite loss.
        """
        from safetensors.torch import save

        self._check_run_id(run_id)
        digest = hashlib.sha256(str(token).encode()).hexdigest()
        if self._owner_digest(run_id) != digest:
            raise OwnershipError(f"this run does not own {run_id!r} in {self.url!r}: call claim() first (a run can "
                                 f"only publish under its own run id).")
        if not tensors or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise ConfigError("publish() needs a non-empty {name: tensor} mapping.")
        if not asking_price >= 0 or step < 0:
            raise ConfigError(f"need asking_price >= 0 and step >= 0, got {asking_price}, {step}.")
        if val_loss is not None and not (isinstance(val_loss, (int, float)) and abs(val_loss) < float("inf")):
            raise ConfigError(f"val_loss must be a finite number or None, got {val_loss!r}.")
        flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        data = save(flat)
        sha = hashlib.sha256(data).hexdigest()
        offer_id = f"{int(step):09d}-{sha[:16]}"
        listing = _listing(flat)
        manifest = OfferManifest(run_id=run_id, offer_id=offer_id, step=int(step), epoch=int(epoch),
                                 created=time.time(), keys=listing, fingerprint=key_shape_fingerprint(listing),
                                 sha256=sha, nbytes=len(data), asking_price=float(asking_price),
                                 val_loss=None if val_loss is None else float(val_loss), owner_digest=digest,
                                 payload=f"{offer_id}.safetensors", extra=dict(extra or {}))
        manifest_path = self._join("offers", run_id, f"{offer_id}.json")
        if self._exists(manifest_path):
            return self._read_manifest(run_id, f"{offer_id}.json") or manifest
        try:
            self._write_new(self._join("offers", run_id, manifest.payload), data)
        except FileExistsError:
            pass  # an identical payload (same sha256) from an interrupted earlier publication
        try:
            self._write_new(manifest_path, json.dumps(manifest.to_json(), sort_keys=True).encode())
        except FileExistsError:
            pass
        if max_offers_per_run is not None:
            self.apply_retention(run_id, token, max_offers_per_run)
        return manifest

    def apply_retention(self, run_id: str, token: str, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest offers of ``run_id`` (owner only); return the removed offer ids."""
        if keep < 1:
            raise ConfigError(f"max_offers_per_run must be >= 1, got {keep}.")
        if self._owner_digest(run_id) != hashlib.sha256(str(token).encode()).hexdigest():
            raise OwnershipError(f"this run does not own {run_id!r}: it cannot delete its offers.")
        ids = self._offer_ids(run_id)
        removed = ids[:-keep] if len(ids) > keep else []
        for oid in removed:
            self._remove(self._join("offers", run_id, f"{oid}.json"))
            self._remove(self._join("offers", run_id, f"{oid}.safetensors"))
        return removed

    # ------------------------------------------------------------------ read
    def runs(self) -> list[str]:
        """Run ids with a namespace in the store."""
        return [r for r in self._list(self._join("offers")) if _RUN_ID.match(r)]

    def _offer_ids(self, run_id: str) -> list[str]:
        """Offer ids with a manifest, oldest first (ids start with the zero-padded step)."""
        names = self._list(self._join("offers", run_id))
        return sorted(n[:-5] for n in names if n.endswith(".json") and _OFFER_ID.match(n[:-5]))

    def _read_manifest(self, run_id: str, name: str) -> OfferManifest | None:
        path = self._join("offers", run_id, name)
        try:
            raw = self._read(path)
        except FileNotFoundError:
            return None  # removed by retention between listing and reading
        try:
            manifest = OfferManifest.from_json(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as err:
            _warn(f"skipping {path}: unreadable or incomplete manifest ({err}).")
            return None
        if manifest.run_id != run_id or f"{manifest.offer_id}.json" != name:
            _warn(f"skipping {path}: it claims run {manifest.run_id!r} / offer {manifest.offer_id!r} but sits in "
                  f"{run_id!r} (a run cannot publish for another).")
            return None
        owner = self._owner_digest(run_id)
        if owner is None or owner != manifest.owner_digest:
            _warn(f"skipping {path}: its owner digest does not match {run_id!r}'s namespace claim.")
            return None
        return manifest

    def manifests(self, run_id: str) -> list[OfferManifest]:
        """The valid manifests of ``run_id``, oldest first (payloads are not read)."""
        out = []
        for oid in self._offer_ids(run_id):
            m = self._read_manifest(run_id, f"{oid}.json")
            if m is not None:
                out.append(m)
        return out

    def load(self, manifest: OfferManifest) -> Offer | None:
        """Read and verify an offer's payload; ``None`` (with a warning) when it is missing, corrupt or tampered."""
        from safetensors.torch import load

        path = self._join("offers", manifest.run_id, manifest.payload)
        try:
            data = self._read(path)
        except FileNotFoundError:
            if self._exists(self._join("offers", manifest.run_id, f"{manifest.offer_id}.json")):
                _warn(f"skipping offer {manifest.run_id}/{manifest.offer_id}: its payload {path} is missing.")
            return None  # else: removed by the owner's retention while we read
        if len(data) != manifest.nbytes or hashlib.sha256(data).hexdigest() != manifest.sha256:
            _warn(f"skipping offer {manifest.run_id}/{manifest.offer_id}: payload size/sha256 do not match the "
                  f"manifest (partial write or tampering).")
            return None
        try:
            tensors = load(data)
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for malformed headers
            _warn(f"skipping offer {manifest.run_id}/{manifest.offer_id}: not a valid safetensors file ({err}).")
            return None
        listing = _listing(tensors)
        if listing != manifest.keys or key_shape_fingerprint(listing) != manifest.fingerprint:
            _warn(f"skipping offer {manifest.run_id}/{manifest.offer_id}: tensors do not match the manifest's "
                  f"key/shape listing.")
            return None
        return Offer(manifest, tensors)

    def latest_offers(self, *, exclude: Sequence[str] = (), epoch: int | None = None,
                      min_epoch: int | None = None) -> list[Offer]:
        """The newest verified offer of every run except ``exclude`` (sorted by run id).

        Args:
            exclude: run ids to leave out (the reader's own).
            epoch: take only offers made at exactly this epoch (lock-step trading windows).
            min_epoch: take only offers made at this epoch or later.
        """
        out = []
        for run_id in self.runs():
            if run_id in exclude:
                continue
            for manifest in reversed(self.manifests(run_id)):
                if epoch is not None and manifest.epoch != epoch:
                    continue
                if min_epoch is not None and manifest.epoch < min_epoch:
                    continue
                offer = self.load(manifest)
                if offer is not None:
                    out.append(offer)
                    break
        return out

    def count_offers(self, *, exclude: Sequence[str] = (), epoch: int | None = None) -> int:
        """How many runs (other than ``exclude``) have a manifest at ``epoch`` (any epoch when ``None``)."""
        n = 0
        for run_id in self.runs():
            if run_id in exclude:
                continue
            if any(epoch is None or m.epoch == epoch for m in self.manifests(run_id)):
                n += 1
        return n

    # ------------------------------------------------------------------ ledgers
    def write_ledger(self, run_id: str, token: str, ledger: Mapping[str, Any]) -> None:
        """Atomically replace ``ledgers/<run_id>.json`` (owner only)."""
        if self._owner_digest(run_id) != hashlib.sha256(str(token).encode()).hexdigest():
            raise OwnershipError(f"this run does not own {run_id!r}: it cannot write its ledger.")
        body = json.dumps(dict(ledger), indent=1, sort_keys=True, allow_nan=False) + "\n"
        self._write_replace(self._join("ledgers", f"{run_id}.json"), body.encode())

    def read_ledger(self, run_id: str) -> dict[str, Any] | None:
        """A run's ledger, or ``None`` when it has none (or it is unreadable: warned)."""
        path = self._join("ledgers", f"{run_id}.json")
        try:
            obj = json.loads(self._read(path).decode("utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as err:
            _warn(f"skipping ledger {path}: not valid JSON ({err}).")
            return None
        return obj if isinstance(obj, dict) else None

    def income(self, seller: str) -> float:
        """Total paid to ``seller`` according to every buyer's ledger in the store (for logging; not authoritative)."""
        total = 0.0
        for name in self._list(self._join("ledgers")):
            if not name.endswith(".json") or name.startswith("."):
                continue
            ledger = self.read_ledger(name[:-5]) or {}
            for trade in ledger.get("trades", []):
                if isinstance(trade, dict) and trade.get("seller") == seller and trade.get("bought"):
                    total += float(trade.get("price") or 0.0)
        return total


def _warn(message: str) -> None:
    warnings.warn(message, StoreIntegrityWarning, stacklevel=3)
