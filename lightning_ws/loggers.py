"""Weights & Biases logging that is offline unless the user asks for online.

:class:`WSWandbLogger` is Lightning's :class:`~lightning.pytorch.loggers.WandbLogger` with one change of default:
the W&B mode is resolved as ``mode`` argument > ``WANDB_MODE`` environment variable > ``"offline"``. So a run never
talks to the network unless the config says ``mode: online`` or the shell exports ``WANDB_MODE=online``. Unlike
``WandbLogger(offline=True)``, it does not rewrite ``os.environ["WANDB_MODE"]`` for the rest of the process.

A run is a folder and a W&B run with the same id: ``<save_dir>/<project>/<id>`` (checkpoints, config, metrics,
predictions, ``run.json``). Without an ``id`` the logger draws one up front, so the folder is known before W&B starts;
``lightning-ws fit ... --ckpt_path last`` looks the named run's id up (:func:`lightning_ws.resume.find_last_checkpoint`)
and continues in the same folder and the same W&B run. Standard ``WandbLogger``/``wandb.init`` options (``resume``,
``config``, ``save_code``, ``settings``...) pass through (``init_kwargs`` from YAML, keyword arguments from Python). A run
that fails is closed with a non-zero exit code, so W&B shows it as failed, not finished.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger

from lightning_ws.errors import ConfigError

__all__ = ["WSWandbLogger", "resolve_wandb_mode", "run_directory", "write_run_info", "new_run_id"]

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


def new_run_id() -> str:
    """A fresh 8-character run id (lower-case letters and digits, as W&B's own)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WSWandbLogger(WandbLogger):
    """W&B logger, offline by default, that respects ``WANDB_MODE`` and a config switch to go online.

    Args:
        project: W&B project.
        name: run display name.
        save_dir: folder under which W&B writes ``wandb/<run>`` and Lightning writes ``<project>/<id>/checkpoints``.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; ``None`` = ``$WANDB_MODE`` or ``"offline"``.
        id: run id, to continue a run (W&B ``resume="allow"``); ``None`` = a new id (``--ckpt_path last`` fills in the
            named run's id).
        entity: W&B entity (team/user) for online runs.
        group: W&B group.
        tags: W&B tags.
        job_type: W&B job type.
        log_model: upload checkpoints as W&B artifacts (online runs only).
        notes: free text shown in the W&B UI.
        resume: W&B's ``resume`` (``"allow"`` default, ``"must"``, ``"never"``, ``"auto"``).
        config: extra values for the W&B run config.
        save_code: let W&B save the main script.
        prefix: a prefix for every metric key (Lightning's ``WandbLogger`` option).
        checkpoint_name: artifact name of logged checkpoints (with ``log_model``).
        init_kwargs: any other ``wandb.init`` keyword (``settings``, ``dir``, ``reinit``...), e.g. from YAML.
        **kwargs: the same as ``init_kwargs``, from Python.
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
        resume: bool | Literal["allow", "must", "never", "auto"] | None = None,
        config: dict[str, Any] | None = None,
        save_code: bool | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        passthrough = {**(init_kwargs or {}), **kwargs}
        if "offline" in passthrough or "mode" in passthrough:
            raise ConfigError("set the W&B mode with mode: offline | online | disabled, not offline=/init_kwargs.mode.")
        for key in ("name", "project", "id", "save_dir", "version"):
            if key in passthrough:
                raise ConfigError(f"init_kwargs.{key}: pass {key} as the logger's own argument.")
        resolved = resolve_wandb_mode(mode)
        if log_model and resolved != "online":
            raise ConfigError(f"log_model={log_model!r} uploads checkpoints, which needs mode 'online' (the run is "
                              f"{resolved!r}); set mode: online or log_model: false.")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {"mode": resolved, **passthrough}
        for key, value in (("entity", entity), ("group", group), ("tags", tags), ("job_type", job_type),
                           ("notes", notes), ("resume", resume), ("config", config), ("save_code", save_code)):
            if value is not None:
                extra[key] = value
        if id is not None and (not isinstance(id, str) or not id or "/" in id or id.startswith(".")):
            raise ConfigError(f"id={id!r} is not a usable run id (it names the run folder); use letters and digits.")
        self._generated_id = id is None
        id = id if id is not None else new_run_id()
        super().__init__(name=name, save_dir=save_dir, id=id, project=project, log_model=log_model, prefix=prefix,
                         checkpoint_name=checkpoint_name, **extra)
        self.mode = resolved

    @property
    def version(self) -> str | None:
        """The run id: the folder name under ``<save_dir>/<project>`` and the W&B run id."""
        return self._id if self._id is not None else super().version

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Record ``run.json`` next to the first checkpoint (so ``--ckpt_path last`` can find this run)."""
        write_run_info(self)
        super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str) -> None:
        """On failure close the W&B run with exit code 1 (W&B shows it failed); otherwise Lightning's behaviour."""
        if status == "failed" and self._experiment is not None and hasattr(self._experiment, "finish"):
            try:
                self._experiment.finish(exit_code=1)
            finally:
                self._experiment = None
            return
        super().finalize(status)

    @property
    def run_dir(self) -> Path:
        """This run's folder for lightning_ws outputs: ``<save_dir>/<project>/<run id>`` (checkpoints live below)."""
        return run_directory(self)


def write_run_info(logger: Any, default_root_dir: str | os.PathLike = ".", **extra: Any) -> Path | None:
    """Write ``<run dir>/run.json`` (name, id, project, mode, creation time) once; return its path (None: no logger).

    The file is how ``--ckpt_path last`` finds the newest run of a name. An existing file is kept as it is.
    """
    from lightning.pytorch.loggers.logger import DummyLogger

    if logger is None or isinstance(logger, DummyLogger) or not isinstance(logger, WandbLogger):
        return None
    from lightning_ws.io import atomic_write_text

    target = run_directory(logger, default_root_dir) / "run.json"
    if target.exists():
        return target
    info = {"name": getattr(logger, "_name", None), "id": logger.version, "project": logger.name,
            "mode": getattr(logger, "mode", None), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_text(target, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return target


def run_directory(logger: Any, default_root_dir: str | os.PathLike = ".") -> Path:
    """The per-run output folder a logger implies (``<save_dir>/<name>/<version>``), as ``ModelCheckpoint`` uses.

    Without a logger (``logger: false``, ``fast_dev_run``): ``default_root_dir``, or ``runs/no-logger`` when that is
    the working folder (``lightning-ws`` points ``default_root_dir`` there, so checkpoints land there too).
    """
    from lightning.pytorch.loggers.logger import DummyLogger

    if logger is None or isinstance(logger, DummyLogger):  # logger: false, or fast_dev_run's DummyLogger
        root = Path(default_root_dir)
        if root.resolve() == Path.cwd().resolve():  # Lightning's default: never litter the bare working folder
            return root / "runs" / "no-logger"
        return root
    save_dir = logger.save_dir if isinstance(getattr(logger, "save_dir", None), (str, os.PathLike)) else None
    save_dir = save_dir if save_dir is not None else default_root_dir
    name, version = logger.name, logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / str(name) / version if isinstance(name, str) and name else Path(save_dir) / version
