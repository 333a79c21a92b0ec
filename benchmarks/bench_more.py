"""MoRe vs PEFT LoRA on real data: shipped MiniLM, WRENCH YouTube spam and SMS spam (gold labels), q/k/v adapted.

Accuracy: for each data set, seed and adapter, fine-tune the shipped all-MiniLM-L6-v2 with a fresh classification
head (plain torch loop, AdamW, linear warmup/decay, dynamic padding) and report test accuracy / macro-F1, mean +- std
over seeds. Adapters (exact trainable counts printed, head included and listed separately):

* LoRA r=8 (PEFT, alpha=16)        vs  MoRe K=4, r=8   -> identical factor counts (18 x 8 x 768 = 110,592)
* LoRA r=2 (PEFT, alpha=4)         vs  MoRe K=2, r=2   -> 1/4 of the above (27,648)

Speed: train-step time (forward + backward + AdamW step, batch 32 x 64 tokens, fixed batch) of MoRe K=4 r=8 / LoRA r=8,
measured interleaved in the same process (median of rounds).

Learning-rate selection (``--lrs``): for each data set and adapter, every learning rate in the grid is trained with the
first seed and scored on the WRENCH *validation* split; the best one (validation macro-F1, ties to the lower training loss) is
then run with every seed and reported on the test split. This is the fair per-method protocol; a single ``--lr`` gives
all methods the same untuned rate.

Usage::

    python benchmarks/bench_more.py                      # full run (~20 min on 2 shared CPU cores)
    python benchmarks/bench_more.py --lrs 1e-3 3e-3 1e-2 # per-method learning rate chosen on the valid split
    python benchmarks/bench_more.py --quick              # smoke run (1 seed, tiny subsets)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch

from lightning_ws.data import load_wrench
from lightning_ws.more.hf import build_sequence_classifier, default_model_path, trainable_parameter_count

ADAPTERS = {
    "LoRA r=8": dict(adapter="lora", lora_r=8, lora_alpha=16.0),
    "MoRe K=4 r=8": dict(adapter="more", nblocks=4, blk_r=8),
    "LoRA r=2": dict(adapter="lora", lora_r=2, lora_alpha=4.0),
    "MoRe K=2 r=2": dict(adapter="more", nblocks=2, blk_r=2),
}
HEAD = "classifier"


def factor_count(model: torch.nn.Module) -> int:
    """Trainable parameters excluding the classification head."""
    head = {id(p) for p in getattr(model, HEAD).parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)


def tokenize(tok, texts, max_length):
    enc = tok(list(texts), truncation=True, max_length=max_length, padding=False)
    return enc["input_ids"]


def batches(ids, labels, batch_size, rng, shuffle, pad_id):
    order = rng.permutation(len(ids)) if shuffle else np.arange(len(ids))
    for s in range(0, len(ids), batch_size):
        sel = order[s:s + batch_size]
        t = max(len(ids[i]) for i in sel)
        x = torch.full((len(sel), t), pad_id, dtype=torch.long)
        m = torch.zeros((len(sel), t), dtype=torch.long)
        for j, i in enumerate(sel):
            x[j, :len(ids[i])] = torch.tensor(ids[i])
            m[j, :len(ids[i])] = 1
        yield x, m, torch.as_tensor(labels[sel], dtype=torch.long)


def macro_f1(y, p, k):
    f = []
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        f.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f))


def run_one(data, kw, seed, args, pad_id, lr=None, split="test"):
    model = build_sequence_classifier(num_labels=2, seed=seed, **kw)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr if lr is None else lr, weight_decay=0.0)
    n_steps = args.epochs * ((len(data["train_ids"]) + args.batch_size - 1) // args.batch_size)
    warm = max(1, int(0.06 * n_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (n_steps - s) / max(1, n_steps - warm))))
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for _ in range(args.epochs):
        for x, m, y in batches(data["train_ids"], data["train_y"], args.batch_size, rng, True, pad_id):
            loss = model(input_ids=x, attention_mask=m, labels=y).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
    train_s = time.perf_counter() - t0
    model.eval()
    preds = []
    with torch.no_grad():
        for x, m, _ in batches(data[f"{split}_ids"], data[f"{split}_y"], 128, rng, False, pad_id):
            preds.append(model(input_ids=x, attention_mask=m).logits.argmax(-1).numpy())
    p = np.concatenate(preds)
    y = data[f"{split}_y"]
    return {"acc": float(np.mean(p == y)), "f1": macro_f1(y, p, 2), "train_s": train_s, "steps": len(losses),
            "first_loss": float(np.mean(losses[:5])), "last_loss": float(np.mean(losses[-5:])),
            "factors": factor_count(model), "trainable": trainable_parameter_count(model)}


def speed(args):
    torch.manual_seed(0)  # benchmark script only: the synthetic timing batch
    x = torch.randint(1000, 20000, (args.batch_size, 64))
    m = torch.ones_like(x)
    y = torch.randint(0, 2, (args.batch_size,))
    models = {}
    for name in ("LoRA r=8", "MoRe K=4 r=8"):
        model = build_sequence_classifier(num_labels=2, seed=0, **ADAPTERS[name])
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        models[name] = (model, opt)
    times = {k: [] for k in models}

    def step(model, opt):
        model(input_ids=x, attention_mask=m, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for k, (model, opt) in models.items():  # warm-up
        for _ in range(2):
            step(model, opt)
    for _ in range(args.speed_rounds):
        for k, (model, opt) in models.items():
            t = time.perf_counter()
            for _ in range(3):
                step(model, opt)
            times[k].append((time.perf_counter() - t) / 3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, med["MoRe K=4 r=8"] / med["LoRA r=8"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["youtube", "sms"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--adapters", nargs="+", default=list(ADAPTERS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lrs", nargs="+", type=float, default=None,
                    help="learning-rate grid; each adapter's rate is chosen on the WRENCH valid split (first seed)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--train-subsample", type=int, default=640, help="max train examples per data set (seeded)")
    ap.add_argument("--test-subsample", type=int, default=None, help="max test examples per data set (seeded)")
    ap.add_argument("--speed-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="optional JSON file for the raw results")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.train_subsample, args.test_subsample, args.speed_rounds, args.epochs = [0], 96, 64, 2, 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(default_model_path())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, lr {args.lr}, epochs {args.epochs}, "
          f"batch {args.batch_size}, max_length {args.max_length}, train subsample {args.train_subsample}")

    med, ratio = ({"LoRA r=8": float("nan"), "MoRe K=4 r=8": float("nan")}, float("nan")) if args.skip_speed \
        else speed(args)
    if not args.skip_speed:
        print(f"\nspeed (batch {args.batch_size} x 64 tokens, fwd+bwd+AdamW, median of {args.speed_rounds} rounds x 3 "
              f"steps, interleaved): LoRA r=8 {med['LoRA r=8'] * 1e3:.1f} ms, MoRe K=4 r=8 "
              f"{med['MoRe K=4 r=8'] * 1e3:.1f} ms, ratio MoRe/LoRA = {ratio:.3f} (target <= 1.2)", flush=True)

    raw, chosen = {}, {}
    for ds in args.datasets:
        tr, va, te = load_wrench(ds, "train"), load_wrench(ds, "valid"), load_wrench(ds, "test")
        sel = np.random.default_rng(1234).permutation(tr.n)[: min(tr.n, args.train_subsample)]
        tsel = np.random.default_rng(4321).permutation(te.n)[: min(te.n, args.test_subsample or te.n)]
        data = {"train_ids": tokenize(tok, [tr.texts[i] for i in sel], args.max_length),
                "train_y": tr.labels[sel], "test_ids": tokenize(tok, [te.texts[i] for i in tsel], args.max_length),
                "test_y": te.labels[tsel], "valid_ids": tokenize(tok, list(va.texts), args.max_length),
                "valid_y": va.labels}
        print(f"\n== {ds}: train {len(sel)}/{tr.n} (subsampled, seed 1234), test {len(tsel)}/{te.n} (seed 4321), "
              f"positive rate test {te.labels[tsel].mean():.3f}")
        for name in args.adapters:
            lr = args.lr
            if args.lrs:
                sweep = []
                for cand in args.lrs:
                    v = run_one(data, ADAPTERS[name], args.seeds[0], args, tok.pad_token_id, lr=cand, split="valid")
                    sweep.append((v["f1"], -v["last_loss"], cand))
                    print(f"  {name:14s} lr {cand:.0e} (seed {args.seeds[0]}): valid acc {v['acc']:.4f} f1 "
                          f"{v['f1']:.4f} loss {v['first_loss']:.3f}->{v['last_loss']:.3f}", flush=True)
                lr = max(sweep)[2]
                chosen.setdefault(ds, {})[name] = {"lr": lr, "sweep": [[c, f, -l] for f, l, c in sweep]}
                print(f"  {name:14s} chosen lr {lr:.0e}", flush=True)
            for seed in args.seeds:
                r = run_one(data, ADAPTERS[name], seed, args, tok.pad_token_id, lr=lr)
                r["lr"] = lr
                raw.setdefault(ds, {}).setdefault(name, []).append(r)
                print(f"  {name:14s} seed {seed}: acc {r['acc']:.4f} f1 {r['f1']:.4f} loss {r['first_loss']:.3f}->"
                      f"{r['last_loss']:.3f} factors {r['factors']:,} trainable {r['trainable']:,} "
                      f"{r['train_s'] / r['steps']:.3f} s/step", flush=True)

    print("\n| data | adapter | adapter params | trainable (incl. head) | lr | test acc | test macro-F1 | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for ds, per in raw.items():
        for name, rs in per.items():
            acc = [r["acc"] for r in rs]
            f1 = [r["f1"] for r in rs]
            sps = statistics.median(r["train_s"] / r["steps"] for r in rs)
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            print(f"| {ds} | {name} | {rs[0]['factors']:,} | {rs[0]['trainable']:,} | {rs[0]['lr']:.0e} | "
                  f"{np.mean(acc):.4f} +- "
                  f"{sd(acc):.4f} | {np.mean(f1):.4f} +- {sd(f1):.4f} | {sps:.3f} |")

    if args.out:
        from lightning_ws.io import save_json

        speed_ms = None if args.skip_speed else {k: v * 1e3 for k, v in med.items()}
        save_json(args.out, {"args": vars(args), "results": raw, "speed_ms": speed_ms,
                             "speed_ratio": None if args.skip_speed else ratio, "lr_selection": chosen})


if __name__ == "__main__":
    main()
