"""Benchmarks of program labeling (ScriptoriumWS arXiv 2502.12366, Alchemist arXiv 2407.11004).

Sections (each prints the rows recorded in BENCHMARKS.md, "Programs"):

* ``attacks``: the sandbox attack suite (lightning_ws/programs/attacks.py) under the full sandbox and with layers
  switched off one at a time (what each layer contains);
* ``throughput``: 20 programs x N texts (default 100k), sandboxed (1 and 2 workers) vs unsandboxed in-process, in
  one run, interleaved; rows/s and the ratio;
* ``quality``: the recorded ScriptoriumWS / Alchemist responses on WRENCH YouTube and SMS: valid programs, mean
  coverage and accuracy of the programs (train split), label-model test metrics (MV and Snorkel-style moment
  matching), with and without dev filtering; the WRENCH hand-written LFs, programs pooled, joint and cascade;
* ``label-model-default``: ``auto`` (the package's default label model) vs majority vote and ``moment_matching`` for
  every combination mode, valid and test metrics (YouTube, SMS, and TREC's hand-written LFs);
* ``label-model-tiers``: the same label models on every program LF set on its own (each ScriptoriumWS prompt tier and
  Alchemist mode, all programs pooled, and joined with the WRENCH LFs), YouTube and SMS: 18 real label matrices that
  the label models were not developed on; train (transductive), valid and test, and how often ``auto`` falls more
  than 0.5 point below majority vote;

    OMP_NUM_THREADS=1 python benchmarks/bench_programs.py --section attacks
    OMP_NUM_THREADS=1 python benchmarks/bench_programs.py --section throughput --n 100000
    OMP_NUM_THREADS=1 python benchmarks/bench_programs.py --section quality
    OMP_NUM_THREADS=1 python benchmarks/bench_programs.py --section label-model-default
    OMP_NUM_THREADS=1 python benchmarks/bench_programs.py --section label-model-tiers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def attacks() -> None:
    from lightning_ws.programs.attacks import run_attack_suite

    from lightning_ws.programs.sandbox import available_isolation

    configs = [
        ("full sandbox (default)", {}),
        ("full sandbox, namespaces by unshare", {"isolation": "unshare"}),
        ("full sandbox, namespaces by bwrap", {"isolation": "bwrap"}),
        ("python guard off", {"python_guard": False}),
        ("guard + seccomp off", {"python_guard": False, "seccomp": False}),
        ("guard + landlock off", {"python_guard": False, "landlock": False}),
        ("guard + namespaces off", {"python_guard": False, "isolation": "none"}),
        ("guard + seccomp + landlock + namespaces off", {"python_guard": False, "seccomp": False, "landlock": False,
                                                         "isolation": "none"}),
    ]
    print("| configuration | attacks tried | contained | honest programs exact | run completed | seconds | "
          "not contained |")
    print("|---|---|---|---|---|---|---|")
    iso = available_isolation()
    for name, kw in configs:
        if kw.get("isolation") in ("bwrap", "unshare") and not iso[kw["isolation"]]:
            print(f"| {name} | - | - | - | - | - | {kw['isolation']} not available here |")
            continue
        rep = run_attack_suite(**kw)
        bad = [a["name"] for a in rep["attacks"] if not a["contained"]]
        print(f"| {name} | {rep['tried']} | {rep['contained']} | {rep['honest_ok']} | {rep['completed']} | "
              f"{rep['seconds']:.1f} | {', '.join(bad) or '-'} |", flush=True)
        if name == "full sandbox (default)":
            print("layers: " + json.dumps(rep["layers"]), flush=True)
            for a in rep["attacks"]:
                print(f"  {a['name']:24s} contained={a['contained']} errors={','.join(a['errors']) or '-'}",
                      flush=True)


def _recorded_sources(n_programs: int) -> list[str]:
    from lightning_ws.programs.generate import recorded_programs

    progs = [p for t in ("youtube", "sms") for p in recorded_programs(t) if p.valid]
    step = max(1, len(progs) // n_programs)
    return [p.source for p in progs[::step][:n_programs]]


def throughput(n: int, n_programs: int, repeats: int, isolation: str) -> None:
    from lightning_ws.data import load_wrench
    from lightning_ws.programs.sandbox import ProgramSandbox, run_in_process

    srcs = _recorded_sources(n_programs)
    pool = load_wrench("sms", "train").texts + load_wrench("youtube", "train").texts
    texts = [pool[i % len(pool)] + ("" if i < len(pool) else f" #{i // len(pool)}") for i in range(n)]
    print(f"{len(srcs)} programs x {n} texts ({len(srcs) * n} calls); cpu count {os.cpu_count()}; "
          f"isolation {isolation}")
    ref = None
    rows = {"in-process (no isolation)": [], "sandbox, 1 worker": [], "sandbox, 2 workers": []}
    with ProgramSandbox(workers=1, isolation=isolation) as sb1, ProgramSandbox(workers=2, isolation=isolation) as sb2:
        sb1.run(srcs[:1], texts[:10], num_classes=2)  # start the workers (counted separately below)
        sb2.run(srcs[:1], texts[:10], num_classes=2)
        print(f"sandbox namespaces: {sb1.layers.get('namespaces')}; missing layers: {sb1.missing_layers() or 'none'}")
        for _ in range(repeats):
            t = time.perf_counter()
            a = run_in_process(srcs, texts, num_classes=2)
            rows["in-process (no isolation)"].append(time.perf_counter() - t)
            for name, sb in (("sandbox, 1 worker", sb1), ("sandbox, 2 workers", sb2)):
                t = time.perf_counter()
                r = sb.run(srcs, texts, num_classes=2)
                rows[name].append(time.perf_counter() - t)
                assert np.array_equal(r.values, a), "sandboxed and in-process outputs differ"
                assert not r.errors, r.errors[:3]
            ref = a
    assert ref is not None
    base = np.median(rows["in-process (no isolation)"])
    print("| mode | seconds (median) | rows/s (texts x programs / s) | rate vs in-process |")
    print("|---|---|---|---|")
    for name, secs in rows.items():
        med = float(np.median(secs))
        print(f"| {name} | {med:.1f} | {len(srcs) * n / med:,.0f} | {base / med:.2f}x |")


def quality(min_dev_accuracy: float) -> None:
    from lightning_ws.data import load_wrench
    from lightning_ws.programs.apply import apply_programs, combine_sources, dedup_programs, filter_programs, \
        label_metrics, lf_metrics
    from lightning_ws.programs.generate import RECORDED_PROMPT_IDS, recorded_programs
    from lightning_ws.programs.sandbox import ProgramSandbox

    cache = Path("runs/program_cache")
    lms = ("majority_vote", "moment_matching")
    print("Label-model metric on the test split (YouTube: accuracy, SMS: F1 of spam), all rows; "
          "LF coverage/accuracy: mean over programs on the train split; valid/total = programs that pass the static "
          "checks / responses; dedup = behaviourally distinct on train.")
    with ProgramSandbox(workers=2) as sb:
        for task in ("youtube", "sms"):
            metric = "acc" if task == "youtube" else "f1"
            S = {s: load_wrench(task, s) for s in ("train", "valid", "test")}
            allp = recorded_programs(task)
            valid = [p for p in allp if p.valid]
            A = {s: apply_programs(valid, S[s].texts, num_classes=2, sandbox=sb, cache_dir=cache) for s in S}
            errors = sum(len(a.errors) for a in A.values())
            print(f"\n### {task} ({metric}); sandbox error records: {errors}")
            print(f"| LF set | valid/total | dedup | filtered (dev acc >= {min_dev_accuracy}) | LF coverage | "
                  f"LF accuracy | MV | Snorkel (MM) | MV, filtered | MM, filtered | label coverage |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")

            def row(name: str, cols: list[int], total: int, human: bool, gen: bool, mode: str) -> None:
                Lh = {s: S[s].weak_labels for s in S} if human else {s: None for s in S}
                Lg = {s: A[s].L[:, cols] for s in S} if gen else {s: None for s in S}
                keep = list(range(len(cols)))
                if gen:
                    keep, _ = dedup_programs(Lg["train"])
                    Lg = {s: (v[:, keep] if v is not None else None) for s, v in Lg.items()}
                filt = filter_programs(Lg["valid"], S["valid"].labels, min_accuracy=min_dev_accuracy) if gen else []
                src = Lg["train"] if gen else Lh["train"]
                m = lf_metrics(src, S["train"].labels)
                res, resf, cov = [], [], None
                for lm in lms:
                    c = combine_sources(Lh["train"], Lg["train"], mode=mode, label_model=lm, num_classes=2)
                    p = c.predict_proba(Lh["test"], Lg["test"])
                    res.append(label_metrics(p, S["test"].labels)[metric])
                    cov = float(c.covered.mean())
                    if gen and filt:
                        Lgf = {s: Lg[s][:, filt] for s in S}
                        cf = combine_sources(Lh["train"], Lgf["train"], mode=mode, label_model=lm, num_classes=2)
                        resf.append(label_metrics(cf.predict_proba(Lh["test"], Lgf["test"]), S["test"].labels)[metric])
                    else:
                        resf.append(float("nan"))
                ncols = len(cols) if gen else src.shape[1]
                print(f"| {name} | {ncols}/{total} | {len(keep) if gen else '-'} | {len(filt) if gen else '-'} | "
                      f"{np.mean([d['coverage'] for d in m]):.3f} | {np.nanmean([d['accuracy'] for d in m]):.3f} | "
                      f"{res[0]:.3f} | {res[1]:.3f} | {resf[0]:.3f} | {resf[1]:.3f} | {cov:.3f} |", flush=True)

            idx = {pid: [j for j, p in enumerate(valid) if p.prompt_id == pid] for pid in RECORDED_PROMPT_IDS}
            tot = {pid: sum(1 for p in allp if p.prompt_id == pid) for pid in RECORDED_PROMPT_IDS}
            for pid in RECORDED_PROMPT_IDS:
                row(pid, idx[pid], tot[pid], False, True, "generated")
            every = list(range(len(valid)))
            row("WRENCH hand-written", [], S["train"].weak_labels.shape[1], True, False, "human")
            row("all programs pooled", every, len(allp), False, True, "generated")
            row("WRENCH + programs, joint", every, len(allp), True, True, "joint")
            row("WRENCH + programs, cascade", every, len(allp), True, True, "cascade")


def _program_votes(task: str, sb: Any, S: dict[str, Any]) -> tuple[list[Any], dict[str, np.ndarray]]:
    """The recorded programs of ``task`` that passed the static checks and their vote matrix on each split of ``S``
    (applied in the sandbox ``sb``, cached under ``runs/program_cache``)."""
    from lightning_ws.programs.apply import apply_programs
    from lightning_ws.programs.generate import recorded_programs

    progs = [p for p in recorded_programs(task) if p.valid]
    k = len(S["train"].class_names)
    return progs, {s: apply_programs(progs, S[s].texts, num_classes=k, sandbox=sb,
                                     cache_dir=Path("runs/program_cache")).L for s in S}


def label_model_default(models: list[str]) -> None:
    """``ProgramLabelDataModule``'s label model: the package default ``auto`` vs majority vote (the baseline it must
    not lose to) and ``moment_matching`` (the datamodule's former default), on the valid split (where a choice may be
    made) and the test split, every combination mode."""
    from lightning_ws.data import load_wrench
    from lightning_ws.programs.apply import combine_sources, dedup_programs, label_metrics
    from lightning_ws.programs.sandbox import ProgramSandbox

    print("Label-model metric (YouTube, TREC: accuracy; SMS: F1 of spam) on valid and test, all rows; label models "
          "fitted on the train matrix, label-free class balance. auto = AutoLabelModel (its pick in brackets).")
    print("| set | combine | " + " | ".join(f"{m} valid | {m} test" for m in models) + " | seconds (" +
          ", ".join(models) + ") |")
    print("|---|---|" + "---|---|" * len(models) + "---|")
    with ProgramSandbox(workers=2) as sb:
        for task in ("youtube", "sms", "trec"):
            S = {s: load_wrench(task, s) for s in ("train", "valid", "test")}
            k = len(S["train"].class_names)
            metric = "f1" if task == "sms" else "acc"
            progs, A = _program_votes(task, sb, S) if task != "trec" else ([], {})
            Lg = {s: None for s in S}
            if progs:
                keep, _ = dedup_programs(A["train"])
                Lg = {s: A[s][:, keep] for s in S}
            modes = ("human", "generated", "joint", "cascade") if progs else ("human",)
            for mode in modes:
                cells, secs = [], []
                for lm in models:
                    t = time.perf_counter()
                    c = combine_sources(S["train"].weak_labels, Lg["train"], mode=mode, label_model=lm,
                                        num_classes=k)
                    secs.append(time.perf_counter() - t)
                    pick = ""
                    top = next(iter(c.models.values()))
                    inner = getattr(top, "inner_", None)
                    if inner is not None:
                        pick = f" [{inner.name}{', merged' if getattr(top, 'merged_', False) else ''}]"
                    for split in ("valid", "test"):
                        prob = c.predict_proba(S[split].weak_labels, Lg[split])
                        cells.append(f"{label_metrics(prob, S[split].labels)[metric]:.3f}" +
                                     (pick if split == "test" else ""))
                print(f"| {task} | {mode} | " + " | ".join(cells) + " | " + ", ".join(f"{x:.1f}" for x in secs)
                      + " |", flush=True)


def label_model_tiers(models: list[str], auto_support: str = "auto") -> None:
    """Each program LF set on its own (prompt tier / Alchemist mode), all programs pooled, and pooled + WRENCH LFs:
    every label model of ``models`` fitted label-free on the train matrix, metric on train, valid and test."""
    from lightning_ws.data import load_wrench
    from lightning_ws.labelmodels import make_label_model
    from lightning_ws.programs.apply import label_metrics
    from lightning_ws.programs.sandbox import ProgramSandbox

    splits = ("train", "valid", "test")
    base = models[0]
    print(f"Program LF sets on their own. Metric (YouTube: accuracy, SMS: F1 of spam) on all rows of train "
          f"(transductive), valid and test; label-free fits on the train matrix; ties to class 0. Last model's pick "
          f"in brackets. Cells: {', '.join(models)}.")
    print("| set | LF set | LFs | " + " | ".join(splits) + " |")
    print("|---|---|---|" + "---|" * len(splits))
    below: dict[str, list[str]] = {s: [] for s in splits}
    n_sets = 0
    with ProgramSandbox(workers=2) as sb:
        for task in ("youtube", "sms"):
            S = {s: load_wrench(task, s) for s in splits}
            metric = "f1" if task == "sms" else "acc"
            progs, A = _program_votes(task, sb, S)
            sets = {t: [i for i, p in enumerate(progs) if p.prompt_id == t]
                    for t in dict.fromkeys(p.prompt_id for p in progs)}
            sets["all programs"] = list(range(len(progs)))
            sets["all programs + WRENCH LFs"] = list(range(len(progs)))
            for name, idx in sets.items():
                n_sets += 1
                Ls = {s: A[s][:, idx] for s in S}
                if name.endswith("WRENCH LFs"):
                    Ls = {s: np.concatenate([np.asarray(S[s].weak_labels), Ls[s]], axis=1) for s in S}
                vals: dict[str, dict[str, float]] = {}
                pick = ""
                for lm in models:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        kw = {"support": auto_support} if lm == "auto" else {}
                        model = make_label_model(lm, num_classes=2, seed=0, **kw).fit(Ls["train"])
                    vals[lm] = {s: label_metrics(model.predict_proba(Ls[s]), np.asarray(S[s].labels))[metric]
                                for s in splits}
                    if getattr(model, "inner_", None) is not None:
                        pick = f" [{model.fit_report_['selected']}/{model.fit_report_['variant']}]"
                for s in splits:
                    if vals[models[-1]][s] < vals[base][s] - 0.005:
                        below[s].append(f"{task}/{name} ({100 * (vals[models[-1]][s] - vals[base][s]):+.1f})")
                cells = [" / ".join(f"{vals[m][s]:.3f}" for m in models) for s in splits]
                print(f"| {task} | {name} | {Ls['train'].shape[1]} | " + " | ".join(cells[:-1]) + " | " + cells[-1]
                      + pick + " |", flush=True)
    for s in splits:
        print(f"{models[-1]} more than 0.5 point below {base} on {s}: {len(below[s])} of {n_sets}"
              + (f" ({', '.join(below[s])})" if below[s] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", required=True,
                    choices=["attacks", "throughput", "quality", "label-model-default", "label-model-tiers"])
    ap.add_argument("--label-models", default="majority_vote,moment_matching,auto",
                    help="label models (label-model-default); majority vote first: the baseline auto must not lose to")
    ap.add_argument("--n", type=int, default=100_000, help="texts (throughput)")
    ap.add_argument("--programs", type=int, default=20, help="programs (throughput)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats (throughput)")
    ap.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "unshare", "none"],
                    help="namespace launcher of the sandbox (throughput)")
    ap.add_argument("--min-dev-accuracy", type=float, default=0.8, help="dev filter (quality)")
    ap.add_argument("--auto-support", default="auto", choices=["auto", "voted", "model"],
                    help="AutoLabelModel(support=...) in label-model-tiers")
    args = ap.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    if args.section == "attacks":
        attacks()
    elif args.section == "throughput":
        throughput(args.n, args.programs, args.repeats, args.isolation)
    elif args.section == "quality":
        quality(args.min_dev_accuracy)
    elif args.section == "label-model-tiers":
        label_model_tiers(args.label_models.split(","), args.auto_support)
    else:
        label_model_default(args.label_models.split(","))


if __name__ == "__main__":
    main()
