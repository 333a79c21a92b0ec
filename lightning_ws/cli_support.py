"""Helpers of the ``lightning-ws`` training commands that need no Lightning import at module level.

:func:`resolve_ckpt_path` turns ``--ckpt_path last`` into the named run's last checkpoint and points the logger at
that run (same folder, same W&B id); it also reuses the run of a checkpoint file that lies in a run folder, and refuses
``validate``/``test``/``predict`` without a checkpoint unless ``--allow_untrained true``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning_ws.errors import ConfigError

__all__ = ["resolve_ckpt_path"]

_WS_LOGGER = "lightning_ws.loggers.WSWandbLogger"


def _logger_args(cfg: Any) -> Any | None:
    """The ``init_args`` namespace of a WSWandbLogger (or subclass) in the trainer config, else ``None``."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    logger = trainer.get("logger") if trainer is not None else None
    if isinstance(logger, list):
        logger = logger[0] if len(logger) == 1 else None
    class_path = getattr(logger, "class_path", None) if logger is not None else None
    if not isinstance(class_path, str):
        return None
    if class_path != _WS_LOGGER:
        try:
            import importlib

            from lightning_ws.loggers import WSWandbLogger

            module, _, name = class_path.rpartition(".")
            if not issubclass(getattr(importlib.import_module(module), name), WSWandbLogger):
                return None
        except (ImportError, AttributeError, TypeError, ValueError):
            return None
    return logger.init_args


def _get(ns: Any, key: str, default: Any = None) -> Any:
    value = ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)
    return default if value is None else value


def resolve_ckpt_path(cfg: Any, subcommand: str) -> None:
    """Resolve ``ckpt_path`` in a subcommand's config in place (see the module docstring)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        if subcommand in ("validate", "test", "predict") and not cfg.get("allow_untrained"):
            raise ConfigError(
                f"`lightning-ws {subcommand}` needs --ckpt_path: a checkpoint file, or `last` for the last checkpoint of "
                f"the run named in the config's logger (trained with `lightning-ws fit` and the same config). Without "
                f"it the weights the config builds (untrained) would be evaluated; pass --allow_untrained true to do "
                f"that on purpose.")
        return
    args = _logger_args(cfg)
    if args is None:
        return
    pinned = args.get("id") if hasattr(args, "get") else getattr(args, "id", None)
    save_dir = Path(str(_get(args, "save_dir", "runs")))
    project = str(_get(args, "project", "lightning-ws"))
    name = args.get("name") if hasattr(args, "get") else getattr(args, "name", None)
    if str(ckpt) == "last":
        if pinned is not None:
            return  # Lightning looks in the pinned run's checkpoints folder
        from lightning_ws.resume import find_last_checkpoint

        found = find_last_checkpoint(save_dir, project, name)
        if found is None:
            if subcommand == "fit":
                print(f"lightning-ws fit: no checkpoint of a run named {name!r} under {save_dir / project} "
                      f"(looked for */checkpoints/last.ckpt with run.json); starting a new run.", file=sys.stderr)
                cfg["ckpt_path"] = None
                return
            raise ConfigError(f"--ckpt_path last: no checkpoint of a run named {name!r} under {save_dir / project} "
                              f"(looked for */checkpoints/last.ckpt). Train it first with `lightning-ws fit` and this "
                              f"config, or pass a checkpoint file.")
        run_id, last = found
        args["id"] = run_id
        cfg["ckpt_path"] = str(last)
        print(f"lightning-ws {subcommand}: using run {name!r} ({run_id}): {last}", file=sys.stderr)
        return
    path = Path(str(ckpt))
    run_dir = path.parent.parent
    if pinned is None and path.parent.name == "checkpoints" and (run_dir / "run.json").is_file():
        try:
            same_root = run_dir.parent.resolve() == (save_dir / project).resolve()
        except OSError:
            same_root = False
        if same_root:
            args["id"] = run_dir.name
