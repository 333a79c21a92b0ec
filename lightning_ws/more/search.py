"""A small, resumable sweep over MoRe's (K, r) and the learning rate (arXiv 2408.17383, Sec. "architecture search").

The paper picks the number of blocks ``K``, the block rank ``r`` and the learning rate by cheap HPO (Ray Tune ASHA in
the reference code). This driver is deliberately simpler: an exhaustive grid (or any list of configs) run through a
user-provided ``train_fn(config) -> metrics``; each finished trial is appended to a JSON file atomically, and a rerun
skips trials already recorded, so an interrupted sweep resumes where it stopped. Lightning-free.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import load_json, save_json

__all__ = ["SearchResult", "grid", "trial_key", "run_search", "format_table"]

RESULTS_VERSION = 1


@dataclass
class SearchResult:
    """Outcome of :func:`run_search`.

    Attributes:
        trials: every recorded trial, ``{"key", "config", "metrics"}``, in file order.
        best: the best trial by ``monitor``/``mode`` (``None`` if no trial reported the metric).
        ran: keys of the trials run in this call (the others were skipped as already finished).
    """

    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    ran: list[str]


def grid(nblocks: Sequence[int] = (1, 2, 4, 8), blk_r: Sequence[int] = (1, 2, 4, 8),
         lr: Sequence[float] = (1e-4, 3e-4, 6e-4), **fixed: Any) -> list[dict[str, Any]]:
    """Cartesian product of ``nblocks x blk_r x lr`` (plus constant ``fixed`` entries) as a list of config dicts.

    Defaults follow the reference GLUE search (``blk_r in {1, 2, 4, 8}``, lr in ``[1e-4, 6.6e-4]``).
    """
    if not nblocks or not blk_r or not lr:
        raise ConfigError("grid() needs at least one value for each of nblocks, blk_r and lr.")
    return [{"nblocks": int(k), "blk_r": int(r), "lr": float(v), **fixed}
            for k, r, v in itertools.product(nblocks, blk_r, lr)]


def trial_key(config: Mapping[str, Any]) -> str:
    """Stable identity of a config: its canonical JSON (sorted keys)."""
    try:
        return json.dumps(dict(config), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search configs must be JSON-serialisable (numbers, strings, lists); got {config!r}: "
                          f"{exc}.") from exc


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = load_json(path)
    if not isinstance(data, dict) or data.get("version") != RESULTS_VERSION or not isinstance(data.get("trials"), list):
        raise DataError(f"{path} is not a MoRe search results file (version {RESULTS_VERSION}); delete it or pass "
                        "another results_path.")
    return data["trials"]


def _best(trials: list[dict[str, Any]], monitor: str, mode: str) -> dict[str, Any] | None:
    scored = [t for t in trials if isinstance(t["metrics"].get(monitor), (int, float))
              and math.isfinite(t["metrics"][monitor])]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda t: sign * t["metrics"][monitor])


def format_table(trials: list[dict[str, Any]], monitor: str | None = None) -> str:
    """Plain-text table of trials: one row per trial, config columns then metric columns."""
    if not trials:
        return "(no trials)"
    cfg_cols = sorted({k for t in trials for k in t["config"]})
    met_cols = sorted({k for t in trials for k in t["metrics"]})
    if monitor in met_cols:
        met_cols.remove(monitor)
        met_cols.insert(0, monitor)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    header = cfg_cols + met_cols
    rows = [[fmt(t["config"].get(c, "")) for c in cfg_cols] + [fmt(t["metrics"].get(c, "")) for c in met_cols]
            for t in trials]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_search(
    train_fn: Callable[[dict[str, Any]], Mapping[str, float]],
    configs: Iterable[Mapping[str, Any]],
    results_path: str | os.PathLike,
    *,
    monitor: str = "val/acc",
    mode: str = "max",
    verbose: bool = True,
) -> SearchResult:
    """Run ``train_fn`` on every config not yet recorded in ``results_path``; return all trials and the best.

    Each finished trial is appended to the JSON file at once (atomic rewrite via :func:`lightning_ws.io.save_json`),
    so a crash loses at most the running trial and a rerun skips finished ones. A trial whose ``train_fn`` raises is
    not recorded (it reruns next time) and the exception propagates.

    Args:
        train_fn: runs one short fit for a config dict and returns a flat ``{metric name: float}`` dict.
        configs: the trials (e.g. :func:`grid`); duplicates are run once.
        results_path: JSON file holding ``{"version": 1, "trials": [...]}``.
        monitor: metric used to pick the best trial (default ``"val/acc"``).
        mode: ``"max"`` or ``"min"``.
        verbose: print a line per trial and the final table.

    Returns:
        :class:`SearchResult`.

    Raises:
        ConfigError: on a bad ``mode``, non-serialisable configs, or non-numeric metrics.
        DataError: when ``results_path`` exists but is not a results file.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}.")
    path = Path(results_path)
    trials = _load(path)
    done = {t["key"] for t in trials}
    ran: list[str] = []
    todo: list[tuple[str, dict[str, Any]]] = []
    for cfg in configs:
        key = trial_key(cfg)
        if key not in done and key not in {k for k, _ in todo}:
            todo.append((key, dict(cfg)))
    if verbose:
        print(f"[more.search] {len(done)} trials recorded in {path}, {len(todo)} to run")
    for i, (key, cfg) in enumerate(todo):
        metrics = train_fn(dict(cfg))
        if not isinstance(metrics, Mapping):
            raise ConfigError(f"train_fn must return a dict of metrics, got {type(metrics).__name__}.")
        clean: dict[str, float] = {}
        for k, v in metrics.items():
            try:
                fv = float(v)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"metric {k!r} of trial {cfg} is not a number: {v!r}.") from exc
            clean[str(k)] = fv if math.isfinite(fv) else None  # JSON has no NaN; a diverged trial is recorded as null
        trials.append({"key": key, "config": cfg, "metrics": clean})
        save_json(path, {"version": RESULTS_VERSION, "trials": trials})
        ran.append(key)
        if verbose:
            print(f"[more.search] trial {i + 1}/{len(todo)} {cfg} -> {clean}")
    best = _best(trials, monitor, mode)
    if verbose:
        print(format_table(trials, monitor))
        if best is not None:
            print(f"[more.search] best by {monitor} ({mode}): {best['config']} -> {best['metrics'][monitor]:.4g}")
    return SearchResult(trials=trials, best=best, ran=ran)
