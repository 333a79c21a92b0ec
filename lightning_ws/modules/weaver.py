"""Weaver cross-encoder: distil Weaver's per-candidate scores into a small (instruction, response) scorer.

Saad-Falcon et al., "Weaver: Shrinking the Generation-Verification Gap ...", arXiv 2506.18203 (§ distillation). The
Lightning-free pieces (ranking losses, selection, problem splits) live in :mod:`lightning_ws.weaver.distill`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanSquaredError

from lightning_ws.contracts import AGREEMENT, ATTENTION_MASK, CORRECT, IDX, INPUT_IDS, PROBLEM, TARGET, TOKEN_TYPE_IDS
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.metrics.weaver import FlatSelectionAccuracy
from lightning_ws.modules.text_classifier import load_encoder
from lightning_ws.optim import adamw_with_head, check_optim_args, warmup_schedule
from lightning_ws.weaver.distill import RANKING_LOSSES, ranking_loss_terms, select_from_scores

__all__ = ["SCORE", "WeaverCrossEncoder", "select_from_scores"]

SCORE = "score"
"""Key of the predicted score in :meth:`WeaverCrossEncoder.predict_step` outputs (a step output, not a batch key)."""


class WeaverCrossEncoder(pl.LightningModule):
    """Cross-encoder distilled from Weaver scores (Saad-Falcon et al., arXiv 2506.18203, spec §9).

    ``encoder([CLS] instruction [SEP] response [SEP]) -> CLS vector -> MLP (hidden -> 512 -> 256 -> 1, GELU, dropout)
    -> logit z``; the score is ``sigmoid(z)`` (``output="sigmoid"``, default) or ``z`` (``output="identity"``, the
    reference's linear head). Loss: ``MSE(score, weaver_score) + ranking_weight * ranking(z)``, where the optional
    ranking term compares candidates *of the same problem* in a batch: ``"pairwise"`` (logistic loss on every pair
    whose teacher scores differ) or ``"listwise"`` (KL between within-problem softmaxes of teacher scores / 0.1 and
    logits); see :mod:`lightning_ws.weaver.distill`. The paper trains with MSE only (``ranking_weight=0``, default).

    Optimiser: AdamW (no decay on biases/norms), linear warm-up for ``warmup_ratio`` of the optimizer steps then
    cosine decay to 0 (the reference has no schedule). bf16: pass ``precision="bf16-mixed"`` to the Trainer on a GPU
    (the paper trains in bf16); the module itself is precision-agnostic and computes its losses in float32.

    Logs ``train/loss`` (and ``train/mse``, ``train/rank`` when ranking is on), ``val/mse``, ``val/select_acc``,
    ``test/mse``, ``test/select_acc``. Selection accuracy: per problem, the candidate with the highest score is
    selected; correct if that candidate is correct. ``predict_step`` returns ``{"score", "problem", "idx"}``; pass the
    concatenated outputs to :func:`select_from_scores`.

    Defaults the paper leaves open or we change: lr 2e-5 (reference default), warm-up ratio 0.1, cosine decay,
    dropout 0.1 in the head, sigmoid output (the teacher's scores are probabilities in [0, 1]), CLS pooling as in
    the reference. The paper's student is ``answerdotai/ModernBERT-large`` (~395M parameters): pass its local folder
    as ``model_name_or_path``; the default is the shipped all-MiniLM-L6-v2 (22M).

    Args:
        model_name_or_path: local Hugging Face encoder folder; ``None`` = the shipped all-MiniLM-L6-v2.
        pretrained: load pretrained weights (``False`` builds a random encoder from the folder's config).
        config_overrides: encoder config changes (only with ``pretrained=False``; tests use a 1-layer encoder).
        head_dims: hidden sizes of the MLP head (default ``(512, 256)`` as in the reference).
        dropout: dropout in the head (default 0.1).
        output: ``"sigmoid"`` (default) or ``"identity"``.
        ranking_loss: ``"pairwise"`` (default) or ``"listwise"``; used when ``ranking_weight > 0``.
        ranking_weight: weight of the ranking term (default 0 = MSE only, as the paper).
        lr: peak learning rate of the encoder (default 2e-5).
        head_lr: learning rate of the head (default: ``lr``).
        weight_decay: AdamW weight decay (default 0.01).
        warmup_ratio: fraction of optimizer steps of linear warm-up (default 0.1).
        schedule_steps: length of the warm-up + cosine schedule in optimizer steps (default ``None`` = the fit's
            ``trainer.estimated_stepping_batches``). Fix it when a run is stopped early with ``max_steps`` and later
            resumed with a larger ``max_steps``, so both legs follow the same schedule.
        use_agreement: append the candidate's answer agreement (share of its problem's candidates with the same
            extracted answer; computable at inference from the candidates alone, no verifier needed) to the CLS
            vector before the head (default True). A pointwise student without it cannot see the cross-candidate
            signal that dominates an answer-level teacher (issue 17; numbers in docs/weaver.md). False = the
            paper's head on CLS alone.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        pretrained: bool = True,
        config_overrides: dict[str, Any] | None = None,
        head_dims: Sequence[int] = (512, 256),
        dropout: float = 0.1,
        output: Literal["sigmoid", "identity"] = "sigmoid",
        ranking_loss: Literal["pairwise", "listwise"] = "pairwise",
        ranking_weight: float = 0.0,
        lr: float = 2e-5,
        head_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        schedule_steps: int | None = None,
        use_agreement: bool = True,
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "identity"):
            raise ConfigError(f"output must be 'sigmoid' or 'identity', got {output!r}.")
        if ranking_loss not in RANKING_LOSSES:
            raise ConfigError(f"ranking_loss must be one of {RANKING_LOSSES}, got {ranking_loss!r}.")
        if ranking_weight < 0:
            raise ConfigError(f"ranking_weight must be >= 0, got {ranking_weight}.")
        check_optim_args(lr=lr, head_lr=head_lr, warmup_ratio=warmup_ratio, dropout=dropout)
        if schedule_steps is not None and int(schedule_steps) < 1:
            raise ConfigError(f"schedule_steps must be >= 1 or None, got {schedule_steps}.")
        dims = [int(d) for d in head_dims]
        if any(d < 1 for d in dims):
            raise ConfigError(f"head_dims must be positive sizes, got {list(head_dims)}.")
        self.save_hyperparameters()
        self.encoder = load_encoder(model_name_or_path, pretrained=pretrained, config_overrides=config_overrides)
        layers: list[nn.Module] = []
        width = int(self.encoder.config.hidden_size) + (1 if use_agreement else 0)
        for d in dims:
            layers += [nn.Linear(width, d), nn.GELU(), nn.Dropout(dropout)]
            width = d
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)
        self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError()
        self.val_select, self.test_select = FlatSelectionAccuracy(), FlatSelectionAccuracy()
        self.train()  # transformers returns eval-mode models; Lightning keeps module modes as they are

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, agreement: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``z`` ``(B,)`` (float32) of the (instruction, response) pairs; with ``use_agreement`` the
        ``(B,)`` answer agreement (fraction of the problem's candidates sharing the candidate's final answer) is
        appended to the CLS vector."""
        kwargs = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if token_type_ids is not None:
            kwargs[TOKEN_TYPE_IDS] = token_type_ids
        cls = self.encoder(**kwargs).last_hidden_state[:, 0]
        if self.hparams.use_agreement:
            if agreement is None:
                raise DataError("this WeaverCrossEncoder was built with use_agreement=True: pass the (B,) answer "
                                "agreement of each candidate (WeaverDistillDataModule batches carry it as "
                                "'agreement'), or build the model with use_agreement=False.")
            cls = torch.cat([cls, agreement.to(cls.dtype).reshape(-1, 1)], dim=1)
        return self.head(cls).squeeze(-1).float()

    def score_from_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The predicted Weaver score: ``sigmoid(z)`` or ``z``."""
        return torch.sigmoid(z) if self.hparams.output == "sigmoid" else z

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch[INPUT_IDS], batch[ATTENTION_MASK], batch.get(TOKEN_TYPE_IDS), batch.get(AGREEMENT))

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """MSE to the Weaver scores plus the optional within-problem ranking loss."""
        z = self._logits(batch)
        target = batch[TARGET].float()
        mse = torch.mean((self.score_from_logits(z) - target) ** 2)
        loss = mse
        B = z.shape[0]
        if self.hparams.ranking_weight > 0:
            total, count = ranking_loss_terms(self.hparams.ranking_loss, z, target, batch[PROBLEM])
            world = self.trainer.world_size if self._trainer is not None else 1
            if world > 1:
                # The number of pairs differs per rank: divide by the mean count over ranks, so that the gradients DDP
                # averages are those of the mean over every rank's pairs (= one process with the whole batch).
                rank = total / (self.all_gather(count).sum().to(z.dtype) / world).clamp_min(1.0 / world)
            else:
                rank = total / count.clamp_min(1).to(z.dtype)
            loss = mse + self.hparams.ranking_weight * rank
            self.log("train/mse", mse, batch_size=B)
            self.log("train/rank", rank, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        return loss

    def _eval(self, batch: dict[str, torch.Tensor], mse: MeanSquaredError, select: FlatSelectionAccuracy,
              prefix: str) -> None:
        s = self.score_from_logits(self._logits(batch))
        mse.update(s, batch[TARGET].float())
        select.update(batch[PROBLEM], s, batch[CORRECT])
        self.log(f"{prefix}/mse", mse, batch_size=s.shape[0])
        self.log(f"{prefix}/select_acc", select, prog_bar=True, batch_size=s.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Update ``val/mse`` and ``val/select_acc``."""
        self._eval(batch, self.val_mse, self.val_select, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Update ``test/mse`` and ``test/select_acc``."""
        self._eval(batch, self.test_mse, self.test_select, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``{"score": (B,), "problem": (B,), "idx": (B,)}``; select with :func:`select_from_scores`."""
        s = self.score_from_logits(self._logits(batch))
        return {SCORE: s, PROBLEM: batch[PROBLEM], IDX: batch[IDX]}

    @staticmethod
    def select(outputs: Sequence[dict[str, torch.Tensor]]) -> dict[int, int]:
        """From concatenated ``predict`` outputs: ``{problem id: selected candidate idx}``."""
        p = torch.cat([o[PROBLEM] for o in outputs])
        s = torch.cat([o[SCORE] for o in outputs])
        idx = torch.cat([o[IDX] for o in outputs])
        probs, pos = select_from_scores(p, s)
        return {int(a): int(idx[b]) for a, b in zip(probs, pos)}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """AdamW (no decay on biases/norms) with linear warm-up then cosine decay, stepped per optimizer step."""
        hp = self.hparams
        optimizer = adamw_with_head(self, head_prefix="head.", lr=hp.lr, head_lr=hp.head_lr,
                                    weight_decay=hp.weight_decay)
        if hp.schedule_steps is not None:
            total = int(hp.schedule_steps)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        schedule = warmup_schedule(total, hp.warmup_ratio, decay="cosine")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
