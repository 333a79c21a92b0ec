"""R&B benchmarks (arXiv 2505.00358): callback overhead and the synthetic "hidden skills" experiment.

Sections (``--only overhead|skills|realtext``; default all three):

* **overhead** (issue 5, target <= 1.02): step time with ``RnBCallback`` vs the same run without it, in one process,
  in short interleaved blocks (ABC / CBA rounds, fresh fit per block, same initial weights), process-CPU and wall time,
  median of the per-round ratios with a bootstrap interval, plus the callback's own hook time measured directly. Two
  models: a byte-level causal transformer LM (2 layers, d = 128, vocab 257, context 64; next-byte prediction on the
  shipped YouTube comments + SMS, 6 domains; R&B tracks ``lm_head`` with ``loss_reduction="token_mean"``), exact and
  with a 32 x 32 Kronecker sketch; and the pretrained MiniLM classifier on YouTube comments (fixed 64-token padding).
  Exact accumulation is measured on both paths (``accumulation="hooks"``: "exact"; ``"fused"``: "exact fused"). It
  starts with a microbenchmark of the LM head's backward alone (plain autograd vs fused vs plain + hook accumulation;
  ``--layer-reps``).
* **skills** (spec §13.1): 16 latent clusters in 32-d with shared teachers and two label-noise clusters, 4 coarse
  "human" domains of 4 clusters each, an evaluation set skewed to clusters 0-3 (which are also the smallest in
  training). Regroup (k-means, k by silhouette) is scored by ARI against the latent clusters; then a 2-layer MLP is
  trained for ``--steps`` steps (batch 32) with stratified (original), stratified (regrouped = "regroup only"), R&B
  (original) and R&B (regrouped), over ``--seeds`` seeds; final eval loss mean +- std and paired differences.

* **realtext** (issue 5): the shipped YouTube comments (5 videos) + SMS as 6 original domains, at most
  ``--realtext-per-domain`` (300) training texts per domain, an evaluation set from the held-out split with
  ``--realtext-skew-share`` (60%) of it on ``--realtext-skew`` (Eminem, SMS). Texts are embedded once with the shipped
  MiniLM (mean pool) and the embeddings are shared by the regroup (k by silhouette; ARI vs the original domains) and
  by every training arm: a frozen-embedding MLP head (384-64-64-2, R&B tracks its final Linear) trained on spam/ham for
  ``--steps`` steps with stratified (original), stratified (regrouped), R&B (regrouped) and R&B (original), over
  ``--seeds`` seeds; eval cross-entropy on the skewed set at the last step, mean +- std and paired differences. A
  frozen encoder keeps 4 methods x several seeds to a few minutes on 2 CPU cores (fine-tuning even a 1-layer encoder
  per arm would not) and matches R&B's premise that the embedding space proxies the gradient geometry.

Run: ``python benchmarks/bench_rnb.py`` (about 5-15 minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402

from _alternating import AlternatingSteps, split_on_off  # noqa: E402  (benchmarks/, the script's folder)
from lightning_ws.callbacks.rnb import RnBCallback  # noqa: E402
from lightning_ws.datamodules.rnb import MixtureDataModule, TensorMixtureDataModule  # noqa: E402
from lightning_ws.rnb import SemanticRegrouper  # noqa: E402


def _quiet_trainer(max_steps: int, callbacks: list, **kw) -> pl.Trainer:
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return pl.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, **kw)


class _StepTimer(pl.Callback):
    """Wall and process-CPU time of each optimizer step, from the first callback's ``on_train_batch_start`` to the last
    callback's ``on_train_batch_end``: put ``timer.first`` first and ``timer`` last in the callback list, so every other
    callback's hooks are inside. CPU time (``time.process_time``) excludes the time the OS gives to other jobs, which
    matters on a shared machine."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._t = self._c = 0.0
        timer = self

        class _Start(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                timer._t, timer._c = time.perf_counter(), time.process_time()

        self.first = _Start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)
        self.cpu.append(time.process_time() - self._c)


# ----------------------------------------------------------------------------- overhead
def _fixed_length_text_dm(batch: int, max_length: int, seed: int):
    """YouTube comments through ``MixtureDataModule``, padded to ``max_length`` (so that a step costs the same whatever
    the mixture draws: with dynamic padding the callback's mixture changes alter the batch lengths, which confounds the
    with/without comparison)."""
    from lightning_ws.datamodules.text import pad_collate

    class _FixedLength(MixtureDataModule):
        def _collate(self, items):
            out = pad_collate(items, pad_id=int(self.tokenizer.pad_token_id or 0))
            pad, pad_id = self.max_length - out["input_ids"].shape[1], int(self.tokenizer.pad_token_id or 0)
            if pad > 0:
                out["input_ids"] = nn.functional.pad(out["input_ids"], (0, pad), value=pad_id)
                out["attention_mask"] = nn.functional.pad(out["attention_mask"], (0, pad), value=0)
            return out

    return _FixedLength("youtube_comments", batch_size=batch, max_length=max_length, seed=seed)


def _overhead_cases(lm_batch: int, cls_batch: int):
    """``(title, build(seed) -> (model, datamodule), {arm: callback factory or None}, warm-up steps)`` per model."""
    from lightning_ws.modules import TextClassifier

    x, y, dom, edom, names = make_byte_lm_data(context=64)

    def lm_build(seed: int):
        dm = TensorMixtureDataModule(x, y, dom, eval_domains=edom, domain_names=names, batch_size=lm_batch, seed=seed)
        torch.manual_seed(0)  # same initial weights in every block
        return ByteLM(d=128, layers=2, heads=4, context=64), dm

    def lm_cb(sketch, accumulation):
        return lambda: RnBCallback(layer="lm_head", steps_per_round=5, loss_reduction="token_mean",
                                   target_key="labels", sketch_dim=sketch, accumulation=accumulation)

    def cls_build(seed: int):
        dm = _fixed_length_text_dm(cls_batch, 64, seed)
        torch.manual_seed(0)
        return TextClassifier(num_classes=2), dm

    n_lm = sum(p.numel() for p in ByteLM().parameters())
    return [
        (f"byte-level causal LM (2 layers, d=128, {n_lm / 1e6:.2f}M params, vocab 257, context 64), batch {lm_batch}; "
         f"tracked: lm_head 257 x 129, token_mean",
         lm_build, {"without": None, "exact": lm_cb(None, "hooks"), "exact fused": lm_cb(None, "fused"),
                    "sketch 32x32": lm_cb([32, 32], "hooks")}, 3),
        (f"MiniLM-L6 classifier (pretrained, 22.7M params, 64 tokens), batch {cls_batch}; tracked: classifier 2 x 385",
         cls_build, {"without": None,
                     "exact": lambda: RnBCallback(layer="classifier", steps_per_round=5, accumulation="hooks"),
                     "exact fused": lambda: RnBCallback(layer="classifier", steps_per_round=5, accumulation="fused")},
         2),
    ]


def bench_overhead(steps: tuple[int, int], rounds: tuple[int, int], lm_batch: int, cls_batch: int,
                   only_lm: bool = False, seed: int = 0) -> None:
    """Step time with vs without ``RnBCallback``, same process, blocks interleaved A B C / C B A.

    Every block is a fresh ``Trainer.fit`` of ``warmup + steps`` optimizer steps from the same initial weights; its
    figure is the mean of its last ``steps`` step times (first callback's batch start -> last callback's batch end, so
    every hook of the callback is inside; data loading is outside and identical). ``steps`` is a multiple of the
    callback's round length K = 5, so the window holds exactly ``steps / 5`` mixture updates (a median would hide the
    update steps). Each round runs every arm once, in forward order on even rounds and in reverse on odd ones (linear
    drift cancels); an arm's ratio is taken against the "without" block of the same round. Reported for process CPU
    time (primary: on a machine shared with other jobs it excludes the time the OS gives them) and for wall time: the
    median of the per-round ratios, a 95% bootstrap interval of that median (resampling rounds) and the min/max
    ratio, and the ratio of each arm's fastest block; plus the callback's own CPU time per step measured directly (all
    its hooks, forward hook / fused-forward planning included; the fused arm's accumulation runs inside the tracked
    layer's backward and is not in that column: see :func:`bench_tracked_layer_backward`). Arms: "exact" =
    ``accumulation="hooks"``, "exact fused" = ``accumulation="fused"``, "sketch 32x32" = hooks with a sketch.
    ``steps`` and ``rounds`` are given per model (LM, MiniLM).
    """
    rng = np.random.default_rng(seed)
    print("\n## Overhead: step time with vs without RnBCallback (same process, interleaved ABC/CBA blocks)")
    print(f"torch threads {torch.get_num_threads()}; per block: a fresh fit, warm-up steps + timed steps (block value "
          f"= mean of the timed steps, which include their share of mixture updates, K = 5)")
    cases = _overhead_cases(lm_batch, cls_batch)
    if only_lm:
        cases = cases[:1]

    def ratio_stats(v: np.ndarray, base: np.ndarray) -> str:
        ratio = v / base
        boot = np.median(ratio[rng.integers(0, len(ratio), size=(4000, len(ratio)))], axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return f"{np.median(ratio):.4f} | {lo:.4f}..{hi:.4f} | {ratio.min():.3f}..{ratio.max():.3f}"

    for (title, build, arms, warmup), steps, rounds in zip(cases, steps, rounds):
        if steps % 5:
            raise SystemExit(f"timed steps per block must be a multiple of K = 5, got {steps}.")
        names = list(arms)
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        hooks_cpu = {n: [] for n in names}
        load: list[float] = []
        model, dm = build(seed)  # warm-up fit (allocator, lazy imports, tokenisation)
        timer = _StepTimer()
        _quiet_trainer(2, [timer.first, timer]).fit(model, dm)
        t_case = time.perf_counter()
        for r in range(rounds):
            load.append(os.getloadavg()[0])
            for name in (names if r % 2 == 0 else names[::-1]):
                model, dm = build(seed)
                timer = _StepTimer()
                cbs: list = [timer.first, timer]
                acc = {"s": 0.0, "steps": 0}
                if arms[name] is not None:
                    cb = arms[name]()
                    _time_hooks(cb, acc)
                    cbs.insert(1, cb)
                _quiet_trainer(warmup + steps, cbs).fit(model, dm)
                wall[name].append(statistics.fmean(timer.times[warmup:]))
                cpu[name].append(statistics.fmean(timer.cpu[warmup:]))
                hooks_cpu[name].append(acc["s"] / max(1, acc["steps"]))
        elapsed = time.perf_counter() - t_case
        base_c, base_w = np.asarray(cpu["without"]), np.asarray(wall["without"])
        print(f"\n{title}")
        print(f"  {rounds} rounds x {len(names)} blocks of {warmup} + {steps} steps in {elapsed:.0f} s; load average "
              f"during the case {min(load):.1f}..{max(load):.1f}")
        print(f"  | arm | CPU [ms/step] | CPU ratio (median of {rounds} rounds) | 95% bootstrap CI | min..max | "
              f"wall [ms/step] | wall ratio | 95% CI | min..max | callback hooks CPU [ms/step] | hooks / step |")
        print("  |---|---|---|---|---|---|---|---|---|---|---|")
        for name in names:
            c, w = np.asarray(cpu[name]), np.asarray(wall[name])
            if name == "without":
                print(f"  | {name} | {1000 * np.median(c):.2f} | 1 | - | - | {1000 * np.median(w):.2f} | 1 | - | - | "
                      f"- | - |")
                continue
            h = float(np.median(hooks_cpu[name]))
            print(f"  | {name} | {1000 * np.median(c):.2f} | {ratio_stats(c, base_c)} | {1000 * np.median(w):.2f} | "
                  f"{ratio_stats(w, base_w)} | {1000 * h:.3f} | {h / np.median(base_c):.2%} |")
        print("  ratio of the fastest block of each arm (interference from other jobs only adds time, so the minimum "
              "is the least disturbed estimate): " + "; ".join(
                  f"{n}: CPU {min(cpu[n]) / min(cpu['without']):.4f}, wall {min(wall[n]) / min(wall['without']):.4f}"
                  for n in names if n != "without"))
        for label, data, base in (("CPU", cpu, base_c), ("wall", wall, base_w)):
            print(f"  per-round {label} ratios: " + "; ".join(
                f"{n}: {[round(float(q), 3) for q in np.asarray(data[n]) / base]}" for n in names if n != "without"))


class _AlternatingRnB(AlternatingSteps, RnBCallback):
    """``RnBCallback`` that works on even batches only (see :class:`AlternatingSteps`): on odd batches no domain ids
    are set, so the tracked layer runs a plain forward/backward (the fused forward falls through to ``F.linear``; the
    forward hook returns at once); rounds count the active optimizer steps."""


ALTERNATING_ARMS = {"exact": "hooks", "exact fused": "fused", "sketch 32x32": [32, 32], "sketch 16x16": [16, 16]}


def bench_overhead_alternating(fits: int, steps: int, lm_batch: int, drop: int = 10, seed: int = 0,
                               arms: list[str] | None = None, steps_per_round: int = 5, packed: bool = False) -> None:
    """LM step time with vs without the callback, alternating steps inside each fit (lower noise than blocks).

    Every fit runs ``2 * steps`` optimizer steps from the same initial weights with :class:`_AlternatingRnB`
    (``steps_per_round`` active steps per round); ``arms``: names from :data:`ALTERNATING_ARMS` (default all);
    ``packed``: every position is a target (as in packed LM pretraining batches; the fused path's grouped mode). After dropping the first ``drop`` steps, a fit's ratio is the mean process-CPU time of
    its active steps (mixture updates included) over the mean of its inactive ones; the arms' fits are interleaved
    (forward / reverse order). Reported: median, min and max over ``fits`` of that ratio, and of the ratio of medians
    (which leaves the update steps out).
    """
    x, y, dom, edom, names = make_byte_lm_data(context=64, packed=packed)
    arms = {a: ALTERNATING_ARMS[a] for a in (arms or ALTERNATING_ARMS)}
    res: dict[str, dict[str, list[float]]] = {a: {"mean": [], "median": [], "on": [], "off": []} for a in arms}
    order = list(arms)
    print(f"\n## Overhead, alternating steps in one fit (byte-level LM{' packed' if packed else ''}, batch {lm_batch}, "
          f"tracked lm_head, token_mean, K = {steps_per_round}; {fits} fits per arm x {steps} steps with + {steps} without, first {drop} steps dropped; process CPU time, "
          f"torch threads {torch.get_num_threads()})")
    t0 = time.perf_counter()
    for f in range(fits + 1):  # fit 0 warms up (allocator, lazy imports) and is not counted
        for arm in (order if f % 2 == 0 else order[::-1]):
            kind = arms[arm]
            dm = TensorMixtureDataModule(x, y, dom, eval_domains=edom, domain_names=names, batch_size=lm_batch,
                                         seed=seed)
            torch.manual_seed(0)
            model = ByteLM(d=128, layers=2, heads=4, context=64)
            cb = _AlternatingRnB(layer="lm_head", steps_per_round=steps_per_round, loss_reduction="token_mean",
                                 target_key="labels",
                                 sketch_dim=kind if isinstance(kind, list) else None,
                                 accumulation="fused" if kind == "fused" else "hooks")
            timer = _StepTimer()
            _quiet_trainer(2 * steps, [timer.first, cb, timer]).fit(model, dm)
            if f == 0:
                continue
            on, off = split_on_off(timer.cpu, cb.flags, drop)
            res[arm]["mean"].append(statistics.fmean(on) / statistics.fmean(off))
            res[arm]["median"].append(statistics.median(on) / statistics.median(off))
            res[arm]["on"].append(statistics.fmean(on))
            res[arm]["off"].append(statistics.fmean(off))
    print(f"({time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f})")
    print("| arm | CPU ms/step without | with | ratio of means (updates included), median [min-max] over fits | "
          "ratio of medians, median [min-max] |")
    print("|---|---|---|---|---|")
    for arm, r in res.items():
        print(f"| {arm} | {1000 * statistics.median(r['off']):.2f} | {1000 * statistics.median(r['on']):.2f} | "
              f"{statistics.median(r['mean']):.4f} [{min(r['mean']):.4f}-{max(r['mean']):.4f}] | "
              f"{statistics.median(r['median']):.4f} [{min(r['median']):.4f}-{max(r['median']):.4f}] |")


def _time_hooks(cb: RnBCallback, acc: dict) -> None:
    """Accumulate the CPU time spent inside the callback: every per-step hook plus the forward hook on the tracked
    layer (the tensor hook it registers only stores a reference) and the fused path's per-call planning. Must run
    before ``fit`` (the forward hook and the fused forward are installed in ``setup`` from the instance attributes).
    The fused backward's work (per-example bmm, per-domain GEMM) replaces autograd's weight gradient inside the
    backward and cannot be separated from it here."""
    for name in ("on_train_batch_start", "_forward_hook", "_plan_fused", "on_after_backward",
                 "on_before_optimizer_step", "on_train_batch_end"):
        fn = getattr(cb, name)

        def timed(*args, _fn=fn, _name=name, **kwargs):
            t0 = time.process_time()
            out = _fn(*args, **kwargs)
            acc["s"] += time.process_time() - t0
            if _name == "on_train_batch_end":
                acc["steps"] += 1
            return out

        setattr(cb, name, timed)


def bench_tracked_layer_backward(reps: int = 150, tokens: tuple[int, int] = (32, 64), d_in: int = 128,
                                 d_out: int = 257, m: int = 4, seed: int = 0) -> None:
    """Backward cost of the tracked layer alone (the LM head: 32 x 64 = 2048 tokens, 128 + bias -> 257, 4 domains).

    Calling-thread CPU time (``time.thread_time``, torch set to 1 thread) of the backward only (the forward is built
    untimed before each), median over ``reps`` interleaved repetitions, for: plain autograd ``F.linear``; the fused
    backward (:func:`~lightning_ws.rnb.functional.fused_linear`) with token_mean-like per-example scales (per-example
    mode) and with one scale (grouped mode); plain autograd followed by the hook path's
    :func:`~lightning_ws.rnb.functional.accumulate_domain_grads` (strategy ``auto``, which is ``grouped`` at this
    size, and ``per_example``).
    """
    import torch.nn.functional as F

    from lightning_ws.rnb.functional import (
        PER_EXAMPLE_MAX_ELEMENTS,
        DomainGradSink,
        accumulate_domain_grads,
        fused_linear,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    b, t = tokens
    x0 = torch.randn(b, t, d_in, generator=gen)
    w = torch.randn(d_out, d_in, generator=gen).mul_(d_in ** -0.5).requires_grad_(True)
    bias = torch.zeros(d_out).requires_grad_(True)
    g = torch.randn(b, t, d_out, generator=gen)
    domains = torch.randint(0, m, (b,), generator=gen)
    n_i = torch.randint(1, t + 1, (b,), generator=gen).double()
    scale = n_i.sum() / n_i  # token_mean: N_tokens / n_i
    sums, counts = torch.zeros(m, d_out, d_in + 1), torch.zeros(m, dtype=torch.float64)

    def plain():
        x = x0.clone().requires_grad_(True)
        y = F.linear(x, w, bias)
        t0 = time.thread_time()
        torch.autograd.grad(y, (x, w, bias), g)
        return time.thread_time() - t0

    def fused(mode):
        def run():
            x = x0.clone().requires_grad_(True)
            sink = DomainGradSink(sums, counts, domains, example_scale=scale if mode == "per_example" else 64.0,
                                  mode=mode)
            y = fused_linear(x, w, bias, sink)
            t0 = time.thread_time()
            torch.autograd.grad(y, (x, w, bias), g)
            return time.thread_time() - t0
        return run

    def hooks(strategy):
        def run():
            x = x0.clone().requires_grad_(True)
            y = F.linear(x, w, bias)
            t0 = time.thread_time()
            torch.autograd.grad(y, (x, w, bias), g)
            accumulate_domain_grads(sums, counts, x.detach(), g, domains, example_scale=scale, strategy=strategy)
            return time.thread_time() - t0
        return run

    variants = {
        "plain autograd (no R&B)": plain,
        "fused, per-example mode (token_mean scales)": fused("per_example"),
        "fused, grouped mode (one scale; mean/sum)": fused("grouped"),
        "plain + hook accumulation, auto (= grouped here)": hooks("auto"),
        "plain + hook accumulation, per_example": hooks("per_example"),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    t_start = time.perf_counter()
    for r in range(reps + 10):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            dt = variants[name]()
            if r >= 10:  # warm-up
                times[name].append(dt)
    torch.set_num_threads(threads)
    base = statistics.median(times["plain autograd (no R&B)"])
    print(f"\n## Tracked-layer backward alone: tokens {b} x {t}, in {d_in} (+ bias), out {d_out}, {m} domains "
          f"(per-example tensor {b * d_out * (d_in + 1) / 1e6:.2f}M elements; PER_EXAMPLE_MAX_ELEMENTS "
          f"{PER_EXAMPLE_MAX_ELEMENTS / 1e6:.2f}M)")
    print(f"calling-thread CPU time, 1 torch thread, median of {reps} interleaved reps "
          f"({time.perf_counter() - t_start:.1f} s)")
    print("| backward | median [ms] | vs plain | extra over plain [ms] |")
    print("|---|---|---|---|")
    for name, v in times.items():
        med = statistics.median(v)
        print(f"| {name} | {1000 * med:.3f} | {med / base:.3f} | {1000 * (med - base):+.3f} |")


# ----------------------------------------------------------------------------- byte-level causal LM
BYTE_PAD = 256  #: input id of padding (targets of padded positions are -100)
BYTE_VOCAB = 257


def make_byte_lm_data(context: int = 64, source: str = "youtube_sms", seed: int = 0, max_per_domain: int | None = None,
                      packed: bool = False):
    """Next-byte prediction over the shipped YouTube comments + SMS (6 domains; the issue's "small transformer LM").

    Every text becomes UTF-8 bytes truncated to ``context + 1``; inputs are bytes ``0..n-2`` padded with ``BYTE_PAD``
    to ``context`` (fixed length, so a step costs the same whatever the mixture draws), targets are bytes ``1..n-1``
    padded with -100. ``packed=True`` instead concatenates each domain's texts (newline-separated, untruncated) and cuts
    the stream into windows of ``context + 1`` bytes, as LM pretraining batches are built: every position is a target.
    Returns a :class:`TensorMixtureDataModule`-ready ``(x, y, domains, eval_domains, names)``.
    """
    from lightning_ws.rnb.data import load_mixture_source

    src = load_mixture_source(source, eval_fraction=0.2, split_seed=0)
    rng = np.random.default_rng(seed)

    def encode(texts):
        x = torch.full((len(texts), context), BYTE_PAD, dtype=torch.long)
        y = torch.full((len(texts), context), -100, dtype=torch.long)
        for i, t in enumerate(texts):
            b = list(t.encode("utf-8")[: context + 1]) or [32]
            if len(b) < 2:
                b = b + [10]
            x[i, : len(b) - 1] = torch.tensor(b[:-1])
            y[i, : len(b) - 1] = torch.tensor(b[1:])
        return x, y

    rows = np.arange(len(src.train_texts))
    if max_per_domain is not None:
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(src.train_domains == d))[:max_per_domain]
                                       for d in range(len(src.domain_names))]))
    if packed:
        windows, doms = [], []
        for d in range(len(src.domain_names)):
            stream = "\n".join(src.train_texts[i] for i in rows if src.train_domains[i] == d).encode("utf-8")
            w = torch.tensor(list(stream[: len(stream) // (context + 1) * (context + 1)]), dtype=torch.long)
            windows.append(w.view(-1, context + 1))
            doms.append(np.full(windows[-1].shape[0], d))
        xy = torch.cat(windows)
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous(), np.concatenate(doms), src.eval_domains, \
            list(src.domain_names)
    x, y = encode([src.train_texts[i] for i in rows])
    return x, y, src.train_domains[rows], src.eval_domains, list(src.domain_names)


class ByteLM(pl.LightningModule):
    """Causal pre-norm transformer LM over bytes (``lm_head`` = the final ``nn.Linear``, 257 outputs), token-mean CE."""

    def __init__(self, d: int = 128, layers: int = 2, heads: int = 4, context: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.tok = nn.Embedding(BYTE_VOCAB, d)
        self.pos = nn.Embedding(context, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, BYTE_VOCAB)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos.weight[:t]
        h = self.blocks(h, mask=self.causal[:t, :t], is_causal=True)
        return self.lm_head(self.norm(h))

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"])
        return nn.functional.cross_entropy(logits.reshape(-1, BYTE_VOCAB), batch["labels"].reshape(-1),
                                           ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------- hidden skills
def make_skills(seed: int = 0):
    """16 clusters (32-d), 8 linear teachers (4-d subspace, around the centre) shared by pairs, clusters 14-15 label noise, 4 coarse domains, skewed eval."""
    rng = np.random.default_rng(seed)
    k, dim, n_cls = 16, 32, 4
    centers = rng.normal(0.0, 3.0, size=(k, dim))
    teachers = rng.normal(0.0, 1.0, size=(8, n_cls, dim))
    teachers[:, :, 4:] = 0.0  # each teacher reads a 4-d subspace around its cluster centre (learnable in minutes)
    sizes = np.array([60] * 4 + [250] * 12)

    def sample(counts: np.ndarray, noisy: bool):
        xs, ys, cs = [], [], []
        for c, n in enumerate(counts):
            if n == 0:
                continue
            x = centers[c] + rng.normal(0.0, 1.0, size=(n, dim))
            y = (teachers[c % 8] @ (x - centers[c]).T).argmax(0)
            if noisy and c >= 14:
                y = rng.integers(0, n_cls, size=n)
            xs.append(x)
            ys.append(y)
            cs.append(np.full(n, c))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)

    x, y, clusters = sample(sizes, noisy=True)
    eval_counts = np.array([175] * 4 + [30] * 10 + [0, 0])  # 70% on clusters 0-3, none on the noise clusters
    xe, ye, ce = sample(eval_counts, noisy=False)
    coarse = clusters % 4  # group g = clusters {g, g+4, g+8, g+12}
    return x.astype(np.float32), y, clusters, coarse, xe.astype(np.float32), ye, ce


class MLP(pl.LightningModule):
    """2-layer MLP; ``classifier`` is the tracked head."""

    def __init__(self, dim: int = 32, hidden: int = 64, n_cls: int = 4, lr: float = 3e-3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, n_cls)
        self.lr = lr

    def forward(self, x):
        return self.classifier(self.body(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["x"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _eval_loss(model: MLP, xe: np.ndarray, ye: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(torch.as_tensor(xe)), torch.as_tensor(ye)))


def bench_skills(steps: int, seeds: int, k_grid: list[int]) -> None:
    from sklearn.metrics import adjusted_rand_score

    x, y, clusters, coarse, xe, ye, ce = make_skills(0)
    print("\n## Hidden skills (spec 13.1): 16 latent clusters, 4 coarse domains, eval skewed to clusters 0-3")
    t0 = time.perf_counter()
    res = SemanticRegrouper(k_grid, seed=0, progress=False).fit(x, xe)
    t_regroup = time.perf_counter() - t0
    ari_train = adjusted_rand_score(clusters, res.train_domains)
    ari_eval = adjusted_rand_score(ce, res.eval_domains)
    print(f"regroup: k grid {k_grid} -> chosen k = {res.k} (silhouette); ARI train {ari_train:.3f}, "
          f"eval {ari_eval:.3f}; {t_regroup:.1f} s")
    print("  k:          " + " ".join(f"{r['k']:>6}" for r in res.table))
    print("  silhouette: " + " ".join(f"{r['silhouette']:>6.3f}" for r in res.table))
    ari_coarse = adjusted_rand_score(clusters, coarse)
    print(f"  (coarse human domains vs latent clusters: ARI {ari_coarse:.3f})")
    arms = {
        "stratified (original 4)": ("stratified", coarse, None),
        "stratified (regrouped) = regroup only": ("stratified", res.train_domains, res.eval_domains),
        "R&B (original 4)": ("rnb", coarse, coarse_eval(ce)),
        "R&B (regrouped) = regroup + balance": ("rnb", res.train_domains, res.eval_domains),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    wall: dict[str, list[float]] = {name: [] for name in arms}
    print(f"training: MLP 32-64-64-4, Adam 3e-3, batch 32, {steps} steps, lam 3, K 20, seeds {seeds}")
    for seed in range(seeds):
        for name, (method, dom, edom) in arms.items():
            eval_dom = edom if edom is not None else coarse_eval(ce)
            dm = TensorMixtureDataModule(torch.as_tensor(x), torch.as_tensor(y), dom, eval_domains=eval_dom,
                                         batch_size=32, seed=seed)
            torch.manual_seed(seed)
            model = MLP()
            cb = RnBCallback(layer="classifier", method=method, lam=3.0, steps_per_round=20)
            t0 = time.perf_counter()
            _quiet_trainer(steps, [cb]).fit(model, dm)
            wall[name].append(time.perf_counter() - t0)
            results[name].append(_eval_loss(model, xe, ye))
    base = np.asarray(results["stratified (original 4)"])
    print(f"\n{'method':<40} {'eval loss (mean +- std)':>24} {'diff vs strat. orig.':>22} {'fit s':>7}")
    for name, vals in results.items():
        v = np.asarray(vals)
        d = v - base
        print(f"{name:<40} {v.mean():>14.4f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.4f} "
              f"{d.mean():>+14.4f} +- {d.std(ddof=1) if len(d) > 1 else 0.0:.4f} {np.mean(wall[name]):>7.1f}")
    print("per-seed eval losses: " + "; ".join(f"{n}: {[round(v, 4) for v in vals]}" for n, vals in results.items()))


def coarse_eval(ce: np.ndarray) -> np.ndarray:
    """Original (coarse) domain of evaluation points: the same cluster -> group map as training."""
    return ce % 4


# ----------------------------------------------------------------------------- real text
def make_realtext(per_domain: int, skew: tuple[str, ...], skew_share: float, seed: int = 0):
    """YouTube comments (5 videos) + SMS (6 original domains): <= ``per_domain`` training texts per domain and an
    evaluation set drawn from the held-out split with ``skew_share`` of it split evenly over the ``skew`` domains."""
    from lightning_ws.rnb.data import load_mixture_source

    src = load_mixture_source("youtube_sms", eval_fraction=0.2, split_seed=0)
    names = list(src.domain_names)
    unknown = [s for s in skew if s not in names]
    if unknown or not skew or len(skew) >= len(names) or not 0.0 < skew_share < 1.0:
        raise SystemExit(f"--realtext-skew must name 1..{len(names) - 1} of {names} (got {list(skew)}) and "
                         f"--realtext-skew-share must lie in (0, 1) (got {skew_share}).")
    rng = np.random.default_rng(seed)
    tr_rows = []
    for d in range(len(names)):
        rows = np.flatnonzero(src.train_domains == d)
        tr_rows.append(np.sort(rng.choice(rows, size=min(per_domain, len(rows)), replace=False)))
    tr = np.concatenate(tr_rows)
    skew_ids = [names.index(s) for s in skew]
    rest = [d for d in range(len(names)) if d not in skew_ids]
    avail = np.bincount(src.eval_domains, minlength=len(names))
    n_skew = int(min(avail[skew_ids]))  # per skewed domain
    n_rest = int(round(n_skew * len(skew_ids) * (1.0 - skew_share) / skew_share / len(rest)))
    n_rest = min(n_rest, int(min(avail[rest])))
    ev_rows = []
    for d in range(len(names)):
        rows = np.flatnonzero(src.eval_domains == d)
        ev_rows.append(np.sort(rng.choice(rows, size=n_skew if d in skew_ids else n_rest, replace=False)))
    ev = np.concatenate(ev_rows)
    return ([src.train_texts[i] for i in tr], src.train_labels[tr], src.train_domains[tr],
            [src.eval_texts[i] for i in ev], src.eval_labels[ev], src.eval_domains[ev], names)


def bench_realtext(steps: int, seeds: int, k_grid: list[int], per_domain: int, skew: tuple[str, ...],
                   skew_share: float) -> None:
    """Real text (issue 5): frozen MiniLM embeddings + MLP head, stratified (original / regrouped) vs R&B."""
    from sklearn.metrics import adjusted_rand_score

    from lightning_ws.rnb import MiniLMEmbedder

    tt, yt, dt, te, ye, de, names = make_realtext(per_domain, skew, skew_share, seed=0)
    m0 = len(names)
    print("\n## Real text: YouTube comments (5 videos) + SMS = 6 original domains, MiniLM regroup, skewed eval")
    print(f"train {len(tt)} texts ({', '.join(f'{n} {c}' for n, c in zip(names, np.bincount(dt, minlength=m0)))}); "
          f"eval {len(te)} texts ({', '.join(f'{n} {c}' for n, c in zip(names, np.bincount(de, minlength=m0)))}); "
          f"eval share of {'+'.join(skew)}: {np.isin(de, [names.index(s) for s in skew]).mean():.1%}; "
          f"spam rate train {yt.mean():.2f}, eval {ye.mean():.2f}")
    t0 = time.perf_counter()
    embedder = MiniLMEmbedder(batch_size=64, max_length=128)
    emb = embedder(list(tt) + list(te))  # embedded once, shared by the regroup and every training arm
    xt, xe = emb[:len(tt)], emb[len(tt):]
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = SemanticRegrouper(k_grid, seed=0, progress=False).fit(xt, xe)
    t_regroup = time.perf_counter() - t0
    ari_train = adjusted_rand_score(dt, res.train_domains)
    ari_eval = adjusted_rand_score(de, res.eval_domains)
    print(f"embed (MiniLM-L6, mean pool, max_length 128): {t_embed:.1f} s; regroup k grid {k_grid} -> chosen k = "
          f"{res.k} (silhouette {max(r['silhouette'] for r in res.table):.3f}); ARI vs original domains: train "
          f"{ari_train:.3f}, eval {ari_eval:.3f}; {t_regroup:.1f} s")
    print("  k:          " + " ".join(f"{r['k']:>6}" for r in res.table))
    print("  silhouette: " + " ".join(f"{r['silhouette']:>6.3f}" for r in res.table))
    print(f"  regrouped train sizes {res.train_sizes.tolist()}, p_eval {[round(float(p), 3) for p in res.p_eval]}")
    arms = {
        f"stratified (original {m0})": ("stratified", dt, de),
        f"stratified (regrouped k={res.k})": ("stratified", res.train_domains, res.eval_domains),
        f"R&B (regrouped k={res.k})": ("rnb", res.train_domains, res.eval_domains),
        f"R&B (original {m0})": ("rnb", dt, de),
    }
    xt_t, xe_t = torch.as_tensor(xt), torch.as_tensor(xe)
    yt_t, ye_t = torch.as_tensor(yt, dtype=torch.long), torch.as_tensor(ye, dtype=torch.long)
    results: dict[str, list[float]] = {name: [] for name in arms}
    accs: dict[str, list[float]] = {name: [] for name in arms}
    finals: dict[str, list[np.ndarray]] = {name: [] for name in arms}
    print(f"training: frozen MiniLM embedding (384-d) -> MLP 384-64-64-2 (R&B tracks the final Linear), Adam 3e-3, "
          f"batch 32, {steps} steps, lam 3, K 20, seeds {seeds}; eval loss = mean CE on the skewed eval set at the "
          f"last step")
    for seed in range(seeds):
        for name, (method, dom, edom) in arms.items():
            dm = TensorMixtureDataModule(xt_t, yt_t, dom, eval_domains=edom, num_domains=int(dom.max()) + 1,
                                         batch_size=32, seed=seed)
            torch.manual_seed(seed)  # model init only (Lightning-module construction draws from the global RNG)
            model = MLP(dim=xt.shape[1], hidden=64, n_cls=2)
            cb = RnBCallback(layer="classifier", method=method, lam=3.0, steps_per_round=20)
            _quiet_trainer(steps, [cb]).fit(model, dm)
            results[name].append(_eval_loss(model, xe_t.numpy(), ye_t.numpy()))
            with torch.no_grad():
                accs[name].append(float((model(xe_t).argmax(1) == ye_t).float().mean()))
            finals[name].append(dm.mixture.numpy().copy())

    def _ms(v: list[float]) -> str:
        a = np.asarray(v)
        return f"{a.mean():.4f} +- {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"

    base = np.asarray(results[f"stratified (original {m0})"])
    print(f"\n| method | eval loss (mean +- std, {seeds} seeds) | diff vs stratified (original) | eval acc |")
    print("|---|---|---|---|")
    for name in arms:
        print(f"| {name} | {_ms(results[name])} | {_ms(list(np.asarray(results[name]) - base))} | "
              f"{_ms(accs[name])} |")
    print("per-seed eval losses: " + "; ".join(f"{n}: {[round(v, 4) for v in vals]}" for n, vals in results.items()))
    for name, (method, _, _) in arms.items():
        if method == "rnb":
            print(f"final mixture {name} (seed 0): {[round(float(p), 3) for p in finals[name][0]]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("overhead", "skills", "realtext"), default=None)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (skills).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--overhead-steps", type=int, nargs=2, default=[5, 5], metavar=("LM", "MINILM"),
                        help="timed steps per overhead block (multiples of 5), LM and MiniLM.")
    parser.add_argument("--overhead-rounds", type=int, nargs=2, default=[20, 10], metavar=("LM", "MINILM"),
                        help="interleaved rounds of the block protocol (one block per arm each), LM and MiniLM "
                        "(0 0 = skip it).")
    parser.add_argument("--overhead-threads", type=int, default=1, help="torch threads for the overhead section.")
    parser.add_argument("--overhead-lm-batch", type=int, default=32)
    parser.add_argument("--overhead-cls-batch", type=int, default=16)
    parser.add_argument("--overhead-only-lm", action="store_true", help="skip the (slow) MiniLM arm.")
    parser.add_argument("--overhead-alternating", type=int, nargs=2, default=[5, 60], metavar=("FITS", "STEPS"),
                        help="LM overhead with alternating steps: fits per arm and active steps per fit (0 0 = skip).")
    parser.add_argument("--overhead-arms", nargs="+", choices=list(ALTERNATING_ARMS), default=None,
                        help="arms of the alternating-steps protocol (default: all).")
    parser.add_argument("--overhead-k", type=int, default=5, help="steps_per_round of the alternating protocol.")
    parser.add_argument("--overhead-packed", action="store_true",
                        help="alternating protocol on packed LM batches (every position a target).")
    parser.add_argument("--layer-reps", type=int, default=150,
                        help="repetitions of the tracked-layer backward microbenchmark (overhead section; 0 = skip).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--realtext-per-domain", type=int, default=300, help="training texts per original domain.")
    parser.add_argument("--realtext-skew", default="Eminem,SMS", help="comma-separated original domains the eval "
                        "set is skewed toward.")
    parser.add_argument("--realtext-skew-share", type=float, default=0.6, help="eval share of the skewed domains.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, CPU count {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    if args.only in (None, "skills"):
        bench_skills(args.steps, args.seeds, [4, 8, 12, 16, 20, 24])
    if args.only in (None, "realtext"):
        bench_realtext(args.steps, args.seeds, [3, 4, 6, 8, 12, 16, 24, 32], args.realtext_per_domain,
                       tuple(s.strip() for s in args.realtext_skew.split(",") if s.strip()), args.realtext_skew_share)
    if args.only in (None, "overhead"):
        torch.set_num_threads(args.overhead_threads)
        if args.layer_reps > 0:
            bench_tracked_layer_backward(args.layer_reps)
        if args.overhead_alternating[0] > 0:
            bench_overhead_alternating(args.overhead_alternating[0], args.overhead_alternating[1],
                                       args.overhead_lm_batch, arms=args.overhead_arms,
                                       steps_per_round=args.overhead_k, packed=args.overhead_packed)
        if min(args.overhead_rounds) > 0:
                bench_overhead(tuple(args.overhead_steps), tuple(args.overhead_rounds), args.overhead_lm_batch,
                           args.overhead_cls_batch, only_lm=args.overhead_only_lm)


if __name__ == "__main__":
    main()
