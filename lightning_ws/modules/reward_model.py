"""A pairwise reward model distilled from program-judge labels (PAJAMA, arXiv 2506.10403, spec §10).

Encoder (any local Hugging Face folder; default the shipped all-MiniLM-L6-v2) -> pooled vector -> dropout -> linear
scalar head = reward ``r(query, response)``. Trained with the Bradley-Terry loss on soft targets P(B preferred)
(:func:`lightning_ws.pajama.distill.bradley_terry_loss`); evaluated by pairwise accuracy against gold labels.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import Metric

from lightning_ws.contracts import IDX, LABELS, LOSS, TARGET, WEIGHT
from lightning_ws.datamodules.preferences import ATTENTION_MASK_A, ATTENTION_MASK_B, INPUT_IDS_A, INPUT_IDS_B
from lightning_ws.errors import ConfigError
from lightning_ws.modules.text_classifier import load_encoder
from lightning_ws.optim import adamw_with_head, check_optim_args, warmup_schedule
from lightning_ws.pajama.distill import bradley_terry_loss, pairwise_accuracy
from lightning_ws.sentence_embeddings import mean_pool

__all__ = ["PairwiseAccuracy", "RewardModel"]

_MAX_TEST_SETS = 8


class PairwiseAccuracy(Metric):
    """Share of pairs whose higher reward is the gold-preferred response (ties 0.5; rows with label -1 ignored).
    Sum states, so DDP ranks agree."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("credit", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor) -> None:
        keep = y >= 0
        self.credit += pairwise_accuracy(r_a[keep], r_b[keep], y[keep]).sum().double()
        self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return (self.credit / self.total.clamp_min(1)).float()


class RewardModel(pl.LightningModule):
    """Bradley-Terry reward model (see the module docstring).

    Batches: :class:`~lightning_ws.datamodules.preferences.PreferenceDataModule`'s (``input_ids_a``/``_b``,
    ``attention_mask_a``/``_b``, ``target``, ``weight``, ``labels``, ``idx``). Logs ``train/loss``, ``val/loss``,
    ``val/pair_acc`` and ``test/pair_acc_<set name>`` per test loader. ``predict_step`` returns ``score_a``,
    ``score_b``, ``probs`` ``(B, 2)`` = [P(A), P(B)] = softmax of the two rewards, ``pred`` and ``idx``
    (:mod:`lightning_ws.predictions` writes them).

    Defaults: the reference trains Qwen2.5-3B-Instruct with lr 2e-5, weight decay 0.001, cosine schedule with 3%
    warm-up, one epoch (spec §10); those are the defaults here except the backbone (the shipped MiniLM, pass a local
    folder for another one; mean pooling for sentence encoders, ``pooling="last"`` for decoder models).

    Args:
        model_name_or_path: local Hugging Face folder; ``None`` = the shipped all-MiniLM-L6-v2.
        pretrained: load pretrained weights (``False``: random init from the folder's config; tests).
        config_overrides: config changes (only with ``pretrained=False``).
        pooling: ``"mean"`` (default), ``"cls"`` or ``"last"`` (last non-padding token).
        dropout: before the head (0.1).
        lr, head_lr, weight_decay, warmup_ratio: AdamW with cosine decay after linear warm-up.
        eps: AdamW's epsilon (default 1e-8). The loss sees only ``r_B - r_A``, so the head's bias (and, without
            dropout, the encoder's last LayerNorm bias) get a zero gradient up to rounding; AdamW divides that
            rounding by ``sqrt(v) + eps``, and a small ``eps`` turns it into steps of about ``lr`` (harmless for
            the rewards' differences; a larger ``eps`` keeps those parameters still).
        schedule_steps: schedule length in optimizer steps (default the fit's estimate).
    """

    def __init__(self, model_name_or_path: str | None = None, pretrained: bool = True,
                 config_overrides: dict[str, Any] | None = None, pooling: Literal["mean", "cls", "last"] = "mean",
                 dropout: float = 0.1, lr: float = 2e-5, head_lr: float | None = None, weight_decay: float = 0.001,
                 warmup_ratio: float = 0.03, schedule_steps: int | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "last"):
            raise ConfigError(f"pooling must be 'mean', 'cls' or 'last', got {pooling!r}.")
        check_optim_args(lr=lr, head_lr=head_lr, warmup_ratio=warmup_ratio, dropout=dropout)
        if schedule_steps is not None and int(schedule_steps) < 1:
            raise ConfigError(f"schedule_steps must be >= 1 or None, got {schedule_steps}.")
        if not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ConfigError(f"eps must be in (0, 1), got {eps!r}.")
        self.save_hyperparameters()
        self.encoder = load_encoder(model_name_or_path, pretrained=pretrained, config_overrides=config_overrides)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(self.encoder.config.hidden_size), 1)
        self.val_acc = PairwiseAccuracy()
        self.test_acc = nn.ModuleList([PairwiseAccuracy() for _ in range(_MAX_TEST_SETS)])
        self.train()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards ``(B,)`` float32."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.hparams.pooling == "mean":
            v = mean_pool(h, attention_mask)
        elif self.hparams.pooling == "cls":
            v = h[:, 0]
        else:
            last = attention_mask.sum(1).clamp_min(1) - 1
            v = h[torch.arange(h.shape[0], device=h.device), last]
        return self.head(self.dropout(v)).squeeze(-1).float()

    def rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r_A, r_B)`` of a pair batch, in one encoder pass."""
        ia, ib = batch[INPUT_IDS_A], batch[INPUT_IDS_B]
        T = max(ia.shape[1], ib.shape[1])

        def pad(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.pad(x, (0, T - x.shape[1]))

        ids = torch.cat([pad(ia), pad(ib)])
        mask = torch.cat([pad(batch[ATTENTION_MASK_A]), pad(batch[ATTENTION_MASK_B])])
        r = self(ids, mask)
        return r[: ia.shape[0]], r[ia.shape[0]:]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        r_a, r_b = self.rewards(batch)
        loss = bradley_terry_loss(r_a, r_b, batch[TARGET], batch.get(WEIGHT))
        self.log("train/loss", loss, prog_bar=True, batch_size=r_a.shape[0])
        return {LOSS: loss}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        r_a, r_b = self.rewards(batch)
        y = batch[LABELS]
        self.log("val/loss", bradley_terry_loss(r_a, r_b, y.clamp_min(0).float()), batch_size=r_a.shape[0])
        self.val_acc.update(r_a, r_b, y)
        self.log("val/pair_acc", self.val_acc, prog_bar=True, batch_size=r_a.shape[0])

    def _test_name(self, k: int) -> str:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "test_names", None) or []
        return names[k] if k < len(names) else str(k)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx >= _MAX_TEST_SETS:
            raise ConfigError(f"RewardModel tracks at most {_MAX_TEST_SETS} test sets.")
        r_a, r_b = self.rewards(batch)
        m = self.test_acc[dataloader_idx]
        m.update(r_a, r_b, batch[LABELS])
        self.log(f"test/pair_acc_{self._test_name(dataloader_idx)}", m, batch_size=r_a.shape[0],
                 add_dataloader_idx=False)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
                     ) -> dict[str, torch.Tensor]:
        r_a, r_b = self.rewards(batch)
        probs = torch.softmax(torch.stack([r_a, r_b], 1), 1)
        return {"score_a": r_a, "score_b": r_b, "probs": probs, "pred": probs.argmax(1), IDX: batch[IDX]}

    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = adamw_with_head(self, head_prefix="head.", lr=h.lr, head_lr=h.head_lr, weight_decay=h.weight_decay,
                              eps=h.eps)
        total = h.schedule_steps or max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(total, h.warmup_ratio, "cosine"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
