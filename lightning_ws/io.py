"""Atomic, pickle-free persistence helpers (JSON and safetensors).

Every artifact lightning_ws writes goes through these functions: the file is written to a temporary file in the same
directory, flushed, fsynced and renamed over the destination, so a crash never leaves a half-written file and a reader
never sees one. Files get the permissions a plain ``open(path, "w")`` would give (``0666`` minus the user's umask,
usually ``0644``), not the ``0600`` of a temporary file. Nothing here uses pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_ws.errors import DataFileNotFoundError

__all__ = ["file_mode", "read_jsonl", "to_jsonable", "atomic_write_bytes", "atomic_write_text", "save_json", "load_json", "save_tensors", "load_tensors"]


def file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open(path, "w")`` gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``); create parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON to ``path`` atomically (NaN/inf are rejected: they are not JSON)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or not JSON.

    A UTF-8 byte-order mark (what some Windows editors write) is skipped. Malformed JSON raises ``DataError`` naming
    ``file:line:column``.
    """
    from lightning_ws.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"JSON file not found: {path}. Check the path (relative paths are resolved "
                                    f"from the current directory {Path.cwd()}).")
    with path.open("r", encoding="utf-8-sig") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}). Fix the file there (a "
                            f"truncated copy or a hand edit is the usual cause).") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); JSON files must be "
                            f"UTF-8. Re-save it as UTF-8.") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a flat ``{name: torch.Tensor}`` mapping as safetensors, atomically.

    Tensors are made contiguous and detached first; ``metadata`` values must be strings (safetensors' rule).
    """
    import torch
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
            for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, save(flat, metadata=meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file; return ``(tensors, metadata)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"safetensors file not found: {path}.")
    from lightning_ws.errors import DataError

    out = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            for k in fh.keys():
                out[k] = fh.get_tensor(k)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types (and OSError) for bad files
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}). It is truncated or "
                        f"not safetensors: write it again (e.g. rerun the step that exported it) or point to the "
                        f"right file.") from None
    return out, meta


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays inside dicts/lists to plain JSON types (NaN/inf -> ``None``).

    Raises ``TypeError`` for anything that is still not JSON-serialisable, so nothing is silently stringified.
    """
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    json.dumps(obj)  # raises TypeError for anything else
    return obj


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a JSON-lines file (blank lines skipped; a UTF-8 byte-order mark at the start is skipped); a malformed
    line raises ``DataError`` naming ``file:line``."""
    from lightning_ws.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"JSONL file not found: {path}.")
    rows = []
    with path.open("r", encoding="utf-8-sig") as fh:
        try:
            for i, line in enumerate(fh):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{i + 1}: not valid JSON ({err.msg}).") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason}, after line {len(rows)}); JSON-lines files must "
                            f"be UTF-8. Re-save it as UTF-8.") from None
    return rows
