"""Benchmark the label models of ``lightning_ws.labelmodels`` against majority vote and snorkel 0.10's LabelModel.

Part 1 (WRENCH, shipped data): fit on the train split (inductive), score on test - YouTube accuracy, SMS spam F1 -
on all test rows and on covered rows. Hard labels use the same seeded random tie break for every model (snorkel's
probabilities included), averaged over 10 tie seeds. Fit time: median of ``--repeats`` fits, ratio to snorkel's.
Convergence: the snorkel objective and its projected-gradient norm at snorkel's and at our solution (same class
balance: uniform, snorkel's default).

Part 2 (scale): a synthetic ``n x m`` binary label matrix (default 1,000,000 x 100, int8) with known LF accuracies;
each model is fitted in a fresh subprocess: fit time, peak memory (tracemalloc peak of numpy allocations during fit
and the peak RSS during fit minus the RSS before it, with the kernel's peak counter reset), MAE of the recovered LF
accuracies.

    python benchmarks/bench_labelmodels.py                 # everything
    python benchmarks/bench_labelmodels.py --skip-scale    # WRENCH only
    python benchmarks/bench_labelmodels.py --scale-n 200000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

OURS = ("majority_vote", "weighted_majority_vote", "dawid_skene", "moment_matching", "triplet")


def _snorkel():
    try:
        from snorkel.labeling.model import LabelModel as SnorkelLabelModel
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return SnorkelLabelModel


def _score(y, pred, metric):
    from lightning_ws.labelmodels.cli import score

    return score(y, pred, metric)


def _hard(proba, seeds, prior):
    from lightning_ws.labelmodels import probs_to_preds

    return [probs_to_preds(proba, "random", seed=s, prior=prior)[0] for s in seeds]


def _fit_snorkel(SL, L, class_balance, epochs, seed):
    lm = SL(cardinality=2, verbose=False)
    lm.fit(L, class_balance=class_balance, n_epochs=epochs, lr=0.01, seed=seed, progress_bar=False)
    return lm


def bench_wrench(repeats: int, snorkel_epochs: int, head_to_head: list[dict] | None = None) -> list[dict]:
    from lightning_ws.data import load_wrench
    from lightning_ws.labelmodels import (
        MomentMatching,
        covered_mask,
        make_label_model,
        moment_matching_objective,
        off_diagonal_block_mask,
    )
    from lightning_ws.labelmodels.matrix import overlap_matrix
    from lightning_ws.labelmodels.moment_matching import _projected_grad_norm

    SL = _snorkel()
    seeds = range(10)
    rows: list[dict] = []
    head_to_head = [] if head_to_head is None else head_to_head
    for ds, metric in (("youtube", "accuracy"), ("sms", "f1")):
        tr, va, te = (load_wrench(ds, s) for s in ("train", "valid", "test"))
        Ltr, Lte = tr.weak_labels, te.weak_labels
        cov = covered_mask(Lte)
        dev_cb = (np.bincount(va.labels, minlength=2) + 1.0) / (len(va.labels) + 2)

        def record(name, cb_mode, fit, proba_fn, prior, extra=None):
            times, model = [], None
            for _ in range(repeats):
                t0 = time.perf_counter()
                model = fit()
                times.append(time.perf_counter() - t0)
            proba = proba_fn(model)
            preds = _hard(proba, seeds, prior)
            r = {"dataset": ds, "metric": metric, "model": name, "class_balance": cb_mode,
                 "all": float(np.mean([_score(te.labels, p, metric) for p in preds])),
                 "covered": float(np.mean([_score(te.labels[cov], p[cov], metric) for p in preds])),
                 "fit_s": statistics.median(times)}
            r.update(extra(model) if extra else {})
            rows.append(r)
            return model

        for name in OURS:
            for mode in ("estimated", "dev"):
                record(name, mode, lambda n=name, md=mode: make_label_model(n, seed=0).fit(Ltr, md, dev_y=va.labels),
                       lambda mdl: mdl.predict_proba(Lte), None,
                       lambda mdl: {"converged": mdl.fit_report_.get("converged"),
                                    "n_iter": mdl.fit_report_.get("n_iter")})
        # convergence comparison at snorkel's default (uniform) class balance
        O = overlap_matrix(Ltr, 2)
        mask = off_diagonal_block_mask(Ltr.shape[1], 2)
        pu = np.array([0.5, 0.5])

        def conv(mu):
            f, g = moment_matching_objective(mu, O, pu, mask)
            return {"objective": f, "proj_grad_norm": _projected_grad_norm(np.clip(mu, 0, 1), g),
                    "grad_norm": float(np.abs(g).max())}

        if SL is not None:  # head to head, interleaved so that load drift on a shared machine hits both alike
            pairs = []
            for _ in range(max(repeats, 3)):
                t0 = time.perf_counter()
                make_label_model("moment_matching", seed=0).fit(Ltr, "estimated")
                t1 = time.perf_counter()
                _fit_snorkel(SL, Ltr, None, snorkel_epochs, 0)
                pairs.append((t1 - t0, time.perf_counter() - t1))
            ours, theirs = (statistics.median(x) for x in zip(*pairs))
            head_to_head.append({"dataset": ds, "mm_estimated_s": ours, "snorkel_uniform_s": theirs,
                                 "ratio_of_medians": ours / theirs,
                                 "median_pair_ratio": statistics.median(a / b for a, b in pairs),
                                 "min_ratio": min(a for a, _ in pairs) / min(b for _, b in pairs)})
        record("moment_matching", "uniform", lambda: MomentMatching(seed=0).fit(Ltr, "uniform"),
               lambda mdl: mdl.predict_proba(Lte), None, lambda mdl: conv(mdl.mu_))
        if SL is not None:
            for mode, cb in (("uniform", None), ("dev", list(dev_cb))):
                record(f"snorkel-0.10 ({snorkel_epochs} ep)", mode,
                       lambda cb=cb: _fit_snorkel(SL, Ltr, cb, snorkel_epochs, 0),
                       lambda mdl: mdl.predict_proba(Lte), None,
                       (lambda mdl: conv(mdl.mu.detach().numpy().astype(np.float64))) if mode == "uniform" else None)
    return rows


def _child(model: str, path: str, p1: float) -> None:
    """Fit one model on the saved matrix; print a JSON line with time, memory and recovery error."""
    data = np.load(path)
    L, acc = data["L"], data["acc"]
    cb = [1 - p1, p1]
    # warm-up on a slice so that lazy imports (scipy.sparse, scipy.optimize, snorkel) are not timed or measured
    name, _, mode = model.partition(":")
    if model.startswith("snorkel"):
        _fit_snorkel(_snorkel(), L[:2000].astype(np.int64), cb, 5, 0)
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
        lm = _fit_snorkel(SL, L.astype(np.int64), cb, 100, 0)
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
              "moment_matching", "triplet"]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--snorkel-epochs", type=int, default=100, help="snorkel's default is 100")
    ap.add_argument("--skip-wrench", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--scale-n", type=int, default=1_000_000)
    ap.add_argument("--scale-m", type=int, default=100)
    ap.add_argument("--no-scale-snorkel", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="per-model timeout of the scale runs (s)")
    ap.add_argument("--threads", type=int, default=1)
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
    if not args.skip_wrench:
        h2h: list[dict] = []
        rows = bench_wrench(args.repeats, args.snorkel_epochs, h2h)
        for ds in ("youtube", "sms"):
            sub = [r for r in rows if r["dataset"] == ds]
            sn = [r for r in sub if r["model"].startswith("snorkel") and r["class_balance"] == "uniform"]
            ref = sn[0]["fit_s"] if sn else float("nan")
            print(f"\n### WRENCH {ds} (test {sub[0]['metric']}, %; fit on train; 10 tie seeds)\n")
            print("| model | class balance | all rows | covered rows | fit s | time / snorkel | objective | "
                  "proj. grad |")
            print("|---|---|---|---|---|---|---|---|")
            for r in sub:
                obj = f"{r['objective']:.3e}" if "objective" in r else ""
                pg = f"{r['proj_grad_norm']:.1e}" if "proj_grad_norm" in r else ""
                print(f"| {r['model']} | {r['class_balance']} | {100 * r['all']:.2f} | {100 * r['covered']:.2f} | "
                      f"{r['fit_s']:.3f} | {r['fit_s'] / ref:.2f} | {obj} | {pg} |")
        if h2h:
            print("\n### MomentMatching (label-free class balance) vs snorkel 0.10 (uniform), fits interleaved\n")
            print("| data set | ours s (median) | snorkel s (median) | ratio of medians | median of pair ratios | "
                  "ratio of minima |")
            print("|---|---|---|---|---|---|")
            for r in h2h:
                print(f"| {r['dataset']} | {r['mm_estimated_s']:.4f} | {r['snorkel_uniform_s']:.4f} | "
                      f"{r['ratio_of_medians']:.3f} | {r['median_pair_ratio']:.3f} | {r['min_ratio']:.3f} |")
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
