"""Benchmarks of PAJAMA program judges (arXiv 2506.10403); every row printed here is recorded in BENCHMARKS.md.

Sections:

* ``judges``: on ``pandalm_test`` and ``llmbar`` (and each LLMBar subset): the aggregated hand-written program judges
  (label model / majority vote), the reference's threshold rules, all programs by sign vote, the single best program,
  "prefer the longer response", and PandaLM's shipped GPT-3.5 / PandaLM-7B verdicts. 30% of each set (by a hash of
  the id, stratified by subset) tunes; every number is on the other 70%. Accuracy on all rows (no verdict = 0.5),
  on covered rows, coverage, swap consistency (the swapped pairs are re-scored in the sandbox).
* ``bias``: :class:`~lightning_ws.pajama.BiasEvaluator` (swap consistency, length bias, five perturbation probes) for
  the program judge and "prefer longer" (and an LLM judge when ``--llm-base-url`` is given), on the same 70% parts.
* ``cost``: CPU seconds per 1,000 judgments of the program judges (fresh sandbox, no cache, this process plus its
  reaped workers) vs an LLM judge's prompt tokens (4 characters / token) x price per model of the price table.
* ``distill``: reward models on HH-RLHF pairs labelled by the program judges vs by the humans, tested on LLMBar and
  PandaLM, several seeds. To stay CPU-feasible the MiniLM encoder is frozen: (query, response) embeddings are
  computed once (mean pooling, the RewardModel's input format) and a linear reward head is trained with the
  Bradley-Terry loss (:func:`lightning_ws.pajama.distill.bradley_terry_loss`) per seed.

    OMP_NUM_THREADS=1 python benchmarks/bench_pajama.py --section judges
    OMP_NUM_THREADS=1 python benchmarks/bench_pajama.py --section bias
    OMP_NUM_THREADS=1 python benchmarks/bench_pajama.py --section cost
    OMP_NUM_THREADS=1 python benchmarks/bench_pajama.py --section distill --seeds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = ("pandalm_test", "llmbar")


def _programs(store: str | None):
    from lightning_ws.pajama.distill import resolve_programs

    return resolve_programs(store or "handwritten")


def judges(args) -> None:
    from lightning_ws.pajama import JudgeConfig, compare_judges, format_rows, load_preferences
    from lightning_ws.programs import ProgramSandbox

    progs = _programs(args.programs)
    print(f"programs: {len(progs)} ({args.programs or 'hand-written'}), aggregator {args.aggregator}")
    with ProgramSandbox(workers=args.workers) as sb:
        for name in SETS:
            res = compare_judges(load_preferences(name), progs, val_fraction=0.3, seed=args.seed,
                                 config=JudgeConfig(aggregator=args.aggregator), sandbox=sb, cache_dir=args.cache)
            print(f"\n### {name}: tune {res['n_val']} rows, report {res['n_report']} rows; "
                  f"selected (ours): {res['pipelines']['ours']['selected']}; reference rules selected: "
                  f"{res['pipelines']['reference_rules']['selected']}")
            ref = res["pipelines"]["reference_rules"]["programs"]
            edge = sum(1 for r in ref if abs(r["threshold"] - 0.14) < 1e-9)
            print(f"reference rules: {edge}/{len(ref)} thresholds at the grid edge 0.14; ours: min coverage "
                  f"{res['pipelines']['ours']['config']['min_coverage']}, objective "
                  f"{res['pipelines']['ours']['config']['objective']}")
            print(format_rows(res["rows"]))


def bias(args) -> None:
    from lightning_ws.pajama import (
        BiasEvaluator,
        JudgeConfig,
        ProgramJudge,
        ProgramJudgePipeline,
        bias_table_rows,
        length_judge,
        load_preferences,
        score_pairs,
        split_by_id,
    )
    from lightning_ws.pajama.report import format_rows
    from lightning_ws.programs import ProgramSandbox

    progs = _programs(args.programs)
    ev = BiasEvaluator()
    rows = []
    with ProgramSandbox(workers=args.workers) as sb:
        for name in SETS:
            d = load_preferences(name)
            strata = d.subsets if any(d.subsets) else None
            vi, ri = split_by_id(d.ids, 0.3, seed=args.seed, strata=strata)
            val, rep = d.take(vi), d.take(ri)
            S = score_pairs(progs, d.queries, d.responses_a, d.responses_b, sandbox=sb, cache_dir=args.cache)
            pipe = ProgramJudgePipeline(JudgeConfig(aggregator=args.aggregator)).fit(
                S.scores[vi], val.y, pool_scores=S.scores[ri], names=S.names)
            judges = [("programs+" + args.aggregator, ProgramJudge(progs, pipe, sandbox=sb, cache_dir=args.cache)),
                      ("prefer longer", length_judge)]
            if args.llm_base_url:
                from lightning_ws.pajama import LLMJudge
                from lightning_ws.programs import OpenAIChatClient

                client = OpenAIChatClient(args.llm_model, base_url=args.llm_base_url, cache_dir=args.cache + "_llm")
                judges.append((f"llm:{args.llm_model}", LLMJudge(client)))
            for jname, j in judges:
                rows.append({"data": name, **ev.evaluate(j, rep.queries, rep.responses_a, rep.responses_b, rep.y,
                                                         name=jname)})
    cols = ["data", "judge", "n", "acc_all", "coverage", "swap_consistency", "longer_worse_n", "length_bias_acc"]
    cols += [f"flip_{p}" for p in ev.probes]
    print(format_rows(rows, cols))
    print()
    print(format_rows(rows, ["data", "judge"] + [f"acc_{p}" for p in ev.probes]))
    if args.wandb:
        import wandb

        run = wandb.init(project="lightning-ws", name="pajama_bias", mode=os.environ.get("WANDB_MODE", "offline"),
                         dir="runs")
        c, data = bias_table_rows(rows)
        run.log({"pajama/bias": wandb.Table(columns=c, data=data)})
        run.finish()


def cost(args) -> None:
    from lightning_ws.pajama import LLMJudge, load_preferences, score_pairs
    from lightning_ws.pajama.scoring import cpu_seconds
    from lightning_ws.programs import PriceTable, ProgramSandbox

    progs = _programs(args.programs)
    prices = PriceTable()
    cost_rows: list[tuple[str, float, float]] = []
    for name in SETS:
        d = load_preferences(name)
        c0, t0 = cpu_seconds(), time.perf_counter()
        with ProgramSandbox(workers=args.workers) as sb:  # fresh workers, no cache
            score_pairs(progs, d.queries, d.responses_a, d.responses_b, sandbox=sb)
        cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
        # the programs' own compute, measured in this process (trusted hand-written code only; never do this with
        # generated programs): the sandbox's workers run under unshare, whose reaped-children CPU time may miss them
        from lightning_ws.programs.sandbox import run_in_process

        rows = [(q, r) for q, r in zip(d.queries, d.responses_a)] + [(q, r) for q, r in zip(d.queries, d.responses_b)]
        p0 = time.process_time()
        run_in_process(progs, rows, output="float", entry="judging_function")
        inproc = time.process_time() - p0
        per_k = 1000.0 * max(cpu, inproc) / len(d)
        usd_k = per_k / 3600 * args.cpu_price
        print(f"{name}: {len(d)} pairs x {len(progs)} programs: program compute {inproc:.2f} CPU s in-process; "
              f"sandboxed run {wall:.1f} s wall with {args.workers} workers ({len(d) / wall:.0f} pairs/s incl. "
              f"sandbox start), {cpu:.2f} CPU s in this process + reaped workers -> {per_k:.2f} CPU s per 1,000 "
              f"judgments (both responses, all programs; the larger CPU figure) = ${usd_k:.6f} at "
              f"${args.cpu_price}/vCPU-hour")
        cost_rows.append((name, per_k, usd_k))
        class _NoClient:
            model = "none"

        judge = LLMJudge(_NoClient())
        toks = np.array([judge.prompt_tokens(q, a, b) for q, a, b in zip(d.queries, d.responses_a, d.responses_b)])
        for model in ("gpt-4", "gpt-3.5-turbo"):
            p, c = prices.prices[model]
            usd = 1000 * (toks.mean() * p + 1 * c) / 1000.0
            print(f"  LLM judge {model}: {toks.mean():.0f} prompt tokens / judgment (4 chars/token), 1 answer token "
                  f"-> ${usd:.2f} per 1,000 judgments, x2 with the swapped order (price table: ${p}/1K prompt, "
                  f"${c}/1K completion); {usd / max(cost_rows[-1][2], 1e-12):,.0f} x the programs' CPU cost")


def _embed(enc, tok, pairs, max_length: int, batch: int = 64):
    import torch

    from lightning_ws.pajama.distill import encode_query_response
    from lightning_ws.sentence_embeddings import mean_pool

    out = []
    for resp in (pairs.responses_a, pairs.responses_b):
        ids = encode_query_response(tok, pairs.queries, resp, max_length)
        order = np.argsort([len(x) for x in ids])
        emb = torch.zeros(len(ids), enc.config.hidden_size)
        for s in range(0, len(ids), batch):
            rows = order[s:s + batch]
            T = max(len(ids[i]) for i in rows)
            x = torch.zeros(len(rows), T, dtype=torch.long)
            m = torch.zeros(len(rows), T, dtype=torch.long)
            for k, i in enumerate(rows):
                x[k, : len(ids[i])] = torch.tensor(ids[i])
                m[k, : len(ids[i])] = 1
            with torch.no_grad():
                emb[torch.as_tensor(rows)] = mean_pool(enc(input_ids=x, attention_mask=m).last_hidden_state, m)
        out.append(emb)
    return torch.stack(out, 1)  # (n, 2, H)


def distill(args) -> None:
    import torch

    from lightning_ws.datamodules.text import load_tokenizer
    from lightning_ws.io import load_tensors, save_tensors
    from lightning_ws.modules.text_classifier import load_encoder
    from lightning_ws.pajama import load_preferences, split_by_id
    from lightning_ws.pajama.distill import bradley_terry_loss, pairwise_accuracy, program_labels

    torch.set_num_threads(1)
    pool = load_preferences("hh_rlhf")
    tune_idx, rest = split_by_id(pool.ids, 500 / len(pool), seed=0)
    tune, train = pool.take(tune_idx), pool.take(rest)
    tests = {n: load_preferences(n) for n in SETS}
    t0 = time.perf_counter()
    lab = program_labels(train, tune, _programs(args.programs), aggregator=args.aggregator, cache_dir=args.cache,
                         workers=args.workers)
    hard = (lab.p_b > 0.5).astype(int)
    cov = lab.covered & (lab.p_b != 0.5)
    print(f"hh_rlhf: tune {len(tune)} labelled rows, train pool {len(train)}; program labels ({args.aggregator}) "
          f"cover {cov.mean():.3f}, agree with the human label on {(hard[cov] == train.y[cov]).mean():.3f} of "
          f"covered rows; selected {lab.summary['selected']} ({time.perf_counter() - t0:.0f} s)")
    lb = train.longer_is_b()
    ok = cov & (lb >= 0)
    print(f"  the longer response is preferred by the program labels on {(hard[ok] == lb[ok]).mean():.3f} of covered "
          f"pairs, by the humans on {(train.y[ok] == lb[ok]).mean():.3f}")
    cache = Path(args.cache) / f"emb_minilm_{args.max_length}.safetensors"
    if cache.is_file():
        E, _ = load_tensors(cache)
    else:
        t0 = time.perf_counter()
        enc, tok = load_encoder(None).eval(), load_tokenizer(None)
        E = {"train": _embed(enc, tok, train, args.max_length), "tune": _embed(enc, tok, tune, args.max_length)}
        for n, d in tests.items():
            E[n] = _embed(enc, tok, d, args.max_length)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(cache, E)
        print(f"embedded {sum(len(v) for v in E.values()) * 2} sequences ({args.max_length} tokens) in "
              f"{time.perf_counter() - t0:.0f} s")
    settings = {"human labels": (np.ones(len(train), bool), train.y.astype(np.float32)),
                "program labels (soft)": (cov, lab.p_b.astype(np.float32)),
                "program labels (hard)": (cov, hard.astype(np.float32))}
    results: dict[str, list[dict[str, float]]] = {}
    for sname, (keep, target) in settings.items():
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            H = E["train"].shape[-1]
            if args.head == "linear":
                head = torch.nn.Linear(H, 1)
            else:
                head = torch.nn.Sequential(torch.nn.Linear(H, 256), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                           torch.nn.Linear(256, 1))
            with torch.no_grad():
                for mod in head.modules():
                    if isinstance(mod, torch.nn.Linear):
                        mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.02)
                        mod.bias.zero_()
            opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
            X = E["train"][torch.as_tensor(np.flatnonzero(keep))]
            T = torch.as_tensor(target[keep])
            for _ in range(args.epochs):
                perm = torch.randperm(len(X), generator=g)
                for s in range(0, len(X), 64):
                    b = perm[s:s + 64]
                    r = head(X[b]).squeeze(-1)
                    loss = bradley_terry_loss(r[:, 0], r[:, 1], T[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            head.eval()
            row = {}
            with torch.no_grad():
                for n in ("tune", *SETS):
                    r = head(E[n]).squeeze(-1)
                    y = torch.as_tensor(tune.y if n == "tune" else tests[n].y)
                    row[n] = float(pairwise_accuracy(r[:, 0], r[:, 1], y).mean())
                sub = np.asarray(tests["llmbar"].subsets)
                r = head(E["llmbar"]).squeeze(-1)
                acc = pairwise_accuracy(r[:, 0], r[:, 1], torch.as_tensor(tests["llmbar"].y)).numpy()
                for s in dict.fromkeys(tests["llmbar"].subsets):
                    row["llmbar/" + s] = float(acc[sub == s].mean())
            results.setdefault(sname, []).append(row)
        rows = results[sname]
        keys = list(rows[0])
        print(f"\n{sname}: {int(keep.sum())} training pairs, {args.head} head, {args.seeds} seeds (mean +- std of "
              f"pairwise accuracy)")
        for k in keys:
            v = np.array([r[k] for r in rows])
            print(f"  {('hh_rlhf held-out tune rows' if k == 'tune' else k):<32} {v.mean():.3f} +- {v.std():.3f}   "
                  f"seeds: {' '.join(f'{x:.3f}' for x in v)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=["judges", "bias", "cost", "distill", "all"], default="all")
    ap.add_argument("--programs", default=None, help="a program-store folder (default: the hand-written judges)")
    ap.add_argument("--aggregator", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="runs/pajama_bench_cache")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--head", choices=["linear", "mlp"], default="linear",
                    help="distill: reward head on the frozen MiniLM embeddings")
    ap.add_argument("--llm-base-url", default=None)
    ap.add_argument("--llm-model", default="gpt-4")
    ap.add_argument("--wandb", action="store_true")
    ap.add_argument("--cpu-price", type=float, default=0.05, help="USD per vCPU-hour for the cost comparison")
    args = ap.parse_args()
    for sec, fn in (("judges", judges), ("bias", bias), ("cost", cost), ("distill", distill)):
        if args.section in (sec, "all"):
            print(f"\n## {sec}")
            fn(args)


if __name__ == "__main__":
    main()
