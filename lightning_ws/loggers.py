"""Weights & Biases logging that is offline unless the user asks for online.

:class:`WSWandbLogger` is Lightning's :class:`~lightning.pytorch.loggers.WandbLogger` with one change of default:
the W&B mode is resolved as ``mode`` argument > ``WANDB_MODE`` environment variable > ``"offline"``. So a run never
talks to the network unless the config says ``mode: online`` or the shell exports ``WANDB_MODE=online``. Unlike
``WandbLogger(offline=True)``, it does not rewrite ``os.environ["WANDB_MODE"]`` for the rest of the process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger

from lightning_ws.errors import ConfigError

__all__ = ["WSWandbLogger", "resolve_wandb_mode", "run_directory"]

_MODES = ("online", "offline", "disabled")
_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}


def resolve_wandb_mode(mode: str | None = None) -> str:
    """``mode`` if given, else ``$WANDB_MODE``, else ``"offline"``; validated against online/offline/disabled."""
    raw = mode if mode is not None else os.environ.get("WANDB_MODE") or "offline"
    resolved = _ALIASES.get(raw, raw)
    if resolved not in _MODES:
        source = "mode" if mode is not None else "WANDB_MODE"
        raise ConfigError(f"{source}={raw!r} is not a W&B mode; use one of {', '.join(_MODES)}.")
    return resolved


class WSWandbLogger(WandbLogger):
    """W&B logger, offline by default, that respects ``WANDB_MODE`` and a config switch to go online.

    Args:
        project: W&B project.
        name: run display name.
        save_dir: folder under which W&B writes ``wandb/<run>`` and Lightning writes ``<project>/<id>/checkpoints``.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; ``None`` = ``$WANDB_MODE`` or ``"offline"``.
        id: run id, to resume a run (W&B ``resume="allow"``).
        entity: W&B entity (team/user) for online runs.
        group: W&B group.
        tags: W&B tags.
        job_type: W&B job type.
        log_model: upload checkpoints as W&B artifacts (online runs only).
        notes: free text shown in the W&B UI.
    """

    def __init__(
        self,
        project: str = "lightning-ws",
        name: str | None = None,
        save_dir: str = "runs",
        mode: Literal["offline", "online", "disabled"] | None = None,
        id: str | None = None,  # noqa: A002 - W&B's name
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        log_model: bool | Literal["all"] = False,
        notes: str | None = None,
    ) -> None:
        resolved = resolve_wandb_mode(mode)
        if log_model and resolved != "online":
            raise ConfigError(f"log_model={log_model!r} uploads checkpoints, which needs mode 'online' (the run is "
                              f"{resolved!r}); set mode: online or log_model: false.")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {"mode": resolved}
        for key, value in (("entity", entity), ("group", group), ("tags", tags), ("job_type", job_type),
                           ("notes", notes)):
            if value is not None:
                extra[key] = value
        super().__init__(name=name, save_dir=save_dir, id=id, project=project, log_model=log_model, **extra)
        self.mode = resolved

    @property
    def run_dir(self) -> Path:
        """This run's folder for lightning_ws outputs: ``<save_dir>/<project>/<run id>`` (checkpoints live below)."""
        return run_directory(self)


def run_directory(logger: Any, default_root_dir: str | os.PathLike = ".") -> Path:
    """The per-run output folder a logger implies (``<save_dir>/<name>/<version>``), as ``ModelCheckpoint`` uses."""
    from lightning.pytorch.loggers.logger import DummyLogger

    if logger is None or isinstance(logger, DummyLogger):  # fast_dev_run swaps loggers for a DummyLogger
        return Path(default_root_dir)
    save_dir = logger.save_dir if isinstance(getattr(logger, "save_dir", None), (str, os.PathLike)) else None
    save_dir = save_dir if save_dir is not None else default_root_dir
    name, version = logger.name, logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / str(name) / version if isinstance(name, str) and name else Path(save_dir) / version
