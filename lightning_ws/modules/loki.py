"""LokiClassifier: train on the observed classes, predict over the full label space (Loki, arXiv 2307.12226)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_ws.contracts import LABELS, X, SupportsLabelMetric, datamodule_of
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.loki.metric_space import LabelMetric
from lightning_ws.loki.predict import LokiHead
from lightning_ws.metrics.loki import ExpectedSquaredDistance, FullSpaceAccuracy, SeenUnseenBreakdown

__all__ = ["LokiClassifier"]


class LokiClassifier(pl.LightningModule):
    """A backbone + linear head over the ``k`` observed classes, with Loki over all ``N`` classes (arXiv 2307.12226).

    Training: cross-entropy over the observed classes only (batch dicts ``x``, ``labels`` with full-space class
    ids; a training label of an unobserved class raises :class:`DataError`).  Validation/test log, for Loki and for
    the argmax baseline, ``<stage>/loki/esd`` and ``<stage>/argmax/esd`` (expected squared distance, the paper's
    metric), ``.../acc`` (full-space top-1) and the seen/unseen breakdown ``.../seen/acc``, ``.../unseen/esd``...
    ``predict_step`` returns full-space class positions from Loki.

    The label metric and the observed classes come from the constructor or, when omitted, from the datamodule's
    ``label_metric`` and ``observed_classes`` attributes in ``setup`` (as :class:`LokiDigitsDataModule` provides).
    The ``(k, N)`` squared-distance rows live in the state dict, so ``load_from_checkpoint`` restores a working
    predictor without the datamodule.  Class ids must be ints (they are the ``labels`` of our batch contract).

    Defaults the paper leaves open: a 1-hidden-layer MLP backbone when ``backbone`` is None, softmax weights at
    ``temperature=1``, Adam with ``lr=1e-3``.

    Args:
        backbone: any ``nn.Module`` mapping ``x`` to ``(B, feature_dim)`` features (default: MLP
            ``in_features -> hidden_dim``, ReLU).
        feature_dim: backbone output size (required with a custom backbone).
        in_features: input size of the default MLP (default 64, digits).
        hidden_dim: hidden size of the default MLP (default 128).
        observed_classes: class ids of the logit columns (default: from the datamodule).
        num_classes: ``N`` (checked against the metric; default: from the metric).
        metric: the full-space :class:`LabelMetric` (default: the datamodule's ``label_metric``).
        squared: Loki with ``d^2`` (default True) or ``d`` (ablation).
        temperature: softmax temperature of the Loki weights (default 1.0).
        lr: Adam learning rate (default 1e-3).
        weight_decay: Adam weight decay (default 0.0).
    """

    def __init__(self, backbone: nn.Module | None = None, feature_dim: int | None = None, in_features: int = 64,
                 hidden_dim: int = 128, observed_classes: list[int] | None = None, num_classes: int | None = None,
                 metric: LabelMetric | None = None, squared: bool = True, temperature: float = 1.0,
                 lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        if backbone is None:
            if in_features < 1 or hidden_dim < 1:
                raise ConfigError(f"in_features and hidden_dim must be >= 1; got {in_features}, {hidden_dim}.")
            backbone = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU())
            feature_dim = hidden_dim
        elif feature_dim is None or feature_dim < 1:
            raise ConfigError("a custom backbone needs feature_dim (its output size, >= 1).")
        if not lr > 0 or weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0; got lr={lr}, weight_decay={weight_decay}.")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0; got {temperature}.")
        if observed_classes is not None and len(set(observed_classes)) != len(observed_classes):
            raise ConfigError(f"observed_classes has duplicates: {observed_classes}.")
        # observed_classes is stored in the checkpoint (on_save_checkpoint), not in hparams: a datamodule that
        # provides it would otherwise clash with the model's value (None) when Lightning merges hparams for logging.
        self.save_hyperparameters(ignore=["backbone", "metric", "observed_classes"])
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.squared, self.temperature, self.lr, self.weight_decay = squared, temperature, lr, weight_decay
        self._num_classes_arg = num_classes
        self.classifier: nn.Linear | None = None
        self.loki: LokiHead | None = None
        self.observed_classes: list[int] | None = None
        self._sq_full: torch.Tensor | None = None
        self.reachability = None  # a ReachabilityReport once the head is built
        self.eval_metrics: nn.ModuleDict | None = None
        self._pending = (metric, None if observed_classes is None else list(observed_classes))
        if observed_classes is not None and metric is not None:
            self._build(metric, list(observed_classes))

    # ----------------------------------------------------------------- building
    def _build(self, metric: LabelMetric, observed: Sequence[int]) -> None:
        if self._num_classes_arg is not None and self._num_classes_arg != metric.num_classes:
            raise ConfigError(f"num_classes={self._num_classes_arg} but the label metric has {metric.num_classes} "
                              "classes.")
        ids = metric.class_ids
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in ids):
            raise ConfigError("LokiClassifier needs non-negative integer class ids (batch labels are LongTensors).")
        self._allocate(len(observed), metric.num_classes)
        pos = metric.index(list(observed))
        with torch.no_grad():
            self.loki.sq_dist.copy_(metric.distance_rows(positions=pos, squared=self.squared))
            self.obs_pos.copy_(pos)
            self.pos_to_id.copy_(torch.tensor(ids, dtype=torch.long))
        self.observed_classes = [int(c) for c in observed]
        from lightning_ws.loki.active import reachability_report, warn_unreachable

        self.reachability = reachability_report(metric, list(observed), squared=self.squared)
        warn_unreachable(self.reachability, stacklevel=4)
        self._sq_full = metric.distance_rows(squared=True) if metric.num_classes <= 20000 else None
        self._make_metrics()

    def _allocate(self, k: int, n: int) -> None:
        if self.classifier is not None and (self.classifier.out_features != k or self.loki.num_classes != n):
            raise ConfigError(f"the model was built for {self.classifier.out_features} observed / "
                              f"{self.loki.num_classes} classes; got {k} / {n}.")
        if self.classifier is None:
            self.classifier = nn.Linear(self.feature_dim, k)
            self.loki = LokiHead(torch.zeros(k, n), temperature=self.temperature)
            self.register_buffer("obs_pos", torch.zeros(k, dtype=torch.long))
            self.register_buffer("pos_to_id", torch.arange(n, dtype=torch.long))
            self.register_buffer("full_to_obs", torch.full((n,), -1, dtype=torch.long), persistent=False)
            self.register_buffer("id_to_pos", torch.full((n,), -1, dtype=torch.long), persistent=False)

    def _refresh_lookups(self) -> None:
        with torch.no_grad():
            self.full_to_obs.fill_(-1)
            self.full_to_obs[self.obs_pos] = torch.arange(len(self.obs_pos), device=self.obs_pos.device)
            self.id_to_pos = torch.full((int(self.pos_to_id.max()) + 1,), -1, dtype=torch.long,
                                        device=self.pos_to_id.device)
            self.id_to_pos[self.pos_to_id] = torch.arange(len(self.pos_to_id), device=self.pos_to_id.device)

    def _make_metrics(self) -> None:
        n = self.loki.num_classes
        self._refresh_lookups()
        if self._sq_full is None:
            self.eval_metrics = None
            return
        metrics = {}
        for stage in ("val", "test"):
            for rule in ("loki", "argmax"):
                metrics[f"{stage}_{rule}_esd"] = ExpectedSquaredDistance(self._sq_full)
                metrics[f"{stage}_{rule}_acc"] = FullSpaceAccuracy(n)
                metrics[f"{stage}_{rule}_split"] = SeenUnseenBreakdown(self._sq_full, self.obs_pos.cpu())
        self.eval_metrics = nn.ModuleDict(metrics).to(self.obs_pos.device)

    def setup(self, stage: str) -> None:
        """Take the metric/observed classes from the datamodule when they were not given; check consistency."""
        metric, observed = self._pending
        dm = datamodule_of(self)
        dm = dm if isinstance(dm, SupportsLabelMetric) else None
        if metric is None and dm is not None:
            metric = dm.label_metric
        if observed is None and dm is not None:
            observed = dm.observed_classes
        if dm is not None and dm.observed_classes is not None and observed is not None \
                and list(dm.observed_classes) != list(observed):
            raise ConfigError(f"model observed_classes {list(observed)} differ from the datamodule's "
                              f"{list(dm.observed_classes)}; drop one of them or make them equal.")
        if self.observed_classes is not None and metric is None:
            return  # restored from a checkpoint
        if metric is None or observed is None:
            raise ConfigError("LokiClassifier needs a label metric and observed classes: pass metric= and "
                              "observed_classes=, or use a datamodule with label_metric/observed_classes.")
        if self.observed_classes is None or self._sq_full is None or self.eval_metrics is None:
            self._build(metric, list(observed))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Allocate the head from the checkpoint shapes (so ``load_from_checkpoint`` works without a datamodule)."""
        sd = checkpoint.get("state_dict", {})
        if "loki.sq_dist" in sd and self.classifier is None:
            k, n = sd["loki.sq_dist"].shape
            self._allocate(int(k), int(n))
            self.observed_classes = [int(c) for c in checkpoint.get("loki_observed_classes", [])] or None
            self._sq_full = None
            self.eval_metrics = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the observed class ids next to the weights."""
        checkpoint["loki_observed_classes"] = list(self.observed_classes or [])

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load weights, then rebuild the id lookup from the restored buffers."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.loki is not None:
            self._refresh_lookups()
        return out

    # ------------------------------------------------------------------ steps
    def _require_built(self) -> None:
        if self.classifier is None:
            raise ConfigError("LokiClassifier is not built yet: give metric= and observed_classes=, or run it "
                              "through a Trainer with a datamodule that has label_metric/observed_classes.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the observed classes ``(B, k)``."""
        self._require_built()
        return self.classifier(self.backbone(x))

    def _labels_to_pos(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim != 1 or labels.dtype != torch.long:
            raise DataError("LokiClassifier needs hard labels: a LongTensor (B,) of full-space class ids.")
        n_ids = len(self.id_to_pos)
        pos = self.id_to_pos[labels.clamp(0, n_ids - 1)]
        bad = (labels < 0) | (labels >= n_ids) | (pos < 0)
        if bad.any():
            raise DataError(f"label {int(labels[bad][0])} is not a class id of the label metric.")
        return pos

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy over the observed classes."""
        logits = self(batch[X])
        target = self.full_to_obs[self._labels_to_pos(batch[LABELS])]
        if (target < 0).any():
            bad = int(batch[LABELS][target < 0][0])
            raise DataError(f"training batch holds class {bad}, which is not observed ({self.observed_classes}); "
                            "train only on observed classes (filter the training set).")
        loss = nn.functional.cross_entropy(logits, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self(batch[X])
        target = self._labels_to_pos(batch[LABELS])
        loki = self.loki(logits)
        argmax = self.obs_pos[logits.argmax(1)]
        if self.eval_metrics is None:
            return
        for rule, pred in (("loki", loki), ("argmax", argmax)):
            for kind in ("esd", "acc", "split"):
                self.eval_metrics[f"{stage}_{rule}_{kind}"].update(pred, target)

    def _eval_epoch_end(self, stage: str) -> None:
        if self.eval_metrics is None:
            return
        for rule in ("loki", "argmax"):
            m = {f"{stage}/{rule}/esd": self.eval_metrics[f"{stage}_{rule}_esd"],
                 f"{stage}/{rule}/acc": self.eval_metrics[f"{stage}_{rule}_acc"]}
            for key, metric in m.items():
                self.log(key, metric.compute().float(), sync_dist=False)
                metric.reset()
            split = self.eval_metrics[f"{stage}_{rule}_split"]
            for key, val in split.compute().items():
                self.log(f"{stage}/{rule}/{key}", val.float())
            split.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Update the Loki and argmax metrics."""
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Log the (DDP-synced) validation metrics."""
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Update the Loki and argmax metrics."""
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Log the (DDP-synced) test metrics."""
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Loki's predicted full-space class ids ``(B,)``."""
        return self.pos_to_id[self.loki(self(batch[X]))]

    def on_train_start(self) -> None:
        """Reset validation metrics (a sanity check must not leak into epoch 1)."""
        if self.eval_metrics is not None:
            for m in self.eval_metrics.values():
                m.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over backbone and head."""
        self._require_built()
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
