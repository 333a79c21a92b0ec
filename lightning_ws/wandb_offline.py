"""Read an offline W&B run back from disk (no network, no W&B server).

An offline run is stored in ``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a LevelDB-style log of
protobuf ``Record`` messages (W&B's transaction log). :func:`read_offline_run` decodes its config, history rows and
summary, so tests and users can check what a run logged before (or without) ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_ws.errors import DataError, DataFileNotFoundError

__all__ = ["OfflineRun", "read_offline_run", "find_offline_runs"]

_BLOCK = 32768
_HEADER = 7  # checksum (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline W&B run holds.

    Attributes:
        path: the ``.wandb`` file.
        run_id: the run id.
        config: the run config (nested dict, as logged).
        history: one dict per ``log`` call (keys as logged, values decoded from JSON).
        summary: the final summary values.
        complete: whether the run's exit record is on disk (the run has finished writing).
        exit_code: the exit code in that record (0 = finished, non-zero = failed; ``None`` while running).
    """

    path: Path
    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    exit_code: int | None = None

    def metric(self, key: str) -> list[Any]:
        """All logged values of ``key`` in order."""
        return [row[key] for row in self.history if key in row]


def find_offline_runs(root: str | Path) -> list[Path]:
    """The ``.wandb`` files of the offline runs below ``root`` (sorted by folder name, i.e. by start time)."""
    return sorted(Path(root).glob("**/offline-run-*/run-*.wandb"))


def _records(path: Path):
    data = path.read_bytes()
    if len(data) < 7 or data[:4] != b":W&B":
        raise DataError(f"{path} is not a W&B transaction log (missing ':W&B' header).")
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - (pos % _BLOCK)
        if left < _HEADER:
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if checksum == 0 and length == 0 and kind == 0:  # zero padding at the end of a block or file
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if len(chunk) < length:
            break  # a run still being written: ignore the incomplete tail
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != checksum:
            raise DataError(f"{path}: corrupt record at byte {pos - length - _HEADER} (checksum mismatch).")
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _decode(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except json.JSONDecodeError:
        return value_json


def _set_nested(target: dict[str, Any], key: str, nested: list[str], value: Any) -> None:
    keys = list(nested) if nested else [key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def read_offline_run(path: str | Path, wait: float = 0.0) -> OfflineRun:
    """Decode an offline run: ``path`` is the ``.wandb`` file or its ``offline-run-*`` folder.

    Args:
        path: the run file or folder.
        wait: seconds to keep re-reading until the run's exit record is on disk (W&B's service may still be
            flushing right after ``finish()``); ``0`` reads once.
    """
    import time

    deadline = time.monotonic() + wait
    while True:
        run = _read_once(path)
        if run.complete or time.monotonic() >= deadline:
            return run
        time.sleep(0.2)


def _read_once(path: str | Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise DataFileNotFoundError(f"no run-*.wandb file in {path}; pass an offline-run-* folder of W&B.")
        path = files[0]
    if not path.is_file():
        raise DataFileNotFoundError(f"W&B run file not found: {path}.")
    run = OfflineRun(path=path, run_id=path.stem.removeprefix("run-"))
    for raw in _records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                value = _decode(item.value_json)
                if isinstance(value, dict) and set(value) == {"value"}:  # W&B wraps config values
                    value = value["value"]
                _set_nested(run.config, item.key, list(item.nested_key), value)
            for item in record.config.remove:
                run.config.pop(item.key, None)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                row[item.key or "/".join(item.nested_key)] = _decode(item.value_json)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(run.summary, item.key, list(item.nested_key), _decode(item.value_json))
        elif kind == "exit":
            run.complete = True
            run.exit_code = int(record.exit.exit_code)
        elif kind == "run":
            for item in record.run.config.update:
                _set_nested(run.config, item.key, list(item.nested_key), _decode(item.value_json))
    return run
