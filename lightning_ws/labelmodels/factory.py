"""Build label models by name."""

from __future__ import annotations

from typing import Any

from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import LabelModel, registry

__all__ = ["make_label_model", "LABEL_MODEL_NAMES", "ALIASES"]

#: Short names accepted by :func:`make_label_model` (and the CLI).
ALIASES = {"mv": "majority_vote", "wmv": "weighted_majority_vote", "ds": "dawid_skene", "mm": "moment_matching",
           "snorkel": "moment_matching", "metal": "moment_matching", "fs": "triplet", "flyingsquid": "triplet"}
#: Canonical names, in reporting order.
LABEL_MODEL_NAMES = ("majority_vote", "weighted_majority_vote", "dawid_skene", "moment_matching", "triplet", "auto")


def make_label_model(name: str, **kwargs: Any) -> LabelModel:
    """Instantiate a label model by name.

    Args:
        name: one of :data:`LABEL_MODEL_NAMES` or an alias in :data:`ALIASES` (``mv``, ``wmv``, ``ds``, ``mm``,
            ``triplet``...), case-insensitive. ``"auto"`` (:class:`~lightning_ws.labelmodels.AutoLabelModel`) is
            the label-free safeguard: it keeps majority vote unless another model wins a label-free held-out test.
        **kwargs: constructor arguments of that model (``num_classes``, ``seed``, ...).

    Raises:
        ConfigError: unknown name or a constructor argument the model does not take.
    """
    key = str(name).lower().replace("-", "_")
    key = ALIASES.get(key, key)
    reg = registry()
    if key not in reg:
        raise ConfigError(f"unknown label model {name!r}; choose one of {list(LABEL_MODEL_NAMES)} "
                          f"(aliases: {sorted(ALIASES)}).")
    try:
        return reg[key](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for label model {key!r}: {err}.") from None
