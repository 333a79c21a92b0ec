"""Apply Python labeling functions to examples: in parallel, with a progress bar, cached on disk.

A labeling function (LF) is any callable ``f(example) -> int`` returning a class id or ``-1`` (abstain). The result is
the ``n x m`` label matrix the label models take. The cache key of an LF's column is a hash of the LF's identity
(qualified name and, when available, its source code and closure/default values) and of the examples, so editing an
LF or the data recomputes exactly the affected columns. Cached columns are stored as safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from lightning_ws.errors import ConfigError, DataError

__all__ = ["apply_lfs", "lf_fingerprint", "data_fingerprint"]


def lf_fingerprint(lf: Callable[..., Any]) -> str:
    """A stable hash of a labeling function: its name, source (if inspectable) and bound parameters."""
    parts = [getattr(lf, "__module__", ""), getattr(lf, "__qualname__", type(lf).__qualname__)]
    target = lf if inspect.isfunction(lf) or inspect.ismethod(lf) else type(lf)
    try:
        parts.append(inspect.getsource(target))
    except (OSError, TypeError):
        parts.append(repr(lf))
    for attr in ("__defaults__", "__kwdefaults__"):
        parts.append(repr(getattr(lf, attr, None)))
    closure = getattr(lf, "__closure__", None)
    if closure:
        parts.append(repr([c.cell_contents for c in closure]))
    if hasattr(lf, "__dict__") and not inspect.isfunction(lf):
        parts.append(repr(sorted(vars(lf).items())))
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:24]


def data_fingerprint(examples: Sequence[Any]) -> str:
    """A hash of the examples (their ``repr``), used with :func:`lf_fingerprint` as the cache key."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr(ex).encode("utf-8", "replace"))
        h.update(b"\x1e")
    return h.hexdigest()[:24]


def _vote(value: Any) -> int:
    """An LF's return value as a vote. Strict where ``int()`` is lenient: ``int(0.7)`` is 0 (a score read as a vote
    for class 0) and ``int(False)`` is 0 (an LF's "does not apply" read as a vote for class 0)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("a boolean is not a vote (False would count as a vote for class 0); return the class id "
                        "when the LF fires and -1 (abstain) otherwise")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, (float, np.floating)):
        raise TypeError("not a whole number (a score or probability?); threshold it into a class id or -1")
    if value is None:
        raise TypeError("None is not a vote; return -1 to abstain")
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise TypeError("not a class id; return a class id (0..k-1) or -1 (abstain)")


def _apply_one(lf: Callable[..., Any], examples: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(examples), dtype=np.int64)
    for i, ex in enumerate(examples):
        value = lf(ex)
        try:
            out[i] = _vote(value)
        except (TypeError, ValueError) as err:
            raise DataError(f"labeling function {getattr(lf, '__name__', lf)!r} returned {value!r} for example {i}: "
                            f"{err}.") from None
    return out


def apply_lfs(
    lfs: Sequence[Callable[..., Any]],
    examples: Sequence[Any],
    *,
    workers: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Apply labeling functions to examples and return the ``n x m`` int64 label matrix (``-1`` = abstain).

    Args:
        lfs: the labeling functions (one column each, in order).
        examples: the examples passed to each LF.
        workers: processes to use (``1`` = this process). LFs must be picklable (module-level functions) to run in
            other processes; otherwise they run here with a warning-free fallback.
        cache_dir: folder for cached columns (``None`` = no cache).
        progress: show a progress bar over labeling functions.
    """
    if not lfs:
        raise ConfigError("apply_lfs needs at least one labeling function.")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}.")
    n = len(examples)
    L = np.full((n, len(lfs)), -1, dtype=np.int64)
    data_key = data_fingerprint(examples)
    cache = Path(cache_dir) if cache_dir is not None else None
    todo: list[int] = []
    keys = [f"{lf_fingerprint(lf)}-{data_key}" for lf in lfs]
    for j, key in enumerate(keys):
        if cache is not None and (cache / f"{key}.safetensors").is_file():
            from lightning_ws.io import load_tensors

            L[:, j] = load_tensors(cache / f"{key}.safetensors")[0]["column"].numpy()
        else:
            todo.append(j)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="labeling functions", disable=not progress or not todo)
    results: dict[int, np.ndarray] = {}
    if workers > 1 and len(todo) > 1:
        import pickle

        try:
            pickle.dumps([lfs[j] for j in todo])
            picklable = True
        except Exception:  # noqa: BLE001 - lambdas/closures cannot go to other processes
            picklable = False
        if picklable:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {j: pool.submit(_apply_one, lfs[j], list(examples)) for j in todo}
                for j, fut in futures.items():
                    results[j] = fut.result()
                    bar.update(1)
    for j in todo:
        if j not in results:
            results[j] = _apply_one(lfs[j], examples)
            bar.update(1)
    bar.close()
    for j, col in results.items():
        L[:, j] = col
        if cache is not None:
            import torch

            from lightning_ws.io import save_tensors

            save_tensors(cache / f"{keys[j]}.safetensors", {"column": torch.from_numpy(col)},
                         metadata={"lf": getattr(lfs[j], "__qualname__", repr(lfs[j])), "n": str(n)})
    bad = (L < -1)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise DataError(f"labeling function {j} returned {L[i, j]} for example {i}; votes must be >= -1.")
    return L
