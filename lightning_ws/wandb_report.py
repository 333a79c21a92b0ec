"""``--wandb`` for the non-training commands: the run's results as W&B tables and curves (offline by default).

``lightning-ws labelmodel ... --wandb`` / ``weaver select ... --wandb`` / ``rnb ... --wandb`` open a W&B run (mode as for
training: ``--wandb_mode`` > ``$WANDB_MODE`` > offline; folder ``runs/wandb``; project ``--wandb_project``, default
``lightning-ws``; job type = the command) and log what the command wrote:

* ``labelmodel``: ``labelmodel/results`` (one row per label model: metric on all / covered rows, tie rate, fit time,
  class-balance source, converged), ``labelmodel/lf_analysis`` (the LF table: polarity, coverage, overlaps,
  conflicts, empirical accuracy) and ``labelmodel/<model>/<metric>`` in the summary;
* ``weaver select``: ``weaver/selection`` (every method of the report: supervision, select@1, AUROC, tie rate),
  ``weaver/accuracy_vs_n`` (select@1 of Weaver's scores, majority-free first-candidate and oracle pass@N when only
  the first N candidates of each problem are available) with a line plot, and ``weaver/<method>/select_at_1``;
* every command: its arguments in the config and the files it wrote.

When the command has no output option set, one is added pointing into ``runs/<project>/<run id>/``. A command that
fails closes the run with exit code 1 (W&B shows it failed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["pop_wandb_flags", "run_logged"]

_OUTPUT_OPTION = {"labelmodel": ("--output", "labelmodel.json"), "weaver": ("--out", "weaver")}


def pop_wandb_flags(argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
    """Remove ``--wandb``, ``--wandb_project X``, ``--wandb_mode X`` from ``argv``; return ``(rest, options)``."""
    rest: list[str] = []
    opts: dict[str, str] = {}
    on = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--wandb":
            on = True
        elif arg in ("--wandb_project", "--wandb_mode") and i + 1 < len(argv):
            opts[arg[2:]] = argv[i + 1]
            on = True
            i += 1
        elif arg.startswith(("--wandb_project=", "--wandb_mode=")):
            key, value = arg[2:].split("=", 1)
            opts[key] = value
            on = True
        else:
            rest.append(arg)
        i += 1
    return rest, (opts if on else None)


def _has_option(argv: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def _option_value(argv: list[str], option: str) -> str | None:
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def run_logged(command: str, argv: list[str], func: Callable[[list[str]], int], opts: dict[str, str]) -> int:
    """Run ``func(argv)`` inside a W&B run and log its results (see the module docstring)."""
    import wandb

    from lightning_ws.loggers import new_run_id, resolve_wandb_mode

    mode = resolve_wandb_mode(opts.get("wandb_mode"))
    project = opts.get("wandb_project", "lightning-ws")
    run_id = new_run_id()
    run_dir = Path("runs") / project / run_id
    argv = list(argv)
    if command in _OUTPUT_OPTION and (command != "weaver" or (argv and argv[0] == "select")):
        option, name = _OUTPUT_OPTION[command]
        if not _has_option(argv, option):
            argv += [option, str(run_dir / name)]
    Path("runs").mkdir(exist_ok=True)
    run = wandb.init(project=project, id=run_id, dir=str(Path("runs").resolve()), mode=mode, job_type=command,
                     config={"command": command, "argv": argv}, reinit="finish_previous")
    try:
        code = int(func(argv) or 0)
    except BaseException:
        run.finish(exit_code=1)
        raise
    try:
        if code == 0:
            _report(command, argv, run)
    finally:
        run.finish(exit_code=code)
    if mode != "disabled":
        print(f"W&B run ({mode}): {run.dir and Path(run.dir).parent}", file=sys.stderr)
    return code


def _report(command: str, argv: list[str], run: Any) -> None:
    if command == "labelmodel":
        path = _option_value(argv, "--output")
        if path and Path(path).is_file():
            _report_labelmodel(json.loads(Path(path).read_text(encoding="utf-8")), run)
    elif command == "weaver":
        out = _option_value(argv, "--out")
        if out and (Path(out) / "report.json").is_file():
            _report_weaver(argv, Path(out), run)
    files = []
    for option in ("--output", "--out"):
        value = _option_value(argv, option)
        if value and Path(value).exists():
            p = Path(value)
            files += [str(f) for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    run.summary["files"] = files


def _report_labelmodel(result: dict[str, Any], run: Any) -> None:
    import wandb

    metric = result.get("metric", "metric")
    cols = ["model", f"{metric}_all", f"{metric}_covered", "tie_rate", "fit_time_s", "class_balance_source",
            "converged", "skipped"]
    fitted = [r for r in result.get("results", []) if "skipped" not in r]  # a model that refused the matrix
    rows = [[r["model"], r.get("metric_all"), r.get("metric_covered"), r.get("tie_rate"), r.get("fit_time_s"),
             r.get("class_balance_source"), r.get("converged"), r.get("skipped", "")]
            for r in result.get("results", [])]
    log: dict[str, Any] = {"labelmodel/results": wandb.Table(columns=cols, data=rows)}
    lf = result.get("lf_analysis") or []
    if lf:
        lf_cols = list(lf[0])
        log["labelmodel/lf_analysis"] = wandb.Table(
            columns=lf_cols, data=[[str(r[c]) if c == "polarity" else r[c] for c in lf_cols] for r in lf])
    run.log(log)
    for r in fitted:
        run.summary[f"labelmodel/{r['model']}/{metric}"] = r["metric_all"]


def accuracy_vs_n(scores: Any, correct: Any) -> list[dict[str, float]]:
    """select@1 of ``scores`` and oracle pass@N when only the first ``N`` candidates of each problem exist."""
    import numpy as np

    scores, correct = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    out = []
    for n in range(1, scores.shape[1] + 1):
        pick = scores[:, :n].argmax(1)
        out.append({"N": n, "weaver_select_at_1": float(correct[np.arange(len(pick)), pick].mean()),
                    "first_candidate": float(correct[:, 0].mean()),
                    "oracle_pass_at_n": float(correct[:, :n].any(1).mean())})
    return out


def _report_weaver(argv: list[str], out: Path, run: Any) -> None:
    import numpy as np
    import wandb

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    cols = ["method", "supervision", "select_at_1", "auroc", "tie_rate"]
    rows = [[r.get(c) for c in cols] for r in report.get("rows", [])]
    log: dict[str, Any] = {"weaver/selection": wandb.Table(columns=cols, data=rows)}
    for r in report.get("rows", []):
        run.summary[f"weaver/{r['method']}/select_at_1"] = r["select_at_1"]
    scores_file = out / "weaver_scores.json"
    if scores_file.is_file():
        from lightning_ws.weaver.cli import _load, build_parser

        data = _load(build_parser().parse_args(argv))
        correct = getattr(data, "correct", None)
        if correct is not None:
            scores = np.asarray(json.loads(scores_file.read_text(encoding="utf-8"))["scores"], dtype=float)
            curve = accuracy_vs_n(scores, np.asarray(correct))
            table = wandb.Table(columns=list(curve[0]), data=[list(r.values()) for r in curve])
            log["weaver/accuracy_vs_n"] = table
            log["weaver/accuracy_vs_n_plot"] = wandb.plot.line(table, "N", "weaver_select_at_1",
                                                               title="Weaver select@1 vs candidates per problem")
    run.log(log)
