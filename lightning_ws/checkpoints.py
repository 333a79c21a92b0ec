"""Checkpoint checks with errors a user can act on, and the model-class stamp ``lightning-ws`` puts in checkpoints.

:func:`check_checkpoint` runs before a ``fit``/``validate``/``test``/``predict`` uses ``--ckpt_path`` and before
``lightning-ws export`` reads one: a missing, truncated or non-Lightning file, a checkpoint of another model class,
and tensors whose shapes do not fit the configured model (another ``input_dim`` or ``num_classes``) each end in one
paragraph that names the file, the problem and the fix, instead of a traceback from deep inside ``torch.load`` or
``load_state_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError

__all__ = ["CheckpointInfoCallback", "check_checkpoint", "check_class", "load_checkpoint", "class_path"]

#: Lightning's special ``ckpt_path`` values (resolved by Lightning, not files).
SPECIAL = ("last", "best", "hpc", "registry")


def class_path(obj: Any) -> str:
    """``module.QualName`` of an object's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class CheckpointInfoCallback(pl.Callback):
    """Stamp checkpoints with the classes that wrote them (``checkpoint["lightning_ws"]``).

    ``{"model_class": ..., "datamodule_class": ...}``: :func:`check_checkpoint` uses it to say "this checkpoint is a
    ``GradMimicClassifier``, the config builds a ``TextClassifier``", and ``lightning-ws export`` to rebuild the model
    without a config.
    """

    @property
    def state_key(self) -> str:  # noqa: D102
        return "CheckpointInfoCallback"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # noqa: D102
        info = {"model_class": class_path(pl_module)}
        if trainer.datamodule is not None:
            info["datamodule_class"] = class_path(trainer.datamodule)
        checkpoint["lightning_ws"] = info


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint on the CPU, with errors that name the file."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise DataFileNotFoundError(f"--ckpt_path {path} is a folder; pass a .ckpt file inside it (e.g. "
                                    f"{path / 'checkpoints' / 'last.ckpt'}) or `last`.")
    if not path.is_file():
        raise DataFileNotFoundError(
            f"checkpoint not found: {path} (current directory: {Path.cwd()}). Pass an existing .ckpt file, or "
            f"`--ckpt_path last` for the last checkpoint of the run named in the config's logger.")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise DataError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})."
                        f" The file is truncated or not a Lightning .ckpt (a run killed while writing it leaves "
                        f"this): use another checkpoint of the run, e.g. the previous best-*.ckpt.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by a Trainer "
                        f"(weights-only safetensors exports cannot be resumed from).")
    return ckpt


def check_class(path: str | os.PathLike, ckpt: dict[str, Any], configured: str | None) -> None:
    """Raise when the checkpoint's stamped model class differs from the configured ``class_path``."""
    stamp = (ckpt.get("lightning_ws") or {}).get("model_class")
    if stamp is None or configured is None or stamp == configured:
        return
    try:  # the config may name a re-export (lightning_ws.modules.TextClassifier) of the stamped class
        import importlib

        module, _, name = configured.rpartition(".")
        if class_path(getattr(importlib.import_module(module), name)) == stamp:
            return
    except (ImportError, AttributeError, ValueError):
        pass
    raise ConfigError(f"{path} holds a {stamp.rsplit('.', 1)[-1]} ({stamp}) but the config builds a "
                      f"{configured.rsplit('.', 1)[-1]}. Use the config the checkpoint was trained with (its run "
                      f"folder holds config.yaml) or a checkpoint of this model.")


def check_checkpoint(path: str | os.PathLike, model: pl.LightningModule | None = None) -> dict[str, Any]:
    """Load ``path`` and check that it fits ``model``; return the checkpoint. Raises with a one-paragraph message."""
    ckpt = load_checkpoint(path)
    if model is None:
        return ckpt
    stamp = (ckpt.get("lightning_ws") or {}).get("model_class")
    check_class(path, ckpt, class_path(model))
    saved = ckpt["state_dict"]
    current = model.state_dict()
    shared = [k for k in saved if k in current]
    if current and saved and not shared and stamp is None:
        raise ConfigError(f"{path} does not hold weights of a {type(model).__name__}: none of its "
                          f"{len(saved)} tensors (e.g. {sorted(saved)[:3]}) is a parameter of the model. Use the config "
                          f"the checkpoint was trained with (its run folder holds config.yaml).")
    bad = [(k, tuple(saved[k].shape), tuple(current[k].shape)) for k in shared
           if hasattr(saved[k], "shape") and hasattr(current[k], "shape") and saved[k].shape != current[k].shape]
    if bad:
        k, got, want = bad[0]
        hp = ckpt.get("hyper_parameters") or {}
        sizes = {key: hp[key] for key in ("input_dim", "in_features", "num_classes", "num_labels", "hidden_dims",
                                          "hidden_dim") if key in hp}
        hint = f" The checkpoint was trained with {sizes}." if sizes else ""
        raise ConfigError(f"{path} does not fit the configured {type(model).__name__}: {k} is {got} in the "
                          f"checkpoint but {want} in the model ({len(bad)} tensor(s) differ).{hint} Set the model's "
                          f"sizes (input dimension, number of classes) to the checkpoint's, or use its config.yaml.")
    return ckpt
