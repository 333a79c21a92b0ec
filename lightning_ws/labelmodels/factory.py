"""Build label models by name.

The names come from the registry that every :class:`~lightning_ws.labelmodels.base.LabelModel` subclass joins by
setting ``name`` (``LabelModel.__init_subclass__``); this module imports every model module so that the registry is
complete, and derives :data:`LABEL_MODEL_NAMES` from it instead of keeping a second list.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

# Imported for their side effect: each model class registers its name.
import lightning_ws.labelmodels.auto  # noqa: F401
import lightning_ws.labelmodels.dawid_skene  # noqa: F401
import lightning_ws.labelmodels.majority  # noqa: F401
import lightning_ws.labelmodels.metal_compat  # noqa: F401
import lightning_ws.labelmodels.moment_matching  # noqa: F401
import lightning_ws.labelmodels.triplet  # noqa: F401
from lightning_ws.errors import ConfigError
from lightning_ws.labelmodels.base import LabelModel, registry

__all__ = ["make_label_model", "LABEL_MODEL_NAMES", "ALIASES", "LabelModelName"]

#: Short names accepted by :func:`make_label_model` (and the CLI).
ALIASES = {"mv": "majority_vote", "wmv": "weighted_majority_vote", "ds": "dawid_skene", "mm": "moment_matching",
           "snorkel": "moment_matching", "metal": "moment_matching", "fs": "triplet", "flyingsquid": "triplet"}
#: Canonical names of every registered label model: alphabetical, ``auto`` (the default) last.
LABEL_MODEL_NAMES: tuple[str, ...] = tuple(sorted(registry(), key=lambda nm: (nm == "auto", nm)))

#: The names (canonical and aliases) a config may give, typed for LightningCLI / jsonargparse, which then checks the
#: choice when it parses the config. ``tests/test_labelmodels.py`` checks that it equals the registry plus
#: :data:`ALIASES` (a ``Literal`` must be spelled out for static type checkers).
LabelModelName = Literal["majority_vote", "weighted_majority_vote", "dawid_skene", "moment_matching", "triplet",
                         "metal_compat", "auto", "mv", "wmv", "ds", "mm", "snorkel", "metal", "fs", "flyingsquid"]


def _check_literal() -> None:
    declared, expected = set(get_args(LabelModelName)), set(LABEL_MODEL_NAMES) | set(ALIASES)
    if declared != expected:  # pragma: no cover - a developer added a model without listing it
        raise RuntimeError(f"LabelModelName is out of date: missing {sorted(expected - declared)}, "
                           f"extra {sorted(declared - expected)}.")


_check_literal()


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
        raise ConfigError(f"unknown label model {name!r}; choose one of {list(reg)} "
                          f"(aliases: {sorted(ALIASES)}).")
    try:
        return reg[key](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for label model {key!r}: {err}.") from None
