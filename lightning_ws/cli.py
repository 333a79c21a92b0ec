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

Example::

    lightning-ws fit -c configs/quickstart.yaml
    lightning-ws fit -c configs/quickstart.yaml --trainer.max_epochs 1 --data.init_args.batch_size 16
    lightning-ws fit -c configs/quickstart.yaml --ckpt_path last      # continue the interrupted run
    lightning-ws predict -c configs/quickstart.yaml --ckpt_path last  # predictions.jsonl in the run folder
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


def _lightning_classes():
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    return LightningCLI, SaveConfigCallback


def _build_cli_classes():
    """Define the CLI classes lazily, so ``import lightning_ws.cli`` stays cheap."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_only

    LightningCLI, SaveConfigCallback = _lightning_classes()

    class _WSSaveConfigCallback(SaveConfigCallback):
        """Save the resolved config into this run's folder and log it to the logger, once, from rank zero.

        Lightning's default writes ``config.yaml`` into ``trainer.log_dir``, which for W&B is the shared save dir,
        so a second run fails on the existing file. Here each run gets its own folder (``<save_dir>/<project>/<id>``),
        an existing file is never overwritten, and the config goes to ``logger.log_hyperparams`` under ``config``.
        ``save_config`` runs on rank zero only and contains no collective calls.
        """

        def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            from lightning_ws.io import atomic_write_text
            from lightning_ws.loggers import run_directory

            from lightning_ws.loggers import write_run_info

            run_dir = run_directory(trainer.logger, trainer.default_root_dir)
            write_run_info(trainer.logger, trainer.default_root_dir, command=stage)
            target = run_dir / self.config_filename
            n = 1
            while target.exists():
                target = run_dir / f"{Path(self.config_filename).stem}-{n}{Path(self.config_filename).suffix}"
                n += 1
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(target, text)
            if trainer.logger is not None:
                import yaml

                trainer.logger.log_hyperparams({"config": yaml.safe_load(text), "config_file": str(target)})

    class _WSLightningCLI(LightningCLI):
        """LightningCLI with ``--test_after_fit`` and an end-of-run summary (see module docstring)."""

        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
            parser.add_argument("--test_after_fit", type=bool, default=False,
                                help="After fit, evaluate the best checkpoint (or the final weights) on the test split.")
            parser.add_argument("--allow_untrained", type=bool, default=False,
                                help="validate/test/predict without --ckpt_path (evaluates the weights the config "
                                     "builds, i.e. untrained ones).")

        def _parse_ckpt_path(self) -> None:
            """Resolve ``--ckpt_path last`` and check the file before Lightning reads its hyperparameters."""
            from lightning_ws.checkpoints import SPECIAL, check_class, load_checkpoint
            from lightning_ws.cli_support import resolve_ckpt_path

            sub = self.config.get("subcommand")
            if sub:
                trainer_cfg = self.config[sub].get("trainer")
                if trainer_cfg is not None and (trainer_cfg.get("logger") in (False, None)
                                                or trainer_cfg.get("fast_dev_run")) \
                        and trainer_cfg.get("default_root_dir") is None:
                    trainer_cfg["default_root_dir"] = str(Path("runs") / "no-logger")  # not the working folder
                resolve_ckpt_path(self.config[sub], sub)
                ckpt = self.config[sub].get("ckpt_path")
                if ckpt is not None and str(ckpt) not in SPECIAL:
                    model_cfg = self.config[sub].get("model")
                    check_class(ckpt, load_checkpoint(ckpt), getattr(model_cfg, "class_path", None))
            super()._parse_ckpt_path()

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
            from lightning_ws.checkpoints import CheckpointInfoCallback
            from lightning_ws.predictions import PredictionsWriter
            from lightning_ws.resume import RNGStateCallback

            given = list(config.get("callbacks") or []) + list(callbacks)
            extra = [cls() for cls in (RNGStateCallback, CheckpointInfoCallback)
                     if not any(isinstance(cb, cls) for cb in given)]
            if self.subcommand == "predict" and not any(isinstance(cb, PredictionsWriter) for cb in given):
                extra.append(PredictionsWriter())
            return super()._instantiate_trainer(config, [*callbacks, *extra])

        def _run_subcommand(self, subcommand: str) -> None:
            from lightning_ws.checkpoints import SPECIAL, check_checkpoint

            ckpt = self._subcommand_value("ckpt_path")
            if ckpt is not None and str(ckpt) not in SPECIAL:
                check_checkpoint(ckpt, self.model)
            super()._run_subcommand(subcommand)

        def _subcommand_value(self, key: str, default: Any = None) -> Any:
            cfg = self.config.get(self.subcommand) if self.subcommand else self.config
            return cfg.get(key, default) if cfg is not None else default

        def after_fit(self) -> None:
            if self._subcommand_value("test_after_fit", False):
                best = _best_checkpoint(self.trainer)  # the monitored best, not LastCheckpoint's last.ckpt
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            self._summary()

        def after_test(self) -> None:
            self._summary()

        def after_validate(self) -> None:
            self._summary()

        def after_predict(self) -> None:
            self._summary()

        @rank_zero_only
        def _summary(self) -> None:
            from lightning_ws.io import save_json
            from lightning_ws.loggers import run_directory

            trainer = self.trainer
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
            run_dir = run_directory(trainer.logger, trainer.default_root_dir)
            lines = ["", "=" * 72, f"lightning-ws {self.subcommand}: done"]
            dry = bool(trainer.fast_dev_run)
            logger = trainer.logger
            from lightning.pytorch.loggers.logger import DummyLogger

            if logger is not None and not isinstance(logger, DummyLogger):
                lines.append(f"  run folder     : {run_dir}")
                exp = getattr(logger, "_experiment", None)
                wandb_dir = getattr(exp, "dir", None) if exp is not None else None
                if wandb_dir:
                    mode = getattr(logger, "mode", "")
                    lines.append(f"  W&B run ({mode}) : {Path(wandb_dir).parent}")
                    if mode == "offline":
                        lines.append(f"                   upload later with: wandb sync {Path(wandb_dir).parent}")
            if trainer.checkpoint_callbacks and self.subcommand == "fit":
                best = _best_checkpoint(trainer)
                last = next((c.last_model_path for c in trainer.checkpoint_callbacks
                             if getattr(c, "last_model_path", "")), "")
                if best:
                    lines.append(f"  best checkpoint: {best}")
                elif not last:
                    lines.append("  checkpoint     : none written (no validation ran, or checkpointing is off)")
                if last and last != best:
                    lines.append(f"  last checkpoint: {last}")
            from lightning_ws.predictions import PredictionsWriter

            for cb in trainer.callbacks:
                if isinstance(cb, PredictionsWriter) and cb.written is not None:
                    lines.append(f"  predictions    : {cb.written[0]} ({cb.rows} rows; tensors in "
                                 f"{cb.written[1].name})")
            if dry:
                lines.append("  fast_dev_run   : nothing written (no config, checkpoint or metrics file)")
            if metrics and not dry:
                metrics_file = run_dir / f"metrics-{self.subcommand}.json"
                try:
                    save_json(metrics_file, metrics)
                    lines.append(f"  metrics file   : {metrics_file}")
                except OSError as err:  # a read-only run folder must not hide the numbers
                    lines.append(f"  (could not write {metrics_file}: {err})")
            if metrics:
                width = max(len(k) for k in metrics)
                lines.append("  metrics:")
                for key in sorted(metrics):
                    lines.append(f"    {key:<{width}} = {metrics[key]:.4f}")
            lines.append("=" * 72)
            print("\n".join(lines), flush=True)

    return _WSLightningCLI, _WSSaveConfigCallback


def _best_checkpoint(trainer: Any) -> str:
    """The best checkpoint of the first monitoring ``ModelCheckpoint`` (``""`` when there is none)."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", ""):
            return cb.best_model_path
    return next((c.best_model_path for c in trainer.checkpoint_callbacks if getattr(c, "best_model_path", "")), "")


def __getattr__(name: str) -> Any:  # lazy public classes
    if name in ("WSLightningCLI", "WSSaveConfigCallback"):
        cli_cls, save_cls = _build_cli_classes()
        globals()["WSLightningCLI"], globals()["WSSaveConfigCallback"] = cli_cls, save_cls
        return globals()[name]
    raise AttributeError(name)


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
        parser_kwargs={"default_env": True, "exit_on_error": False} if run else {"default_env": True},
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
