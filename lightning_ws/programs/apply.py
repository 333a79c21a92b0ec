"""Programs -> label matrix -> label model: applying (sandboxed, cached), de-duplication, dev filtering, combination.

* :func:`apply_programs` runs programs in a :class:`~lightning_ws.programs.sandbox.ProgramSandbox` and caches each
  program's column by (program hash, data hash) as ``.npy`` + JSON (never pickle); a cached column is reused
  whatever else changed. Columns of runs that hit a timeout or a crash are not cached (they may depend on load).
* :func:`dedup_programs` drops programs whose votes on a probe set equal an earlier program's (behavioural
  de-duplication: different code, same labeling function).
* :func:`filter_programs` keeps programs with enough coverage / accuracy on the labelled dev split. Neither paper
  filters; report with and without.
* :func:`combine_sources` aggregates human (hand-written) and generated votes four ways: ``human``, ``generated``,
  ``joint`` (one label model over the concatenated columns) and ``cascade`` (ScriptoriumWS' integration,
  ``examples/autolfgen_integration.py``, spec §3.6: human label model on rows a human LF covers, a second model
  of the same kind fitted on the generated votes of the remaining rows; coverage 1.0).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import atomic_write_bytes, atomic_write_text
from lightning_ws.programs.sandbox import ProgramSandbox, _as_program, program_hash

__all__ = ["data_hash", "AppliedPrograms", "apply_programs", "dedup_programs", "filter_programs", "lf_metrics",
           "CombinedLabels", "combine_sources", "label_metrics", "COMBINE_MODES"]

COMBINE_MODES = ("human", "generated", "joint", "cascade")


def data_hash(rows: Sequence[Any]) -> str:
    """sha256 of the rows (texts, tuples, dicts of scores), independent of the Python session."""
    h = hashlib.sha256()
    for r in rows:
        b = r.encode("utf-8") if isinstance(r, str) else json.dumps(r, sort_keys=True, default=str).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@dataclass
class AppliedPrograms:
    """A label (or score) matrix from programs, with what happened.

    Attributes:
        L: ``(n, m)`` int64 class ids (``-1`` abstain) or float64 scores (``NaN`` abstain).
        names, hashes: per column.
        errors: the sandbox's error records (``program`` = column index), plus cached ones.
        stats: per column: the sandbox's counters and ``cached``.
        layers: sandbox layers active (empty when everything came from the cache).
        seconds: wall-clock time.
    """

    L: np.ndarray
    names: list[str]
    hashes: list[str]
    errors: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def cache_hits(self) -> int:
        return sum(1 for s in self.stats if s.get("cached"))


def _cache_paths(cache_dir: Path, phash: str, dhash: str, tag: str) -> tuple[Path, Path]:
    base = cache_dir / phash[:2] / f"{phash[:32]}-{dhash[:32]}-{tag}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def apply_programs(programs: Sequence[Any], rows: Sequence[Any], *, num_classes: int | None = None,
                   output: Literal["class", "float"] = "class", entry: str = "label",
                   sandbox: ProgramSandbox | None = None, cache_dir: str | Path | None = None,
                   progress: bool = False, **sandbox_kwargs: Any) -> AppliedPrograms:
    """Apply programs to rows in the sandbox, with a per-column cache.

    Args:
        programs: :class:`~lightning_ws.programs.store.Program` objects, dicts or source strings.
        rows: texts, tuples (several arguments) or dicts (concept scores).
        num_classes, output, entry: as :meth:`ProgramSandbox.run`.
        sandbox: a running sandbox to reuse (else one is started with ``sandbox_kwargs`` and closed).
        cache_dir: cache folder (``None`` = no cache).
        progress: progress bar.
    """
    import time

    t0 = time.perf_counter()
    progs = [_as_program(p, entry) for p in programs]
    names = [getattr(p, "name", "") or (p.get("name", "") if isinstance(p, dict) else "") or f"program_{j}"
             for j, p in enumerate(programs)]
    hashes = [program_hash(s, e) for s, e, _ in progs]
    n, m = len(rows), len(progs)
    dtype = np.int64 if output == "class" else np.float64
    L = np.full((n, m), -1, dtype=dtype) if output == "class" else np.full((n, m), np.nan)
    stats: list[dict[str, Any]] = [{} for _ in range(m)]
    errors: list[dict[str, Any]] = []
    tag = f"{output}{num_classes or 0}"
    dhash = data_hash(rows)
    todo = list(range(m))
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        todo = []
        for j in range(m):
            npy, meta = _cache_paths(cache, hashes[j], dhash, tag)
            if npy.is_file() and meta.is_file():
                col = np.load(npy, allow_pickle=False)
                if col.shape == (n,):
                    L[:, j] = col
                    info = json.loads(meta.read_text(encoding="utf-8"))
                    stats[j] = {**info.get("stats", {}), "cached": True}
                    errors += [{**e, "program": j} for e in info.get("errors", [])]
                    continue
            todo.append(j)
    layers: dict[str, str] = {}
    if todo:
        own = sandbox is None
        sb = sandbox or ProgramSandbox(**sandbox_kwargs)
        try:
            res = sb.run([{"source": progs[j][0], "entry": progs[j][1], "name": names[j]} for j in todo], rows,
                         num_classes=num_classes, output=output, entry=entry, progress=progress)
        finally:
            if own:
                sb.close()
        layers = res.layers
        for jj, j in enumerate(todo):
            L[:, j] = res.values[:, jj]
            st = {**res.stats[jj], "program": j, "cached": False}
            stats[j] = st
            errs = [{**e, "program": j} for e in res.errors if e["program"] == jj]
            errors += errs
            flaky = st.get("n_timeouts") or st.get("failures") or any(
                e["kind"] in ("crash", "batch_timeout", "protocol") for e in errs)
            if cache is not None and not flaky:
                npy, meta = _cache_paths(cache, hashes[j], dhash, tag)
                npy.parent.mkdir(parents=True, exist_ok=True)
                import io

                buf = io.BytesIO()
                np.save(buf, np.asarray(L[:, j]), allow_pickle=False)
                atomic_write_bytes(npy, buf.getvalue())
                atomic_write_text(meta, json.dumps({"program_hash": hashes[j], "data_hash": dhash, "output": output,
                                                    "num_classes": num_classes, "stats": st, "errors": errs}))
    return AppliedPrograms(L=L, names=names, hashes=hashes, errors=errors, stats=stats, layers=layers,
                           seconds=time.perf_counter() - t0)


def dedup_programs(L_probe: np.ndarray) -> tuple[list[int], dict[int, list[int]]]:
    """Behavioural de-duplication on a probe set's votes ``(n_probe, m)``.

    Returns:
        ``(kept, groups)``: the first column of each distinct vote vector, and kept column -> the columns it
        stands for.
    """
    kept: list[int] = []
    groups: dict[int, list[int]] = {}
    seen: dict[bytes, int] = {}
    arr = np.ascontiguousarray(L_probe)
    for j in range(arr.shape[1]):
        key = arr[:, j].tobytes()
        if key in seen:
            groups[seen[key]].append(j)
        else:
            seen[key] = j
            kept.append(j)
            groups[j] = [j]
    return kept, groups


def lf_metrics(L: np.ndarray, y: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per column: coverage, and, when ``y`` is given, accuracy on the rows it covers that have a gold label
    (``y >= 0``; ``-1`` marks an unlabelled row; ``NaN`` when there are none)."""
    out = []
    gold = None if y is None else np.asarray(y) >= 0
    for j in range(L.shape[1]):
        cov = L[:, j] >= 0
        d = {"coverage": float(cov.mean()) if len(cov) else 0.0}
        if y is not None:
            scored = cov & gold
            d["accuracy"] = float((L[scored, j] == y[scored]).mean()) if scored.any() else float("nan")
        out.append(d)
    return out


def filter_programs(L_dev: np.ndarray, y_dev: np.ndarray, *, min_coverage: float = 0.0,
                    min_accuracy: float = 0.0) -> list[int]:
    """Columns with dev coverage >= ``min_coverage`` and dev accuracy (on covered rows) >= ``min_accuracy``."""
    keep = []
    for j, d in enumerate(lf_metrics(L_dev, y_dev)):
        acc = d["accuracy"]
        if d["coverage"] >= min_coverage and (min_accuracy <= 0 or (acc == acc and acc >= min_accuracy)):
            keep.append(j)
    return keep


@dataclass
class CombinedLabels:
    """Output of :func:`combine_sources`.

    Attributes:
        probs: ``(n, k)`` train posteriors (``cascade``: one-hot hard labels, as in the reference).
        covered: ``(n,)`` rows with a label the sources support (``cascade``: every row).
        models: the fitted label models (``{"human": ..., "generated": ...}`` or ``{"joint": ...}``).
        columns: which columns of the human / generated matrices were used (all-abstain columns are dropped).
        mode: the combination mode.
    """

    probs: np.ndarray
    covered: np.ndarray
    models: dict[str, Any]
    columns: dict[str, list[int]]
    mode: str

    def predict_proba(self, L_human: np.ndarray | None, L_gen: np.ndarray | None) -> np.ndarray:
        """Posteriors on another split (same columns as at fit time), for label-model test metrics."""
        Lh = L_human[:, self.columns["human"]] if L_human is not None and self.columns.get("human") else None
        Lg = L_gen[:, self.columns["generated"]] if L_gen is not None and self.columns.get("generated") else None
        if self.mode == "human":
            return self.models["human"].predict_proba(Lh)
        if self.mode == "generated":
            return self.models["generated"].predict_proba(Lg)
        if self.mode == "joint":
            return self.models["joint"].predict_proba(np.hstack([x for x in (Lh, Lg) if x is not None]))
        ph = self.models["human"].predict_proba(Lh)
        if "generated" not in self.models:
            return ph
        pg = self.models["generated"].predict_proba(Lg)
        return np.where(self.models["human"].covered_rows(Lh)[:, None], ph, pg)


def _voting_columns(L: np.ndarray | None) -> list[int]:
    if L is None:
        return []
    return [j for j in range(L.shape[1]) if (L[:, j] >= 0).any()]


def combine_sources(L_human: np.ndarray | None, L_gen: np.ndarray | None, *, mode: str = "joint",
                    label_model: str = "auto", num_classes: int, seed: int = 0,
                    class_balance: Any = None, label_model_kwargs: dict[str, Any] | None = None) -> CombinedLabels:
    """Aggregate hand-written (``L_human``) and generated (``L_gen``) votes on the training split.

    Args:
        L_human, L_gen: ``(n, m_h)`` / ``(n, m_g)`` label matrices (either may be ``None`` for a single source).
        mode: ``human``, ``generated``, ``joint`` or ``cascade`` (see the module docstring).
        label_model: a name for :func:`lightning_ws.labelmodels.make_label_model`; default ``"auto"``, the
            package's label-free default, as in :class:`~lightning_ws.datamodules.ProgramLabelDataModule` (it was
            ``"moment_matching"``, which can lose to majority vote).
        num_classes: ``k``.
        seed: label-model seed.
        class_balance: passed to ``fit`` (``None`` = estimated without labels; recorded by the model).
        label_model_kwargs: other constructor arguments.

    Raises:
        ConfigError: unknown mode, or a source the mode needs is missing / never votes.
    """
    from lightning_ws.labelmodels import make_label_model

    if mode not in COMBINE_MODES:
        raise ConfigError(f"unknown combination mode {mode!r}; choose from {COMBINE_MODES}.")
    kw = {"num_classes": num_classes, "seed": seed, **(label_model_kwargs or {})}
    ch, cg = _voting_columns(L_human), _voting_columns(L_gen)
    need = {"human": ("human",), "generated": ("generated",), "joint": (), "cascade": ("human",)}[mode]
    for src, cols in (("human", ch), ("generated", cg)):
        if src in need and not cols:
            raise ConfigError(f"mode {mode!r} needs {src} labeling functions that vote at least once.")
    if mode == "joint" and not ch and not cg:
        raise ConfigError("mode 'joint' needs at least one labeling function that votes.")
    Lh = L_human[:, ch] if ch else None
    Lg = L_gen[:, cg] if cg else None
    cols = {"human": ch, "generated": cg}

    def fit(L: np.ndarray) -> Any:
        return make_label_model(label_model, **kw).fit(L, class_balance=class_balance)

    if mode in ("human", "generated"):
        L = Lh if mode == "human" else Lg
        model = fit(L)
        return CombinedLabels(model.predict_proba(L), model.covered_rows(L), {mode: model}, cols, mode)
    if mode == "joint":
        L = np.hstack([x for x in (Lh, Lg) if x is not None])
        model = fit(L)
        return CombinedLabels(model.predict_proba(L), model.covered_rows(L), {"joint": model}, cols, mode)
    # cascade (spec §3.6)
    mh = fit(Lh)
    n = Lh.shape[0]
    cov = mh.covered_rows(Lh)  # rows a human LF the model uses votes on (auto ignores constant LFs)
    probs = np.zeros((n, num_classes))
    ph = mh.predict_proba(Lh)
    probs[cov, ph[cov].argmax(1)] = 1.0
    models = {"human": mh}
    unc = np.flatnonzero(~cov)
    if unc.size and Lg is not None:
        sub = Lg[unc]
        vote = [j for j in range(sub.shape[1]) if (sub[:, j] >= 0).any()]
        if vote:
            mg = make_label_model(label_model, **kw).fit(sub[:, vote], class_balance=class_balance)
            cols["generated"] = [cg[j] for j in vote]
            pg = mg.predict_proba(sub[:, vote])
            models["generated"] = mg
        else:
            pg = np.tile(mh.class_balance_, (unc.size, 1))
        probs[unc, pg.argmax(1)] = 1.0
    elif unc.size:
        probs[unc, np.tile(mh.class_balance_, (unc.size, 1)).argmax(1)] = 1.0
    return CombinedLabels(probs, np.ones(n, dtype=bool), models, cols, mode)


def label_metrics(probs: np.ndarray, y: np.ndarray, covered: np.ndarray | None = None,
                  positive: int | None = 1) -> dict[str, float]:
    """Accuracy and F1 of ``argmax(probs)`` (binary F1 of class ``positive`` when ``k == 2``, else macro F1), on
    all rows and on ``covered`` rows. Ties go to the lowest class id (WRENCH's rule)."""
    if probs.shape[0] != y.shape[0]:
        raise DataError(f"{probs.shape[0]} predictions for {y.shape[0]} labels.")
    pred = probs.argmax(1)
    k = probs.shape[1]

    def f1(p: np.ndarray, t: np.ndarray) -> float:
        classes = [positive] if k == 2 and positive is not None else list(range(k))
        scores = []
        for c in classes:
            tp = float(((p == c) & (t == c)).sum())
            fp = float(((p == c) & (t != c)).sum())
            fn = float(((p != c) & (t == c)).sum())
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return float(np.mean(scores))

    out = {"acc": float((pred == y).mean()), "f1": f1(pred, y)}
    if covered is not None:
        c = covered.astype(bool)
        out["coverage"] = float(c.mean())
        out["acc_covered"] = float((pred[c] == y[c]).mean()) if c.any() else float("nan")
        out["f1_covered"] = f1(pred[c], y[c]) if c.any() else float("nan")
    return out
