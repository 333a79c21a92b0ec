"""The training CLI classes behind ``lightning-ws fit|validate|test|predict`` (see :mod:`lightning_ws.cli`).

:class:`WSLightningCLI` is Lightning's ``LightningCLI`` with ``--test_after_fit``, ``--allow_untrained``, checkpoint
checks, the default callbacks and an end-of-run summary; :class:`WSSaveConfigCallback` saves the resolved config in
the run's own folder and logs it once from rank zero. :mod:`lightning_ws.cli` imports this module only when a
training command runs, so ``import lightning_ws.cli`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WSLightningCLI", "WSSaveConfigCallback", "best_checkpoint"]


class WSSaveConfigCallback(SaveConfigCallback):
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

class WSLightningCLI(LightningCLI):
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
        if self.subcommand == "fit":
            from lightning_ws.resume import add_last_checkpoint
            from lightning_ws.wandb_training import DataReportCallback

            extra += add_last_checkpoint(config, given)
            extra += [] if any(isinstance(cb, DataReportCallback) for cb in given) else [DataReportCallback()]
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
            best = best_checkpoint(self.trainer)  # the monitored best, not LastCheckpoint's last.ckpt
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
            best = best_checkpoint(trainer)
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


def best_checkpoint(trainer: Any) -> str:
    """The best checkpoint of the first monitoring ``ModelCheckpoint`` (``""`` when there is none)."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", ""):
            return cb.best_model_path
    return next((c.best_model_path for c in trainer.checkpoint_callbacks if getattr(c, "best_model_path", "")), "")
