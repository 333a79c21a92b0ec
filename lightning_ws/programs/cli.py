"""``lightning-ws programs``: generate, list, show, validate and apply LLM-written labeling programs.

Examples::

    # generate with any OpenAI-compatible server (LWS_LLM_BASE_URL / LWS_LLM_API_KEY), or replay the shipped recording
    lightning-ws programs generate --task youtube --tier T3_human_heuristics --n 6 --client openai --model gpt-4o-mini
    lightning-ws programs generate --task sms --template alchemist --prior heuristics --n 10 --client replay
    lightning-ws programs list --store programs/
    lightning-ws programs show 3fa2c1 --store programs/ --prompt
    lightning-ws programs validate --store programs/ --run          # static checks + a sandbox run on valid texts
    lightning-ws programs apply --store programs/ --dataset youtube --split train --out L_train.safetensors
    lightning-ws programs sandbox                                   # layers active here + the attack suite
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_ws.errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lightning-ws programs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="ask a code LLM for programs and store them")
    g.add_argument("--task", required=True, help="shipped task (youtube, sms, trec) or a task YAML")
    g.add_argument("--template", default="scriptoriumws", help="scriptoriumws | alchemist | a template YAML")
    g.add_argument("--tier", default=None, help="ScriptoriumWS tier (T1_general ... T5_data_examples); default: all")
    g.add_argument("--prior", default=None, help="Alchemist: prior knowledge first (heuristics, keywords, ...)")
    g.add_argument("--n", type=int, default=6, help="samples per prompt")
    g.add_argument("--client", default="replay", choices=["openai", "transformers", "replay"])
    g.add_argument("--model", default=None, help="model name (openai) or local folder (transformers)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: $LWS_LLM_BASE_URL)")
    g.add_argument("--recorded", default=None, help="replay: a recorded folder (default: the shipped one)")
    g.add_argument("--cache", default="runs/llm_cache", help="response cache folder ('' = none)")
    g.add_argument("--prices", default=None, help="JSON/YAML price table {model: [prompt_per_1k, completion_per_1k]}")
    g.add_argument("--concurrency", type=int, default=4)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--max-tokens", type=int, default=1000)
    g.add_argument("--store", default="programs", help="program store folder")

    ls = sub.add_parser("list", help="list stored programs")
    ls.add_argument("--store", default="programs")
    ls.add_argument("--task", default=None)
    ls.add_argument("--prompt-id", default=None)
    ls.add_argument("--all", action="store_true", help="include programs that failed the static checks")

    sh = sub.add_parser("show", help="show one program")
    sh.add_argument("id")
    sh.add_argument("--store", default="programs")
    sh.add_argument("--prompt", action="store_true", help="also print the rendered prompt and the raw response")

    va = sub.add_parser("validate", help="re-run the static checks (and optionally a sandbox run)")
    va.add_argument("--store", default="programs")
    va.add_argument("--task", default=None)
    va.add_argument("--run", action="store_true", help="also run valid programs on the task's valid texts")

    ap_ = sub.add_parser("apply", help="apply programs to a data split in the sandbox -> label matrix")
    ap_.add_argument("--store", default="programs", help="program store, or 'recorded' for the shipped recording")
    ap_.add_argument("--dataset", required=True, help="WRENCH name or folder")
    ap_.add_argument("--task", default=None, help="programs' task (default: the dataset name)")
    ap_.add_argument("--prompt-id", action="append", default=None, help="only these prompts (repeatable)")
    ap_.add_argument("--split", default="train", choices=["train", "valid", "test"])
    ap_.add_argument("--out", default=None, help="write the label matrix (.safetensors) and a JSON report")
    ap_.add_argument("--cache", default="runs/program_cache", help="output cache ('' = none)")
    ap_.add_argument("--workers", type=int, default=None)
    ap_.add_argument("--call-timeout", type=float, default=2.0)
    ap_.add_argument("--batch-timeout", type=float, default=120.0)
    ap_.add_argument("--dedup", action="store_true", help="behavioural de-duplication on this split")
    ap_.add_argument("--no-progress", action="store_true")

    sb = sub.add_parser("sandbox", help="show the sandbox layers active here and run the attack suite")
    sb.add_argument("--no-attacks", action="store_true")
    sb.add_argument("--json", action="store_true")
    return ap


def _client(args: argparse.Namespace):
    from lightning_ws.programs.clients import PriceTable, make_client

    kw = {"cache_dir": args.cache or None, "concurrency": args.concurrency}
    if args.prices:
        kw["prices"] = PriceTable.load(args.prices)
    if args.client == "openai":
        if not args.model:
            raise ConfigError("--client openai needs --model.")
        return make_client("openai", model=args.model, base_url=args.base_url, **kw)
    if args.client == "transformers":
        if not args.model:
            raise ConfigError("--client transformers needs --model (a local model folder).")
        return make_client("transformers", model_path=args.model, **kw)
    return make_client("replay", root=args.recorded, **kw)


def _generate(args: argparse.Namespace) -> int:
    from lightning_ws.programs.generate import ProgramGenerator
    from lightning_ws.programs.prompts import load_task, load_template
    from lightning_ws.programs.store import ProgramStore

    task, tpl = load_task(args.task), load_template(args.template)
    client = _client(args)
    gen = ProgramGenerator(client, ProgramStore(args.store), temperature=args.temperature,
                           max_tokens=args.max_tokens)
    tiers = [args.tier] if args.tier or not tpl.tiers else list(tpl.tiers)
    for tier in tiers:
        rep = gen.generate(tpl, task, tier=tier, n=args.n, prior_type=args.prior)
        label = tier or ("alchemist+" + args.prior if args.prior else tpl.name)
        print(f"{task.name} {label}: " + ", ".join(f"{k}={v}" for k, v in rep.summary().items()))
        for p in rep.programs:
            if not p.valid:
                print(f"  invalid {p.id}: {'; '.join(p.checks.get('problems', []))}")
    t = client.totals
    print(f"calls={t['calls']} cached={t['cached']} retries={t['retries']} prompt_tokens={t['prompt_tokens']} "
          f"completion_tokens={t['completion_tokens']} cost_usd={t['cost_usd']:.6f} store={args.store}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from lightning_ws.programs.store import ProgramStore

    progs = ProgramStore(args.store).select(task=args.task, prompt_id=args.prompt_id, valid_only=not args.all)
    print(f"{'id':16s}  {'task':10s} {'prompt':30s} {'k':>3s} {'valid':5s} {'model':28s} cost_usd")
    for p in progs:
        cost = "" if p.cost_usd is None else f"{p.cost_usd:.6f}"
        print(f"{p.id:16s}  {p.task:10s} {p.prompt_id:30s} {p.sample:3d} {str(p.valid):5s} {p.model[:28]:28s} {cost}")
    print(f"{len(progs)} program(s)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from lightning_ws.programs.store import ProgramStore

    p = ProgramStore(args.store).get(args.id)
    meta = {k: v for k, v in p.to_dict().items() if k not in ("source", "prompt", "system_prompt", "response",
                                                               "extra")}
    print(json.dumps(meta, indent=1, ensure_ascii=False))
    if args.prompt:
        print("--- system ---\n" + p.system_prompt + "\n--- user ---\n" + p.prompt + "\n--- response ---\n" +
              p.response)
    print("--- code ---\n" + p.source)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from lightning_ws.programs.generate import check_program
    from lightning_ws.programs.store import ProgramStore

    progs = ProgramStore(args.store).select(task=args.task, valid_only=False)
    bad = 0
    for p in progs:
        chk = check_program(p.source, p.entry)
        if not chk.ok:
            bad += 1
            print(f"{p.id} {p.task}/{p.prompt_id}/{p.sample}: {'; '.join(chk.problems)}")
    print(f"{len(progs) - bad}/{len(progs)} programs pass the static checks")
    if args.run:
        from lightning_ws.data import load_wrench
        from lightning_ws.programs.apply import apply_programs

        for task in sorted({p.task for p in progs}):
            ok = [p for p in progs if p.task == task and check_program(p.source, p.entry).ok]
            from lightning_ws.programs.prompts import load_task

            spec = load_task(task)
            data = load_wrench(spec.dataset or task, "valid")
            app = apply_programs(ok, data.texts, num_classes=spec.num_classes)
            for e in app.errors:
                print(f"  {ok[e['program']].id} {e['kind']}: {e['detail'][:160]}")
            print(f"{task}: {len(ok)} programs run on {data.n} valid texts, {len(app.errors)} error record(s)")
    return 1 if bad else 0


def _apply(args: argparse.Namespace) -> int:
    import numpy as np

    from lightning_ws.data import load_wrench
    from lightning_ws.io import save_json, save_tensors
    from lightning_ws.programs.apply import apply_programs, dedup_programs, lf_metrics

    data = load_wrench(args.dataset, args.split, allow_unlabeled=True)  # programs need texts, not labels
    task = args.task or data.name
    if args.store == "recorded":
        from lightning_ws.programs.generate import recorded_programs

        progs = [p for p in recorded_programs(task, args.prompt_id) if p.valid]
    else:
        from lightning_ws.programs.store import ProgramStore

        progs = [p for p in ProgramStore(args.store).select(task=task)
                 if not args.prompt_id or p.prompt_id in args.prompt_id]
    if not progs:
        raise ConfigError(f"no valid programs for task {task!r} in {args.store!r}.")
    kw = {"call_timeout": args.call_timeout, "batch_timeout": args.batch_timeout}
    if args.workers:
        kw["workers"] = args.workers
    app = apply_programs(progs, data.texts, num_classes=data.num_classes, cache_dir=args.cache or None,
                         progress=not args.no_progress, **kw)
    keep = list(range(len(progs)))
    if args.dedup:
        keep, _ = dedup_programs(app.L)
    L = app.L[:, keep]
    metrics = lf_metrics(L, data.labels)
    gold = int(data.has_gold.sum())
    print(f"{'program':16s} {'prompt':30s} coverage accuracy({args.split} gold, {gold} of {data.n} rows labelled)")
    for j, m in zip(keep, metrics):
        print(f"{progs[j].id:16s} {progs[j].prompt_id:30s} {m['coverage']:.3f}    {m['accuracy']:.3f}")
    cov = float((L >= 0).any(1).mean()) if L.size else 0.0
    print(f"{len(keep)} programs (of {len(progs)}), row coverage {cov:.3f}, {len(app.errors)} error record(s), "
          f"{app.cache_hits} cached, {app.seconds:.1f}s; sandbox layers: {app.layers or 'all cached'}")
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise ConfigError(f"{out} exists; choose a new --out (existing files are never overwritten).")
        save_tensors(out, {"L": np.ascontiguousarray(L.astype(np.int64))},
                     metadata={"program_ids": json.dumps([progs[j].id for j in keep]), "dataset": data.name,
                               "split": args.split})
        save_json(out.with_suffix(".json"), {"programs": [progs[j].id for j in keep], "lf_metrics": metrics,
                                             "errors": app.errors, "layers": app.layers, "coverage": cov})
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from lightning_ws.programs.sandbox import ProgramSandbox, available_isolation, bwrap_binary

    with ProgramSandbox(workers=1) as sb:
        sb.run(["def label(t):\n    return 0\n"], ["x"], num_classes=2)
        layers, missing = dict(sb.layers), sb.missing_layers()
    report: dict = {"layers": layers, "missing": missing, "launchers": available_isolation(),
                    "bwrap": bwrap_binary()}
    if not args.no_attacks:
        from lightning_ws.programs.attacks import run_attack_suite

        rep = run_attack_suite()
        report.update({k: rep[k] for k in ("tried", "contained", "honest_ok", "completed", "seconds")})
        report["not_contained"] = [a["name"] for a in rep["attacks"] if not a["contained"]]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for k, v in layers.items():
            print(f"{k:13s} {v}")
        print("missing: " + (", ".join(missing) or "none"))
        print("launchers: " + ", ".join(f"{k}={'works' if v else 'no'}" for k, v in report["launchers"].items())
              + f" (bwrap binary: {report['bwrap'] or 'not found'})")
        if "tried" in report:
            print(f"attacks tried {report['tried']}, contained {report['contained']}, honest programs exact: "
                  f"{report['honest_ok']}, run completed: {report['completed']} ({report['seconds']:.1f}s)")
    return 0 if not report.get("not_contained") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-ws programs``."""
    args = _parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    return {"generate": _generate, "list": _list, "show": _show, "validate": _validate, "apply": _apply,
            "sandbox": _sandbox}[args.cmd](args)
