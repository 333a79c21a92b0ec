"""The ``lightning-ws`` command.

Training subcommands come from :class:`lightning.pytorch.cli.LightningCLI` (``fit``, ``validate``, ``test``,
``predict``; ``-c config.yaml``; ``--print_config``; subclass mode for model and data, so any LightningModule /
LightningDataModule is selected with ``class_path``). Other subcommands (label-model fitting, selection reports, ...)
are registered in :data:`COMMANDS` and run under the same entry point.

Additions to LightningCLI:

* ``--test_after_fit true`` makes ``fit`` evaluate the best checkpoint on the test split afterwards;
* after ``fit``/``test`` a summary says where the run, the W&B files, the checkpoint and the metrics are, and the
  metrics are written to ``<run dir>/metrics-<command>.json`` (``metrics-fit.json``, ``metrics-test.json``...);
* the resolved config is saved in the run folder and logged to the logger's hyperparameters once, from rank zero
  (:class:`WSSaveConfigCallback`: never clashes with a previous run's ``config.yaml``);
* bad input (missing config file, unknown class path, missing data file) ends with a short error, not a traceback;
  set ``LIGHTNING_WS_DEBUG=1`` to see the traceback.
* every run gets :class:`~lightning_ws.resume.RNGStateCallback` (RNG states in the checkpoint) and
  :class:`~lightning_ws.checkpoints.CheckpointInfoCallback` (the model class in the checkpoint);
* ``--ckpt_path last`` finds the last checkpoint of the run named in the logger config and continues it in the same
  run folder and W&B run; a checkpoint file inside a run folder (``<save_dir>/<project>/<id>/checkpoints/``) also
  reuses that run. A missing, corrupt or mismatched checkpoint is a one-paragraph error;
* ``validate``/``test``/``predict`` need ``--ckpt_path`` (evaluating untrained weights by accident is an error;
  ``--allow_untrained true`` does it on purpose); ``predict`` writes ``predictions.jsonl``/``.safetensors`` to the
  run folder (:mod:`lightning_ws.predictions`);
* a run that fails is closed in W&B with a non-zero exit code (shown as failed).

Example (the training subcommands start from ``lightning_ws/configs/base_trainer.yaml``, the trainer/logger settings
every shipped config shares, also at ``configs/base/trainer.yaml``; later ``-c`` files win key by key)::

    lightning-ws fit -c configs/quickstart.yaml
    lightning-ws fit -c configs/quickstart.yaml --trainer.max_epochs 1
    lightning-ws fit -c configs/quickstart.yaml --ckpt_path last   # continue the run
    lightning-ws predict -c configs/quickstart.yaml --ckpt_path last  # predictions.jsonl
    lightning-ws labelmodel youtube
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_ws.errors import LightningWSError

__all__ = ["COMMANDS", "WSLightningCLI", "WSSaveConfigCallback", "main", "cli_main"]

#: Non-training subcommands: name -> ("module:function", one-line help). The function takes ``argv`` (the arguments
#: after the subcommand) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {}

_TRAINING = ("fit", "validate", "test", "predict")


def _offline_defaults() -> None:
    """Never reach a model hub at run time: models come from local folders or installed packages."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _build_cli_classes():
    """The training CLI classes (module level in :mod:`lightning_ws.training_cli`, imported on first use so that
    ``import lightning_ws.cli`` stays cheap)."""
    from lightning_ws.training_cli import WSLightningCLI, WSSaveConfigCallback

    return WSLightningCLI, WSSaveConfigCallback


def __getattr__(name: str) -> Any:  # lazy public classes
    if name in ("WSLightningCLI", "WSSaveConfigCallback"):
        cli_cls, save_cls = _build_cli_classes()
        globals()["WSLightningCLI"], globals()["WSSaveConfigCallback"] = cli_cls, save_cls
        return globals()[name]
    raise AttributeError(name)


#: The shared trainer/logger settings every training command starts from (W&B logger under ``runs/``, precision,
#: log cadence). ``lightning-ws fit -c configs/<x>.yaml`` applies it first, so a method config holds only what differs;
#: ``configs/base/trainer.yaml`` is the same file, for users who compose it explicitly.
BASE_TRAINER_CONFIG = Path(__file__).resolve().parent / "configs" / "base_trainer.yaml"
TRAINING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _parser_kwargs(run: bool) -> dict[str, Any]:
    """Parser options: environment variables on, and the base trainer config as the default config of every
    training subcommand (``LightningCLI`` takes per-subcommand options under the subcommand's name)."""
    defaults = {"default_env": True, "default_config_files": [str(BASE_TRAINER_CONFIG)]}
    if not run:
        return defaults
    return {"default_env": True, "exit_on_error": False, **{sub: dict(defaults) for sub in TRAINING_SUBCOMMANDS}}


def cli_main(args: Sequence[str] | dict | None = None, run: bool = True) -> Any:
    """Build (and by default run) the training CLI; usable from Python and tests with a list or dict of args."""
    import lightning.pytorch as pl

    _offline_defaults()
    cli_cls, save_cls = _build_cli_classes()
    return cli_cls(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=save_cls,
        save_config_kwargs={"overwrite": False, "save_to_log_dir": False},
        parser_kwargs=_parser_kwargs(run),
        args=list(args) if isinstance(args, (list, tuple)) else args,
        run=run,
    )


def _overview() -> str:
    extra = "\n".join(f"  {name:<12} {helptext}" for name, (_, helptext) in sorted(COMMANDS.items()))
    return textwrap.dedent(
        """\
        usage: lightning-ws {fit,validate,test,predict} -c CONFIG.yaml [--section.key value ...]
               lightning-ws COMMAND [options]

        Training (LightningCLI; `lightning-ws fit --help` lists every option, `--print_config` shows the resolved
        config):
          fit          train a model (add `--test_after_fit true` to evaluate on the test split afterwards)
          validate     evaluate on the validation split
          test         evaluate on the test split
          predict      run prediction (writes predictions.jsonl to the run folder)
        """
    ) + (f"\nOther commands (`lightning-ws COMMAND --help`; add --wandb to log the results to W&B):\n{extra}\n"
         if extra else "")


def _short_error(err: BaseException) -> str:
    """One paragraph from an exception: jsonargparse's union-type reports are reduced to the real problem."""
    msg = str(err).strip() or err.__class__.__name__
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    key = None
    if lines and lines[0].startswith("Parser key"):
        key = lines[0].split('"')[1] if '"' in lines[0] else None
    if any(ln.startswith("Does not validate against any of the Union subtypes") for ln in lines):
        reasons, i = [], 0
        while i < len(lines):
            ln = lines[i]
            if ln.startswith("- ") and "Expected a <class 'NoneType'>" not in ln:
                reason = ln[2:]
                # a reason may continue on the next indented line(s) until the next "- " or section header
                j = i + 1
                while j < len(lines) and not lines[j].startswith(("- ", "Given value", "Subtypes", "Errors")):
                    reason += " " + lines[j]
                    j += 1
                reasons.append(reason)
                i = j
                continue
            i += 1
        if reasons:
            lines = [(f"{key}: " if key else "") + "; ".join(reasons).rstrip(".") + "."]
    if any("class_path" in ln for ln in lines):
        lines.append("Check the class_path: it must be a full import path such as "
                     "lightning_ws.modules.TextClassifier (`lightning-ws fit --help` lists the options).")
    if len(lines) > 8:
        lines = lines[:8] + ["... (set LIGHTNING_WS_DEBUG=1 for the full message and traceback)"]
    return " ".join(lines) if len(lines) <= 3 else "\n".join(lines)


def _fail(err: BaseException, command: str) -> int:
    if os.environ.get("LIGHTNING_WS_DEBUG"):
        raise err
    print(f"lightning-ws {command}: error: {_short_error(err)}", file=sys.stderr)
    return 2 if command in _TRAINING else 1


def _missing_config(argv: Sequence[str]) -> str | None:
    """The first ``-c/--config`` file that does not exist, if any (checked before LightningCLI starts)."""
    for i, arg in enumerate(argv):
        path = None
        if arg in ("-c", "--config") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path is not None and not Path(path).is_file() and not path.lstrip().startswith("{"):
            return path
    return None


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-ws`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    command = argv[0]
    if command in COMMANDS:
        target, _ = COMMANDS[command]
        module_name, func_name = target.split(":")
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        _offline_defaults()
        from lightning_ws.wandb_report import pop_wandb_flags, run_logged

        rest, wandb_opts = pop_wandb_flags(argv[1:])
        try:
            if wandb_opts is not None:
                return run_logged(command, rest, func, wandb_opts)
            return int(func(rest) or 0)
        except LightningWSError as err:
            return _fail(err, command)
    if command not in _TRAINING:
        print(f"lightning-ws: error: unknown command {command!r}.\n\n{_overview()}", file=sys.stderr)
        return 2
    missing = _missing_config(argv[1:])
    if missing is not None:
        print(f"lightning-ws {command}: error: config file not found: {missing} (current directory: {Path.cwd()}). "
              f"Check the path; shipped configs are in the repository's configs/ folder.", file=sys.stderr)
        return 2
    try:
        cli = cli_main(None if args is None else argv)
        _finish_wandb(getattr(cli, "trainer", None))
    except SystemExit as exc:  # --help / --print_config exit 0; argparse errors exit 2
        if exc.code:
            _fail_wandb()
        return int(exc.code or 0) if not isinstance(exc.code, str) else _fail(RuntimeError(exc.code), command)
    except LightningWSError as err:
        _fail_wandb()
        return _fail(err, command)
    except BaseException as err:  # noqa: BLE001 - turn parser errors into one paragraph
        _fail_wandb()
        from jsonargparse import ArgumentError

        if isinstance(err, (ArgumentError, FileNotFoundError, ValueError, TypeError, ImportError)) and (
            isinstance(err, ArgumentError) or _from_user_input(err)
        ):
            return _fail(err, command)
        raise
    return 0


def _fail_wandb() -> None:
    """Close a W&B run left open by a failed command with exit code 1, so W&B records it as failed."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None:
        try:
            run.finish(exit_code=1)
        except Exception:  # noqa: BLE001 - never hide the original error
            pass


def _finish_wandb(trainer: Any) -> None:
    """Close the W&B run a CLI command opened, so its summary is complete on disk (and synced when online)."""
    for logger in getattr(trainer, "loggers", None) or []:
        exp = getattr(logger, "_experiment", None)
        if exp is not None and hasattr(exp, "finish"):
            exp.finish()
            logger._experiment = None


def _from_user_input(err: BaseException) -> bool:
    """Errors raised while instantiating user-configured classes count as input errors (no traceback)."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, LightningWSError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _register_builtin_commands() -> None:
    """Built-in non-training commands (each method package provides a ``main(argv) -> int``)."""
    COMMANDS["labelmodel"] = ("lightning_ws.labelmodels.cli:main",
                              "fit label models on a WRENCH-format data set; LF table and test metric of each model")
    COMMANDS["rnb"] = ("lightning_ws.rnb.cli:main", "R&B: k-means domain regrouping from text embeddings (regroup, show)")
    COMMANDS["weaver"] = ("lightning_ws.weaver.cli:main",
                          "Weaver verifier-ensemble selection: report vs baselines, per-candidate scores")
    COMMANDS["programs"] = ("lightning_ws.programs.cli:main",
                            "LLM-written labeling programs: generate, list, show, validate, apply (sandboxed), sandbox")
    COMMANDS["datacomp"] = ("lightning_ws.datacomp.cli:main",
                            "DataComp filtering: build the noisy pool, filter signals, label-model filter ensemble")
    COMMANDS["pajama"] = ("lightning_ws.pajama.cli:main",
                          "PAJAMA program judges: judges, generate, evaluate (vs baselines), bias probes")
    COMMANDS["export"] = ("lightning_ws.export:main",
                          "export a checkpoint: safetensors (full / merged / adapter-only), HF model or PEFT folder")


_register_builtin_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
