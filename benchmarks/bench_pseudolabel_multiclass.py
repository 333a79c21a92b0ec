"""Pseudolabel training on multi-class data (issue 24): WRENCH TREC (6 classes, 68 labeling functions).

TREC through ``PseudoLabelDataModule`` + ``TextClassifier`` (the shipped MiniLM, the README's learning rates 5e-5 /
head 1e-3, warm-up 0.1, batch 32, max_length 64, seed 0) for a fixed number of optimizer steps, scored on the 500 gold
test rows. Rows: gold training labels (the reference), then pseudolabels from two label models with
``class_weighting="none"`` (the targets as they are: what every release before this one did) and ``"auto"`` (the new
default: class-balanced targets for k > 2), and one longer run without weighting (does more training alone help?).
Printed per row: test accuracy, macro F1, test rows given the most frequent predicted class, and the pseudolabels'
accuracy against the gold training labels (ties broken at random, seeded).

    OMP_NUM_THREADS=1 python benchmarks/bench_pseudolabel_multiclass.py [--steps 30] [--long-steps 120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings

import numpy as np
import torch


def run(label: str, dm, steps: int) -> dict:
    import lightning.pytorch as pl

    from lightning_ws.modules import TextClassifier

    pl.seed_everything(0, verbose=False)
    model = TextClassifier(num_classes=dm.num_classes, lr=5e-5, head_lr=1e-3)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    pred = torch.cat([o["pred"] for o in trainer.predict(model, dm)]).numpy()
    gold = dm.load_split("test").labels
    k = dm.num_classes
    f1s = []
    for c in range(k):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    rep = getattr(dm, "label_model_report", {})
    return {"row": label, "steps": steps, "acc": round(float((pred == gold).mean()), 4),
            "macro_f1": round(float(np.mean(f1s)), 4), "top_class_rows": int(np.bincount(pred, minlength=k).max()),
            "pred_hist": np.bincount(pred, minlength=k).tolist(),
            "pseudolabel_acc": None if not rep else round(rep["pseudolabel_accuracy_vs_gold"], 4),
            "target_class_mass": rep.get("target_class_mass"), "wall_s": round(time.perf_counter() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--long-steps", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from lightning_ws.datamodules import PseudoLabelDataModule, TextClassificationDataModule

    common = {"max_length": 64, "batch_size": 32}
    rows = [("gold labels", lambda: TextClassificationDataModule("trec", **common), args.steps)]
    for lm in ("majority_vote", "moment_matching"):
        for cw in ("none", "auto"):
            rows.append((f"{lm}, class_weighting={cw}",
                         lambda lm=lm, cw=cw: PseudoLabelDataModule("trec", label_model=lm, class_weighting=cw,
                                                                    **common), args.steps))
    rows.append(("moment_matching, class_weighting=none (longer)",
                 lambda: PseudoLabelDataModule("trec", label_model="moment_matching", class_weighting="none",
                                               **common), args.long_steps))
    print(f"TREC, MiniLM TextClassifier, lr 5e-5 / head 1e-3, batch 32; threads={args.threads}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for label, make, steps in rows:
        print(json.dumps(run(label, make(), steps)), flush=True)


if __name__ == "__main__":
    main()
