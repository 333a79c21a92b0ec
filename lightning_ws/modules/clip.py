"""LightningModules for CLIP training and for the DataComp filter-signal pass.

:class:`CLIPModule` trains an ``open_clip`` model (Radford et al., arXiv 2103.00020) built offline from a config dict
or an open_clip name plus local weights, with:

* the symmetric contrastive loss on features **gathered from every DDP rank** with gradients (so the loss and the
  gradient equal one process on the global batch; ``local_loss=True`` scores only local rows, same gradient, less
  memory), see :func:`lightning_ws.datacomp.clip.clip_contrastive_loss`;
* the learnable temperature (``logit_scale``, clamped to ``log(max_logit_scale)`` after each step as in CLIP);
* AdamW (no weight decay on gains, biases, embeddings and the temperature) with linear warmup and cosine decay;
* validation: zero-shot accuracy from class-name prompts (:class:`~lightning_ws.metrics.ZeroShotAccuracy`) and
  image-text retrieval recall@k (:class:`~lightning_ws.metrics.RetrievalRecallAtK`);
* optional W&B example images with their captions (``log_images_every_n_steps``).

Per-sample losses (``per_sample_loss``) make it work with sample-weighting callbacks: for a contrastive loss the
loss of pair ``i`` is ``(CE_i(image -> text) + CE_i(text -> image)) / 2`` on its row of the global logits.

:class:`FilterSignalModule` computes the filter signals of :mod:`lightning_ws.datacomp.filters` in ``predict``
(any strategy: each rank reads its own shards) for :class:`lightning_ws.callbacks.SignalCacheWriter` to cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_ws.contracts import IMAGE, IMAGE_IDX, LABEL, TEXT, UID, SupportsZeroShot, datamodule_of
from lightning_ws.datacomp.clip import build_clip, clip_contrastive_loss, get_tokenizer
from lightning_ws.errors import ConfigError

__all__ = ["CLIPModule", "FilterSignalModule"]


class CLIPModule(pl.LightningModule):
    """CLIP training (see module docstring).

    Args:
        model_name: open_clip model name (used when ``model_config`` is None).
        model_config: open_clip model config dict (default: :data:`~lightning_ws.datacomp.clip.TINY_CLIP_CONFIG`
            when both are None).
        pretrained: local checkpoint file for the open_clip model (never downloaded).
        lr, weight_decay, betas, eps: AdamW (DataComp small/medium: 5e-4, 0.2, (0.9, 0.98), 1e-6).
        warmup_steps: linear warmup optimizer steps (DataComp: 500); cosine decay to 0 after it.
        total_steps: schedule length (default: ``trainer.estimated_stepping_batches``).
        gather_features: gather features from all ranks (False: each rank contrasts only its local batch).
        local_loss: with gathering, score only this rank's rows.
        init_logit_scale: initial temperature as ``log(1/T)`` (default ``log(1/0.07)``).
        max_logit_scale: clamp of ``exp(logit_scale)`` (CLIP: 100).
        zeroshot_classnames, zeroshot_templates: the zero-shot task (default: the datamodule's
            ``zeroshot_classnames`` / ``zeroshot_templates``).
        recall_k: ks of the retrieval recall.
        log_images_every_n_steps: log this many... every n optimizer steps, 8 training images with their captions to
            W&B (0 = never).
    """

    def __init__(self, model_name: str | None = None, model_config: dict[str, Any] | None = None,
                 pretrained: str | None = None, lr: float = 5e-4, weight_decay: float = 0.2,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, warmup_steps: int = 500,
                 total_steps: int | None = None, gather_features: bool = True, local_loss: bool = False,
                 init_logit_scale: float | None = None, max_logit_scale: float = 100.0,
                 zeroshot_classnames: list[str] | None = None, zeroshot_templates: list[str] | None = None,
                 recall_k: Sequence[int] = (1, 5), log_images_every_n_steps: int = 0) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0:
            raise ConfigError(f"need lr > 0, weight_decay >= 0, warmup_steps >= 0; got {lr}, {weight_decay}, "
                              f"{warmup_steps}.")
        if total_steps is not None and total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1 or null, got {total_steps}.")
        if local_loss and not gather_features:
            raise ConfigError("local_loss=True needs gather_features=True (it scores local rows against gathered "
                              "columns).")
        if max_logit_scale <= 1:
            raise ConfigError(f"max_logit_scale must be > 1, got {max_logit_scale}.")
        self.save_hyperparameters()
        self.model = build_clip(model_name, model_config, pretrained=pretrained, init_logit_scale=init_logit_scale)
        self.context_length = int(self.model.context_length)
        self._tokenize = None
        self._zeroshot = None
        self._retrieval = None
        self._val_names: list[str] = []

    # ----------------------------------------------------------------------------------------------------- model
    def encode(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if texts.shape[-1] != self.context_length:
            raise ConfigError(f"text tokens have length {texts.shape[-1]} but the model's context length is "
                              f"{self.context_length}; set the datamodule's context_length to match.")
        return (F.normalize(self.model.encode_image(images), dim=-1),
                F.normalize(self.model.encode_text(texts), dim=-1))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenize is None:
            self._tokenize = get_tokenizer(self.context_length)
        return self._tokenize(texts)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainer is None or self.trainer.world_size == 1 or not self.hparams.gather_features:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def contrastive(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, gathered features and the loss of a batch; returns ``(loss, logits_i_local, labels_local)``
        where the logits are this rank's rows against all columns (for per-sample losses)."""
        fi, ft = self.encode(batch[IMAGE], batch[TEXT])
        all_i, all_t = self._gather(fi), self._gather(ft)
        rank = self.global_rank if all_i.shape[0] != fi.shape[0] else 0
        loss = clip_contrastive_loss(fi, ft, self.model.logit_scale, all_image_features=all_i,
                                     all_text_features=all_t, rank=rank, local_loss=self.hparams.local_loss)
        scale = self.model.logit_scale.exp()
        labels = torch.arange(fi.shape[0], device=fi.device) + rank * fi.shape[0]
        self._last = (scale * fi @ all_t.T, scale * ft @ all_i.T, labels)
        return loss, all_i, all_t

    def per_sample_loss(self) -> torch.Tensor:
        """Per-pair losses of the last training batch (this rank's rows; see module docstring)."""
        li, lt, labels = self._last
        return 0.5 * (F.cross_entropy(li, labels, reduction="none") + F.cross_entropy(lt, labels, reduction="none"))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, all_i, _ = self.contrastive(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.hparams.local_loss,
                 batch_size=batch[IMAGE].shape[0])
        self.log("train/logit_scale", self.model.logit_scale.exp().detach(), batch_size=batch[IMAGE].shape[0])
        self.log("train/global_batch", float(all_i.shape[0]), batch_size=batch[IMAGE].shape[0])
        n = self.hparams.log_images_every_n_steps
        if n and batch_idx % max(1, self.trainer.accumulate_grad_batches) == 0 and self.global_step % n == 0:
            self._log_examples(batch)
        return loss

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():  # CLIP clamps the temperature after each update
            self.model.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    # ------------------------------------------------------------------------------------------------ validation
    def _zeroshot_task(self) -> tuple[list[str], list[str]] | None:
        names, temps = self.hparams.zeroshot_classnames, self.hparams.zeroshot_templates
        dm = datamodule_of(self)
        dm = dm if isinstance(dm, SupportsZeroShot) else None
        names = names or (dm.zeroshot_classnames if dm is not None else None)
        temps = temps or (dm.zeroshot_templates if dm is not None else None) or ["a photo of a {}."]
        return (list(names), list(temps)) if names else None

    def on_validation_epoch_start(self) -> None:
        from lightning_ws.metrics.clip import RetrievalRecallAtK, ZeroShotAccuracy

        dm = datamodule_of(self)
        self._val_names = list(dm.val_names or []) if isinstance(dm, SupportsZeroShot) else []
        task = self._zeroshot_task()
        if task is not None:
            self._zeroshot = ZeroShotAccuracy(*task).to(self.device)
            self._zeroshot.build_classifier(self.model.encode_text, self.tokenize, self.device)
        self._retrieval = RetrievalRecallAtK(self.hparams.recall_k).to(self.device)

    def _kind(self, batch: Mapping[str, Any], dataloader_idx: int) -> str:
        if self._val_names and dataloader_idx < len(self._val_names):
            return self._val_names[dataloader_idx]
        return "retrieval" if TEXT in batch else "zeroshot"

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        kind = self._kind(batch, dataloader_idx)
        if kind == "zeroshot":
            if self._zeroshot is None:
                raise ConfigError("a zero-shot validation set needs class names: give zeroshot_classnames or use a "
                                  "datamodule with zeroshot_classnames.")
            self._zeroshot.update(F.normalize(self.model.encode_image(batch[IMAGE]), dim=-1), batch[LABEL])
        else:
            fi, ft = self.encode(batch[IMAGE], batch[TEXT])
            self._retrieval.update(fi, ft, batch[IMAGE_IDX])

    def on_validation_epoch_end(self) -> None:
        if self._zeroshot is not None and int(self._zeroshot.total) > 0 or (
                self._zeroshot is not None and self.trainer.world_size > 1):
            self.log("val/zeroshot_acc", self._zeroshot.compute(), sync_dist=False)
        if self._retrieval is not None and (self._retrieval.image_features or self.trainer.world_size > 1):
            for key, value in self._retrieval.compute().items():
                self.log(f"val/{key}", value, sync_dist=False)
        self._zeroshot = None
        self._retrieval = None

    # ------------------------------------------------------------------------------------------------ predict
    def on_predict_epoch_start(self) -> None:
        """Build the zero-shot classifier (class-name prompts through the text tower) once per predict run."""
        from lightning_ws.metrics.clip import ZeroShotAccuracy

        task = self._zeroshot_task()
        if task is None:
            raise ConfigError("CLIPModule predicts zero-shot class probabilities and needs class names: give "
                              "zeroshot_classnames or use a datamodule with zeroshot_classnames (zeroshot: cifar10).")
        self._zeroshot = ZeroShotAccuracy(*task).to(self.device)
        self._zeroshot.build_classifier(self.model.encode_text, self.tokenize, self.device)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Zero-shot ``probs`` (softmax of ``logit_scale * cos(image, class prompt)``), ``pred`` and ``idx``."""
        from lightning_ws.contracts import IDX, IMAGE, LABEL

        feats = F.normalize(self.model.encode_image(batch[IMAGE]), dim=-1)
        logits = self.model.logit_scale.exp() * feats.float() @ self._zeroshot.classifier.to(feats.device).T
        probs = logits.softmax(-1)
        out = {"probs": probs, "pred": probs.argmax(-1)}
        for key in (IDX, LABEL):
            if key in batch:
                out[key] = batch[key]
        return out

    def on_predict_epoch_end(self) -> None:
        self._zeroshot = None

    # ------------------------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name or (
                "embedding" in name) or "token_embedding" in name
            (no_decay if exclude else decay).append(p)
        hp = self.hparams
        opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                 {"params": decay, "weight_decay": hp.weight_decay}],
                                lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        warm = min(hp.warmup_steps, max(0, total - 1))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ logging
    def _log_examples(self, batch: Mapping[str, Any]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in (self.loggers or []) if isinstance(lg, WandbLogger)]
        if not loggers or self.global_rank != 0:
            return
        from lightning_ws.extras import require
        require("open_clip", "datacomp", "CLIPModule example logging")
        from open_clip.tokenizer import SimpleTokenizer

        tok = SimpleTokenizer()
        imgs = batch[IMAGE][:8].detach().float().cpu()
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]
        imgs = (imgs * std + mean).clamp(0, 1)
        caps = []
        for row in batch[TEXT][:8].tolist():
            ids = [t for t in row if t not in (0, 49406, 49407)]
            caps.append(tok.decode(ids).strip())
        for lg in loggers:
            lg.log_image(key="train/examples", images=list(imgs), caption=caps, step=self.global_step)


class FilterSignalModule(pl.LightningModule):
    """Filter signals in ``predict`` (see :mod:`lightning_ws.datacomp.signals`): image statistics and perceptual
    hashes come precomputed from the data workers; this module adds the model signals (CLIP image-text cosine,
    detector boxes) on the accelerator.

    Args:
        clip: a :class:`CLIPModule` checkpoint path, or None for no CLIP score.
        detector: a local OWL-ViT folder, ``"tiny-random"`` (tests), or None.
        detector_top_k: boxes kept per image.
    """

    def __init__(self, clip: str | None = None, detector: str | None = None, detector_top_k: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.clip = CLIPModule.load_from_checkpoint(clip, map_location="cpu").model.eval() if clip else None
        self.detector = None
        if detector is not None:
            from lightning_ws.datacomp.filters import OwlDetector, tiny_owlvit

            model = tiny_owlvit() if detector == "tiny-random" else detector
            self.detector = OwlDetector(model, top_k=detector_top_k)
            self.detector_model = self.detector.model  # registered, so it moves with the module

    @classmethod
    def from_models(cls, clip_model: torch.nn.Module | None = None, detector: Any = None) -> FilterSignalModule:
        """Build from in-memory models (an open_clip model; an :class:`OwlDetector`)."""
        mod = cls()
        mod.clip = clip_model.eval() if clip_model is not None else None
        if detector is not None:
            mod.detector, mod.detector_model = detector, detector.model
        return mod

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        from lightning_ws.datacomp.filters import clip_similarity

        out = {UID: batch[UID], "url": batch["url"], "signals": dict(batch["signals"])}
        if self.clip is not None:
            out["signals"]["clip_score"] = clip_similarity(self.clip, batch[IMAGE], batch[TEXT]).cpu()
        if self.detector is not None:
            det = self.detector(batch["det_image"], batch["caption"])
            out["signals"].update({k: v.cpu() for k, v in det.items()})
        return out
