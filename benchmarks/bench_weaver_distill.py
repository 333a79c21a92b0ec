"""Weaver distillation on GSM8K: how much of Weaver's selection accuracy does a small cross-encoder keep?

Trains the shipped all-MiniLM-L6-v2 cross-encoder (``WeaverCrossEncoder``) for a few minutes on label-free Weaver
scores of the *training* problems (``WeaverDistillDataModule`` with no scores file) and reports, on held-out problems:
Select@1 of the student, of Weaver itself (its own tie-break, and plain argmax of its scores), first sample and oracle;
the student's accuracy as a fraction of Weaver's; and the compute per candidate, ~2 x params x tokens, for the student
vs. an *assumed* verifier ensemble of the paper's 70B setting (arXiv 2506.18203, spec §5.2: 21 reward models +
8 LM judges, sizes below, prefill only, same token count). Our GSM8K verifiers are offline heuristics that cost
almost nothing, so the compute ratio describes the paper's setting, not this run.

    python benchmarks/bench_weaver_distill.py [--problems 400] [--minutes 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

# Billions of parameters of the paper's 70B-setting verifiers (spec §5.2; MoE judges counted at total size).
REWARD_MODELS_B = {"ArmoRM": 8, "GRM-8B": 8, "GRM-3B": 3, "GRM-2B": 2, "URM": 8, "QRM-8B": 8, "QRM-27B": 27,
                   "GPM": 8, "OffsetBias": 8, "Skywork-8B": 8, "Skywork-27B": 27, "InternLM2-7B": 7,
                   "InternLM2-20B": 20, "LDL-Reward-27B": 27, "DecisionTree-8B": 8, "DecisionTree-27B": 27,
                   "INF-ORM-70B": 70, "Qwen2.5-Math-RM-72B": 72, "Qwen2.5-Math-PRM-7B": 7, "EurusPRM-1": 7,
                   "EurusPRM-2": 7}
JUDGES_B = {"R1-Distill-Llama-70B": 70, "R1-Distill-Qwen-32B": 32, "Llama-3.3-70B": 70, "Mixtral-8x22B": 141,
            "Qwen2.5-72B": 72, "Sky-T1-32B": 32, "WizardLM-2-8x22B": 141, "Llama-3.1-405B": 405}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=400, help="GSM8K problems used (seeded subsample)")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time budget")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--ranking-weight", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-agreement", action="store_true",
                    help="the paper's pointwise student: CLS only, without the answer-agreement feature")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lightning.pytorch as pl

    from lightning_ws.datamodules.weaver import WeaverDistillDataModule
    from lightning_ws.modules.weaver import WeaverCrossEncoder
    from lightning_ws.weaver.distill import flat_selection_accuracy

    pl.seed_everything(args.seed, verbose=False)
    t0 = time.perf_counter()
    dm = WeaverDistillDataModule(max_problems=args.problems, max_length=args.max_length, batch_problems=8,
                                 eval_batch_problems=16, val_fraction=0.1, test_fraction=0.3, seed=args.seed)
    dm.setup("fit")
    vd = dm.verification_data()
    test = dm.splits["test"]
    t_setup = time.perf_counter() - t0
    sub = vd.subset(test)
    weaver_sel = dm.weaver.select(sub)
    acc_weaver = float(sub.correct[np.arange(test.size), weaver_sel].mean())
    acc_weaver_argmax = dm.weaver_selection_accuracy("test")
    acc_first = float(sub.correct[:, 0].mean())
    acc_oracle = float(sub.correct.any(axis=1).mean())

    model = WeaverCrossEncoder(lr=5e-5, head_lr=1e-3, ranking_weight=args.ranking_weight,
                               use_agreement=not args.no_agreement)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs,
                         max_time={"minutes": args.minutes}, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    t1 = time.perf_counter()
    trainer.fit(model, dm)
    t_train = time.perf_counter() - t1
    res = trainer.test(model, dm, verbose=False)[0]
    out = trainer.predict(model, dm)
    p = torch.cat([o["problem"] for o in out])
    s = torch.cat([o["score"] for o in out])
    corr = torch.as_tensor(vd.correct[p.numpy(), (torch.cat([o["idx"] for o in out]) % vd.num_candidates).numpy()])
    acc_student = flat_selection_accuracy(p, s, corr)

    ds = dm.datasets["test"]
    tokens = float(np.mean([len(x) for grp in ds.input_ids for x in grp]))
    n_params = sum(q.numel() for q in model.parameters())
    n_nonemb = n_params - sum(q.numel() for n, q in model.named_parameters() if "embeddings" in n)
    student_flops = 2 * n_params * tokens
    ens_params = (sum(REWARD_MODELS_B.values()) + sum(JUDGES_B.values())) * 1e9
    ens_flops = 2 * ens_params * tokens

    print(f"GSM8K distillation: {args.problems} problems ({dm.describe()}), N={vd.num_candidates}, "
          f"max_length={args.max_length}, threads={args.threads}")
    print(f"teacher: {dm.score_source}; verifiers: {', '.join(vd.verifier_names)} (offline heuristics); "
          f"student input: {'CLS only' if args.no_agreement else 'CLS + answer agreement'}")
    print(f"setup {t_setup:.1f}s, train {t_train:.1f}s ({trainer.global_step} steps, epoch {trainer.current_epoch})")
    print(f"{'selector':34s} Select@1 on {test.size} held-out problems")
    for name, acc in (("first sample", acc_first), ("Weaver (its tie-break)", acc_weaver),
                      ("Weaver (argmax, first on ties)", acc_weaver_argmax), ("cross-encoder (MiniLM)", acc_student),
                      ("oracle (Pass@N)", acc_oracle)):
        print(f"  {name:32s} {acc:.3f}")
    print(f"student / Weaver (its tie-break): {acc_student / acc_weaver:.3f}" if acc_weaver > 0 else
          "student / Weaver: undefined (Weaver 0)")
    print(f"test/mse {res['test/mse']:.4f}, test/select_acc (module metric) {res['test/select_acc']:.3f}")
    print(f"compute per candidate (~2 x params x {tokens:.0f} mean tokens): student {n_params / 1e6:.1f}M params "
          f"({n_nonemb / 1e6:.1f}M non-embedding) -> {student_flops / 1e9:.2f} GFLOPs; assumed paper ensemble "
          f"({len(REWARD_MODELS_B)} RMs + {len(JUDGES_B)} judges, {ens_params / 1e9:.0f}B params) -> "
          f"{ens_flops / 1e12:.1f} TFLOPs; ratio {student_flops / ens_flops:.2e} "
          f"({100 * (1 - student_flops / ens_flops):.4f}% less)")


if __name__ == "__main__":
    main()
