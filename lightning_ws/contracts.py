"""The written contracts between lightning_ws's data modules, modules and callbacks.

Lightning-free and dependency-free (only ``torch`` and ``typing``): every layer of the package may import it, and it
imports nothing of ours. What used to be string literals repeated across files and ``getattr(datamodule, ...)``
probes is named here once:

* **Batch keys.** A batch is a ``dict``; its keys are the constants below. A module reads ``batch[LABELS]``, a data
  module's collate writes ``{INPUT_IDS: ..., ATTENTION_MASK: ..., LABELS: ..., IDX: ...}``.
* **Step outputs.** A ``training_step`` that returns ``{LOSS: ..., PER_SAMPLE_LOSS: ...}`` lets sample-weighting
  callbacks (Grad-Mimic) read per-example losses; :class:`PerSampleLossModule` is that protocol.
* **Mixture data modules.** R&B reweights the domain mixture of any data module that satisfies
  :class:`SupportsMixture` (the text/feature mixture modules and the webdataset module).
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch

__all__ = [
    "X", "LABELS", "LABEL", "IDX", "WEIGHT", "DOMAIN", "INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "IMAGE",
    "TEXT", "UID", "IMAGE_IDX", "PROBLEM", "TARGET", "CORRECT", "AGREEMENT", "LOSS", "PER_SAMPLE_LOSS",
    "SupportsMixture", "PerSampleLossModule", "is_mixture_datamodule", "SupportsNumClasses", "SupportsZeroShot",
    "SupportsLabelMetric", "datamodule_of",
]

# ---------------------------------------------------------------------------------------------------- batch keys
X = "x"
"""Dense features / flattened images, ``(B, d)`` float."""
LABELS = "labels"
"""Training targets: ``(B,)`` int class ids or ``(B, k)`` soft labels."""
LABEL = "label"
"""Class id of an evaluation image (CLIP zero-shot batches)."""
IDX = "idx"
"""``(B,)`` int64 position of each example in its training set (sample-level callbacks key their records by it)."""
WEIGHT = "weight"
"""``(B,)`` float per-example loss weight (pseudolabel confidence, Grad-Mimic weights)."""
DOMAIN = "domain"
"""``(B,)`` int64 domain id in ``0..m-1`` (R&B)."""
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
IMAGE = "image"
"""``(B, 3, H, W)`` float image tensor."""
TEXT = "text"
"""Tokenised caption ``(B, L)`` int (CLIP)."""
UID = "uid"
"""List of DataComp sample uids (strings)."""
IMAGE_IDX = "image_idx"
"""Image id of a retrieval caption (several captions per image)."""
PROBLEM = "problem"
"""Weaver: ``(B,)`` problem id of each candidate."""
TARGET = "target"
"""Weaver distillation target score in [0, 1]."""
CORRECT = "correct"
"""Weaver: ``(B,)`` 0/1 gold correctness (evaluation only)."""
AGREEMENT = "agreement"
"""Weaver: answer-level agreement feature of each candidate."""

# ---------------------------------------------------------------------------------------------------- step outputs
LOSS = "loss"
PER_SAMPLE_LOSS = "per_sample_loss"


@runtime_checkable
class SupportsMixture(Protocol):
    """A data module whose training domain mixture can be read and set while training runs.

    ``set_mixture(p)`` must take effect at the next draw without rebuilding the DataLoader, and must validate ``p``
    (length ``num_domains``, non-negative, sums to 1). ``p_eval`` is the evaluation mixture R&B's update targets, or
    ``None`` when the data module does not know it (the callback then needs ``p_eval`` passed explicitly).
    """

    @property
    def num_domains(self) -> int: ...

    @property
    def domain_names(self) -> Sequence[str]: ...

    @property
    def domain_sizes(self) -> torch.Tensor: ...

    @property
    def p_eval(self) -> torch.Tensor | None: ...

    @property
    def mixture(self) -> torch.Tensor: ...

    def set_mixture(self, p: Sequence[float] | torch.Tensor) -> None: ...


@runtime_checkable
class PerSampleLossModule(Protocol):
    """A LightningModule whose ``training_step`` returns ``{LOSS: scalar, PER_SAMPLE_LOSS: (B,) detached}``."""

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Mapping[str, torch.Tensor]: ...


@runtime_checkable
class SupportsNumClasses(Protocol):
    """A data module that knows its number of classes (classifier modules check their head against it)."""

    @property
    def num_classes(self) -> int: ...


@runtime_checkable
class SupportsZeroShot(Protocol):
    """A data module with zero-shot / retrieval validation sets (CLIP): class names, prompt templates and one name
    per validation loader (``"zeroshot"`` or ``"retrieval"``)."""

    zeroshot_classnames: Sequence[str] | None
    zeroshot_templates: Sequence[str] | None
    val_names: Sequence[str]


@runtime_checkable
class SupportsLabelMetric(Protocol):
    """A data module that carries Loki's label metric (``(K, K)`` distances) and the observed classes (or ``None``)."""

    label_metric: Any
    observed_classes: Sequence[int] | None


def datamodule_of(module: Any) -> Any:
    """The data module attached to ``module``'s trainer, or ``None`` (no trainer attached, or no data module)."""
    if getattr(module, "_trainer", None) is None:
        return None
    return getattr(module.trainer, "datamodule", None)


def is_mixture_datamodule(dm: object) -> bool:
    """True when ``dm`` satisfies :class:`SupportsMixture` (all attributes present, ``set_mixture`` callable)."""
    return dm is not None and isinstance(dm, SupportsMixture)
