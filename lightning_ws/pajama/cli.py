"""``lightning-ws pajama``: program judges (PAJAMA, arXiv 2506.10403) from the command line.

Examples::

    lightning-ws pajama judges                                   # the committed hand-written judge programs
    lightning-ws pajama evaluate --data pandalm_test             # programs vs baselines (30% tunes, 70% reported)
    lightning-ws pajama bias --data llmbar                       # swap, length and perturbation probes
    lightning-ws pajama bias --data llmbar --llm-client openai --model gpt-4o-mini   # + an LLM judge, same probes
    # generate judge programs with any OpenAI-compatible server ($LWS_LLM_BASE_URL / $LWS_LLM_API_KEY)
    lightning-ws pajama generate --client openai --model gpt-4o --store pajama_programs --variants 8
    lightning-ws pajama evaluate --data llmbar --programs pajama_programs
    lightning-ws fit -c configs/pajama_distill.yaml              # reward model distilled from program labels
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lightning_ws.errors import ConfigError

__all__ = ["main"]


def _client_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--llm-client", "--client", dest="client", default=default,
                   choices=["openai", "transformers", "replay"] if default else ["openai", "transformers", "replay",
                                                                                  None])
    p.add_argument("--model", default=None, help="model name (openai) or local folder (transformers)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: $LWS_LLM_BASE_URL)")
    p.add_argument("--recorded", default=None, help="replay: a folder of recorded responses")
    p.add_argument("--cache", default="runs/llm_cache", help="response cache folder ('' = none)")
    p.add_argument("--prices", default=None, help="JSON/YAML price table {model: [prompt_per_1k, completion_per_1k]}")
    p.add_argument("--concurrency", type=int, default=4)


def _client(args: argparse.Namespace):
    from lightning_ws.programs.clients import PriceTable, make_client

    kw = {"cache_dir": args.cache or None, "concurrency": args.concurrency}
    if args.prices:
        kw["prices"] = PriceTable.load(args.prices)
    if args.client in ("openai", "transformers") and not args.model:
        raise ConfigError(f"--client {args.client} needs --model.")
    if args.client == "openai":
        return make_client("openai", model=args.model, base_url=args.base_url, **kw)
    if args.client == "transformers":
        return make_client("transformers", model_path=args.model, **kw)
    return make_client("replay", root=args.recorded, **kw)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lightning-ws pajama", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judges", help="list judge programs (hand-written, or a store)")
    j.add_argument("--programs", default="handwritten")

    g = sub.add_parser("generate", help="ask an LLM for rubric x variant judge programs and store them")
    _client_args(g, "openai")
    g.add_argument("--store", default="pajama_programs")
    g.add_argument("--rubrics", nargs="*", default=None, help="rubric keys (default all ten)")
    g.add_argument("--variants", type=int, default=8)
    g.add_argument("--examples", default="hh_rlhf", help="labelled set for the few-shot block ('' = none)")
    g.add_argument("--tune-size", type=int, default=500, help="examples are drawn from this many rows (seeded)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--max-tokens", type=int, default=5000)
    g.add_argument("--max-attempts", type=int, default=200)

    for name, helptext in (("evaluate", "program judges vs baselines on a labelled set"),
                           ("bias", "swap / length / perturbation probes of judges")):
        e = sub.add_parser(name, help=helptext)
        e.add_argument("--data", required=True, help="hh_rlhf | pandalm_test | llmbar | a JSONL file")
        e.add_argument("--programs", default="handwritten", help="'handwritten' or a program-store folder")
        e.add_argument("--aggregator", default="auto", help="majority_vote | auto | dawid_skene | ...")
        e.add_argument("--val-fraction", type=float, default=0.3)
        e.add_argument("--min-coverage", type=float, default=0.2)
        e.add_argument("--seed", type=int, default=0)
        e.add_argument("--workers", type=int, default=2)
        e.add_argument("--score-cache", default="runs/pajama_score_cache")
        e.add_argument("--out", default=None, help="write the report JSON here")
        if name == "bias":
            _client_args(e, None)
            e.add_argument("--wandb", action="store_true", help="log the table to W&B (offline unless configured)")
    return ap


def _write(path: str | None, obj: object) -> None:
    if path:
        from lightning_ws.io import atomic_write_text, to_jsonable

        atomic_write_text(Path(path), json.dumps(to_jsonable(obj), indent=1))
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lightning_ws.pajama.distill import resolve_programs

    if args.cmd == "judges":
        for p in resolve_programs(args.programs):
            print(f"{p.name or p.id:<20} {p.family:<12} {p.extra.get('rubric', p.prompt_id):<50} valid={p.valid}")
        return 0
    if args.cmd == "generate":
        from lightning_ws.pajama.data import load_preferences, split_by_id
        from lightning_ws.pajama.synth import ProgramSynthesizer
        from lightning_ws.programs.sandbox import ProgramSandbox
        from lightning_ws.programs.store import ProgramStore

        examples = None
        if args.examples:
            d = load_preferences(args.examples)
            examples = d.take(split_by_id(d.ids, min(0.99, args.tune_size / len(d)), seed=0)[0])
        with ProgramSandbox(workers=1) as sb:
            rep = ProgramSynthesizer(_client(args), ProgramStore(args.store), sandbox=sb, rubrics=args.rubrics,
                                     n_variants=args.variants, max_attempts_total=args.max_attempts,
                                     temperature=args.temperature, max_tokens=args.max_tokens,
                                     examples=examples).generate()
        print(json.dumps(rep.summary(), indent=1))
        return 0 if rep.programs else 1

    from lightning_ws.pajama.data import load_preferences
    from lightning_ws.pajama.pipeline import JudgeConfig
    from lightning_ws.pajama.report import format_rows
    from lightning_ws.programs.sandbox import ProgramSandbox

    d = load_preferences(args.data)
    progs = resolve_programs(args.programs)
    cfg = JudgeConfig(aggregator=args.aggregator, min_coverage=args.min_coverage, seed=args.seed)
    with ProgramSandbox(workers=args.workers) as sb:
        if args.cmd == "evaluate":
            from lightning_ws.pajama.report import compare_judges

            res = compare_judges(d, progs, val_fraction=args.val_fraction, seed=args.seed, config=cfg, sandbox=sb,
                                 cache_dir=args.score_cache or None)
            print(f"{d.name}: tune {res['n_val']} rows, report {res['n_report']} rows, {res['n_programs']} programs; "
                  f"selected {res['pipelines']['ours']['selected']}")
            print(format_rows(res["rows"]))
            _write(args.out, res)
            return 0
        from lightning_ws.pajama.bias import BiasEvaluator, bias_table_rows, length_judge
        from lightning_ws.pajama.data import split_by_id
        from lightning_ws.pajama.pipeline import ProgramJudge, ProgramJudgePipeline
        from lightning_ws.pajama.scoring import score_pairs

        strata = d.subsets if any(d.subsets) else None
        vi, ri = split_by_id(d.ids, args.val_fraction, seed=args.seed, strata=strata)
        S = score_pairs(progs, d.queries, d.responses_a, d.responses_b, sandbox=sb, cache_dir=args.score_cache or None)
        pipe = ProgramJudgePipeline(cfg).fit(S.scores[vi], d.y[vi], pool_scores=S.scores[ri], names=S.names)
        rep = d.take(ri)
        judges = [(f"programs+{args.aggregator}", ProgramJudge(progs, pipe, sandbox=sb,
                                                               cache_dir=args.score_cache or None)),
                  ("prefer longer", length_judge)]
        if args.client:
            from lightning_ws.pajama.llm_judge import LLMJudge

            llm = LLMJudge(_client(args))
            judges.append((llm.name, llm))
        ev = BiasEvaluator()
        rows = [ev.evaluate(j, rep.queries, rep.responses_a, rep.responses_b, rep.y, name=n) for n, j in judges]
        cols, data = bias_table_rows(rows)
        print(f"{d.name}: {len(rep)} pairs (the {1 - args.val_fraction:.0%} report part)")
        print(format_rows(rows, cols))
        if args.wandb:
            import os

            import wandb

            run = wandb.init(project="lightning-ws", name=f"pajama_bias_{d.name}", dir="runs",
                             mode=os.environ.get("WANDB_MODE", "offline"))
            run.log({"pajama/bias": wandb.Table(columns=cols, data=data)})
            run.finish()
        _write(args.out, {"rows": rows})
    return 0
