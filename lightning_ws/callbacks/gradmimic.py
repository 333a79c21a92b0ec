"""Grad-Mimic online batch re-weighting (Huang et al., "Evaluating Sample Utility for (Efficient) Data Selection by
Mimicking Model Weights", arXiv 2501.06708), with the GraNd and RHO-LOSS baselines behind the same interface.

The maths lives in :mod:`lightning_ws.gradmimic` (no Lightning); this module is the thin Lightning layer: hooks on the
mimic layer, rescaling of hooked gradients (mean reduction, gradient accumulation, AMP loss scale), cross-rank
gathering, gradient replacement once per optimizer step, the per-sample score log, and logging.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.gradmimic import (
    SCORE_VARIANTS,
    FilterResult,
    MimicScoreFilter,
    ScoreLog,
    TargetDirection,
    batch_softmax_weights_checked,
    check_same_architecture,
    grand_scores,
    load_reference_state,
    mimic_scores,
    reference_layer,
    rho_scores,
    weight_entropy,
    weighted_layer_grad,
)
from lightning_ws.io import save_tensors

__all__ = ["GradMimicCallback", "reduce_per_sample_loss"]

_MODES = ("layer_only", "all_params")
_REDUCTIONS = ("mean", "sum")


class GradMimicCallback(Callback):
    """Re-weight each mini-batch by its samples' mimic scores toward a reference model (arXiv 2501.06708).

    For the linear ``mimic_layer`` ``W`` and the direction ``v = W_ref - W_t`` to the reference weights, sample ``i``'s
    score is ``m_i = <-g_i, v> / ||v||`` (``score="proj"``, the paper's default) or that divided by ``||g_i||``
    (``"cos"``); the weights are ``w = softmax(m / tau)`` over the batch. Scores come in closed form from the layer's
    input and output gradient (forward hook + tensor hook), never from per-sample autograd: the cost is one
    ``(out x in)`` matrix-vector product per sample and position.

    Baselines with the same interface (the repository's comparisons): ``score="grand"`` (softmax of the per-sample
    gradient norm of the mimic layer, GraNd, arXiv 2107.07075), ``score="rho"`` (softmax of own loss minus reference
    loss, RHO-LOSS as used by the Grad-Mimic repository, arXiv 2206.07137; the reference logits are the mimic layer's
    input times the *reference* layer weights, exact when the mimic layer is the output head and the layers below it
    are shared/frozen, as in linear probing; the loss is cross-entropy on ``batch["labels"]``), and ``tau=inf`` (plain
    SGD: uniform weights).

    Modes:
        * ``"layer_only"`` (paper default): the mimic layer gets ``sum_i w_i g_i`` per micro-batch; every other
          parameter keeps the plain mean gradient. No change to the module. Requires the module's loss to be the mean
          (``loss_reduction="mean"``) or the sum (``"sum"``) of per-sample losses; the mimic layer must be called once
          per forward. Linear probe (the layer's input does not require grad, one process, float32/64 output): the
          output-gradient hook returns ``c_i * delta_i`` so autograd computes the weighted gradient itself (no extra
          matmul). Otherwise the layer's ``.grad`` is replaced once per optimizer step by the accumulated
          ``sum_i w_i g_i`` (the gradient flowing to the layers below stays the plain one). Both paths give the same
          result; ``tau=inf`` leaves the gradient untouched (bit-identical to plain SGD).
        * ``"all_params"``: every parameter gets ``sum_i w_i g_i``. The module must reduce its per-sample losses with
          :func:`reduce_per_sample_loss` (or this callback's :meth:`reduce_loss`) inside ``training_step``; the
          weights are computed there from ``d loss_i / d z_i`` of the mimic layer's output ``z`` (a partial backward
          from the losses to ``z``: for an output head that is only the loss's own backward, ``O(B C)``; for an
          inner layer it is the backward of the layers above it), and the returned loss is ``sum_i w_i loss_i``.
          No second full backward.

    Defaults the paper leaves open (documented choices):
        * Gradient accumulation: each micro-batch gets its own softmax (weights sum to 1 per micro-batch); the
          weighted micro-batch gradients are averaged over micro-batches exactly like Lightning averages the plain
          ones. The gradient is replaced once per optimizer step, in ``on_before_optimizer_step``.
        * DDP: the softmax runs over the *global* micro-batch (scores are all-gathered), the replaced gradient is
          all-reduced, and the score log is built from gathered values, so every rank holds the same state.
        * AMP: hooked gradients carry the loss scale; scores are computed from unscaled gradients and the replacement
          is unscaled with the grad scaler's scale (it runs after Lightning's ``unscale_``). A micro-batch whose
          scores are not finite (an overflow step, skipped by the scaler anyway) gets uniform weights and no record.
        * ``v = 0`` (``||W_ref - W_t|| <= eps``): uniform weights (the paper leaves this open; spec §8).
        * Scores use per-sample losses: hooked gradients of a mean-reduced loss are multiplied by the micro-batch
          size (and by ``accumulate_grad_batches``), so ``tau`` has the same meaning at any batch size.
        * The reference can be perturbed with Gaussian noise of std ``reference_noise_std`` (the paper's ``sigma``
          robustness knob), drawn from a generator seeded with ``seed``.
        * Improvement over the reference code (which costs ~20x SGD per batch with ``vmap`` per-sample gradients over
          all trainable parameters and a Python loop): closed-form scores (one ``(B, in) x (in, out)`` matmul), the
          weighted gradient from autograd itself (linear probe) or a single matmul; ``W_ref - W_t`` updated in place
          once per optimizer step; per-sample records kept as batch tensors (no per-step copy or host sync besides
          the norm and one finiteness check); statistics computed only on steps that log.

    Records: every micro-batch appends ``(idx, weight, score, batch size, epoch, step)`` per sample (the sample id is
    ``batch["idx"]``; the batch's ``idx`` tensor is kept by reference, so it must not be modified in place later);
    :meth:`score_table`, :meth:`filter` and :meth:`save_scores` use it. The log is part of ``state_dict`` (resumable). Logged keys: ``gradmimic/weight_entropy`` (entropy / log B, 1 = uniform),
    ``gradmimic/max_relative_weight`` (``B * max w``), ``gradmimic/score_mean``, ``gradmimic/score_std``,
    ``gradmimic/v_norm``; with a ``WandbLogger`` also a histogram ``gradmimic/relative_weight_hist`` per epoch.

    Args:
        mimic_layer: dotted name of an ``nn.Linear`` in the LightningModule (``pl_module.get_submodule``).
        reference: reference weights of the same architecture: a ``.ckpt``/``.pt`` path (``torch.load`` with
            ``weights_only=True``; a Lightning checkpoint's ``state_dict`` is used), a ``.safetensors`` path, a state
            dict or an ``nn.Module``.
        tau: softmax temperature (> 0; ``float("inf")`` = plain SGD). Paper code default 1.0.
        mode: ``"layer_only"`` or ``"all_params"``.
        score: ``"proj"``, ``"cos"``, ``"grand"`` or ``"rho"``.
        start_epoch: plain SGD before this epoch (scores are still recorded, with would-be weights).
        record_scores: keep the per-sample log.
        loss_reduction: how the module reduces per-sample losses in ``layer_only`` mode (``"mean"`` or ``"sum"``).
        strict_reference: check the full state dict against the model (``False``: only the mimic layer's keys).
        reference_noise_std: std of Gaussian noise added to the reference mimic layer (robustness studies).
        seed: seed of the noise generator.
        eps: ``||v||`` below which weights are uniform.

    Raises:
        ConfigError: invalid arguments (here), or in ``setup``: unknown/non-linear mimic layer, reference of another
        architecture, manual optimization.

    Example::

        cb = GradMimicCallback("head", reference="reference.safetensors", tau=0.5)
        trainer = pl.Trainer(callbacks=[cb], max_epochs=5)
        trainer.fit(model, datamodule)        # batches carry "idx"
        result = cb.filter("gmm", "majority") # keep mask, quality estimate, top-p
    """

    STATE_VERSION = 1

    def __init__(
        self,
        mimic_layer: str,
        reference: str | os.PathLike | Mapping[str, Tensor] | nn.Module,
        tau: float = 1.0,
        mode: str = "layer_only",
        score: str = "proj",
        start_epoch: int = 0,
        record_scores: bool = True,
        loss_reduction: str = "mean",
        strict_reference: bool = True,
        reference_noise_std: float = 0.0,
        seed: int = 0,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if not isinstance(mimic_layer, str) or not mimic_layer:
            raise ConfigError(f"mimic_layer must be the dotted name of an nn.Linear, got {mimic_layer!r}.")
        if not isinstance(reference, (str, os.PathLike, Mapping, nn.Module)):
            raise ConfigError(f"reference must be a checkpoint path, a state dict or an nn.Module, got "
                              f"{type(reference).__name__}.")
        tau = float(tau) if isinstance(tau, (int, float)) and not isinstance(tau, bool) else tau
        if not isinstance(tau, float) or not tau > 0:
            raise ConfigError(f"tau must be a positive number (inf = plain SGD), got {tau!r}.")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}.")
        if score not in SCORE_VARIANTS:
            raise ConfigError(f"score must be one of {SCORE_VARIANTS}, got {score!r}.")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ConfigError(f"start_epoch must be an integer >= 0, got {start_epoch!r}.")
        if loss_reduction not in _REDUCTIONS:
            raise ConfigError(f"loss_reduction must be one of {_REDUCTIONS}, got {loss_reduction!r}.")
        if not isinstance(reference_noise_std, (int, float)) or not reference_noise_std >= 0 \
                or math.isinf(reference_noise_std):
            raise ConfigError(f"reference_noise_std must be a finite number >= 0, got {reference_noise_std!r}.")
        if not isinstance(eps, (int, float)) or not eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {eps!r}.")
        self.mimic_layer = mimic_layer
        self.reference = reference
        self.tau = tau
        self.mode = mode
        self.score = score
        self.start_epoch = start_epoch
        self.record_scores = bool(record_scores)
        self.loss_reduction = loss_reduction
        self.strict_reference = bool(strict_reference)
        self.reference_noise_std = float(reference_noise_std)
        self.seed = int(seed)
        self.eps = float(eps)

        self.score_log = ScoreLog()
        self.reweighted_steps = 0
        self._layer: nn.Linear | None = None
        self._direction_fn: TargetDirection | None = None
        self._handles: list[Any] = []
        self._trainer: pl.Trainer | None = None
        self._reset_micro()
        self._acc_w: Tensor | None = None
        self._acc_b: Tensor | None = None
        self._step_applied = False
        self._stats: dict[str, Any] = {}
        self._last_logged_step = -1
        self._epoch_rel: list[Tensor] = []
        self._state_key_cache: tuple[tuple[str, str, str], str] | None = None
        # facts about the running fit, read once in on_train_start (see _cache_run_facts)
        self._world = 1
        self._accum = 1
        self._scaler_obj: Any = None
        self._log_every = 50
        self._collect_hist = False
        self._direction_key: tuple[int, ...] | None = None
        self._direction: tuple[Tensor, Tensor | None, float] | None = None
        self._params: tuple[Tensor, Tensor | None] = ()  # the mimic layer's (weight, bias), set in setup

    # ------------------------------------------------------------------ identity and state

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads state_key on every hook call (profiler names), so it is cached
        ident = (self.mimic_layer, self.score, self.mode)
        if self._state_key_cache is None or self._state_key_cache[0] != ident:
            self._state_key_cache = (ident, self._generate_state_key(mimic_layer=self.mimic_layer, score=self.score,
                                                                     mode=self.mode))
        return self._state_key_cache[1]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "reweighted_steps": self.reweighted_steps,
                "log": self.score_log.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = self._migrate(dict(state_dict))
        self.reweighted_steps = int(state["reweighted_steps"])
        self.score_log.load_state_dict(state["log"])

    @classmethod
    def _migrate(cls, state: dict[str, Any]) -> dict[str, Any]:
        version = int(state.get("version", 1))
        if version > cls.STATE_VERSION:
            raise DataError(f"GradMimicCallback state version {version} is newer than this code "
                            f"({cls.STATE_VERSION}); upgrade lightning_ws to resume from this checkpoint.")
        return state

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ConfigError("GradMimicCallback needs automatic optimization (it replaces gradients between backward "
                              "and the optimizer step); set automatic_optimization=True.")
        try:
            layer = pl_module.get_submodule(self.mimic_layer)
        except AttributeError as err:
            linears = [n for n, m in pl_module.named_modules() if isinstance(m, nn.Linear)]
            raise ConfigError(f"mimic_layer {self.mimic_layer!r} is not a submodule of {type(pl_module).__name__}; "
                              f"its nn.Linear layers are {linears[:20]}.") from err
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"mimic_layer {self.mimic_layer!r} is a {type(layer).__name__}; the closed-form scores "
                              f"need an nn.Linear.")
        if not layer.weight.requires_grad:
            raise ConfigError(f"mimic_layer {self.mimic_layer!r} is frozen (weight.requires_grad=False); the mimic "
                              f"layer must be trained.")
        ref = load_reference_state(self.reference)
        model_state = pl_module.state_dict()
        keys = None if self.strict_reference else [k for k in (f"{self.mimic_layer}.weight",
                                                                f"{self.mimic_layer}.bias") if k in model_state]
        check_same_architecture(ref, model_state, keys=keys)
        ref_w, ref_b = reference_layer(ref, self.mimic_layer, has_bias=layer.bias is not None)
        if self.reference_noise_std > 0:
            gen = torch.Generator().manual_seed(self.seed)
            ref_w = ref_w + self.reference_noise_std * torch.randn(ref_w.shape, generator=gen)
            if ref_b is not None:
                ref_b = ref_b + self.reference_noise_std * torch.randn(ref_b.shape, generator=gen)
        self._layer = layer
        self._params = (layer.weight, layer.bias)
        self._direction_fn = TargetDirection(ref_w.to(layer.weight.device),
                                             ref_b.to(layer.weight.device) if ref_b is not None else None)
        self._trainer = trainer
        self._direction_key = self._direction = None
        self._cache_run_facts(trainer)
        self._remove_hooks()
        self._handles.append(layer.register_forward_hook(self._forward_hook))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cache_run_facts(trainer)

    def _cache_run_facts(self, trainer: pl.Trainer) -> None:
        """Read the trainer's fixed settings once per fit instead of through its properties on every step."""
        self._world = max(1, int(trainer.world_size))
        self._accum = int(trainer.accumulate_grad_batches)
        self._scaler_obj = self._scaler(trainer)
        self._log_every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            WandbLogger = ()  # noqa: N806
        self._collect_hist = any(isinstance(lg, WandbLogger) for lg in trainer.loggers) if WandbLogger else False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._trainer = None

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ hooks on the layer

    def _reset_micro(self) -> None:
        self._capturing = False
        self._a: Tensor | None = None
        self._z: Tensor | None = None
        self._delta: Tensor | None = None
        self._batch_idx: Tensor | None = None
        self._batch_labels: Tensor | None = None
        self._calls = 0
        self._weighted_in_step = False
        self._in_graph = False

    def _forward_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if not self._capturing or not torch.is_grad_enabled() or not isinstance(output, Tensor) \
                or not output.requires_grad:
            return
        self._calls += 1
        if self._calls > 1:
            raise ConfigError(f"mimic_layer {self.mimic_layer!r} was called {self._calls} times in one training step; "
                              f"the closed-form scores need a layer that is applied once per forward.")
        x = inputs[0]
        self._a = x.detach()
        self._z = output
        if self.mode == "layer_only":
            # In-graph re-weighting when nothing below the layer gets a gradient through its input (a linear probe
            # on frozen features, the paper's setting), the softmax needs no collective (one process) and the output
            # is float32/64: the output-gradient hook returns c_i * delta_i, so autograd's own weight/bias gradient
            # is already the weighted one (no second matmul, no replacement). Otherwise the general path below.
            self._in_graph = (not x.requires_grad and self._world == 1
                              and output.dtype in (torch.float32, torch.float64))
            output.register_hook(self._grad_hook_in_graph if self._in_graph else self._grad_hook)

    def _grad_hook(self, grad: Tensor) -> None:
        self._delta = grad.detach()

    def _grad_hook_in_graph(self, grad: Tensor) -> Tensor | None:
        # every tensor used here is detached (no graph is recorded without a no_grad context)
        self._delta = grad = grad.detach() if grad.requires_grad else grad
        a = self._a
        weights, apply = self._weights(a, grad, grad_scale=self._units_factor(a.shape[0]))
        if not apply:
            return None
        self._step_applied = True
        if math.isinf(self.tau):
            return None  # uniform weights: the plain gradient, exactly
        coeffs = weights * a.shape[0] if self.loss_reduction == "mean" else weights
        return grad * (coeffs.unsqueeze(1) if grad.dim() == 2 else coeffs.reshape(-1, *([1] * (grad.dim() - 1))))

    def _units_factor(self, batch_size: int) -> float:
        """Factor from a hooked output gradient to per-sample-loss units (accumulation, AMP scale, mean reduction)."""
        scaler = self._scaler_obj
        factor = self._accum / (float(scaler.get_scale()) if scaler is not None else 1.0)
        return factor * batch_size if self.loss_reduction == "mean" else factor

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._reset_micro()
        if not isinstance(batch, Mapping) or "idx" not in batch:
            raise DataError("GradMimicCallback needs dict batches with an 'idx' entry (the sample's stable id, its row "
                            "index in the training set) to record per-sample scores; add it in the dataset.")
        idx = batch["idx"]
        self._batch_idx = idx if isinstance(idx, Tensor) and idx.dim() == 1 else torch.as_tensor(idx).reshape(-1)
        if self.score == "rho":
            if "labels" not in batch:
                raise DataError("score='rho' needs batch['labels'] to compute the reference loss.")
            self._batch_labels = torch.as_tensor(batch["labels"])
        self._capturing = True

    def reduce_loss(self, per_sample_loss: Tensor) -> Tensor:
        """Reduce per-sample losses ``(B,)``: the weighted sum in ``"all_params"`` mode, else the plain reduction.

        Call inside ``training_step`` after the forward pass (see :func:`reduce_per_sample_loss`).
        """
        if per_sample_loss.dim() != 1:
            raise DataError(f"per_sample_loss must have shape (B,), got {tuple(per_sample_loss.shape)}.")
        plain = per_sample_loss.mean() if self.loss_reduction == "mean" else per_sample_loss.sum()
        if self.mode != "all_params" or not self._capturing:
            return plain
        if self._z is None or self._a is None:
            raise ConfigError(f"reduce_loss was called before the mimic layer {self.mimic_layer!r} ran in this "
                              f"training step; call it after the forward pass.")
        if per_sample_loss.shape[0] != self._a.shape[0]:
            raise DataError(f"per_sample_loss has {per_sample_loss.shape[0]} entries but the mimic layer saw a batch of "
                            f"{self._a.shape[0]}.")
        (delta,) = torch.autograd.grad(per_sample_loss.sum(), self._z, retain_graph=True)
        weights_local, apply = self._weights(self._a, delta, grad_scale=1.0, own_loss=per_sample_loss.detach())
        self._weighted_in_step = True
        if not apply:
            return plain
        return self._world * (weights_local.to(per_sample_loss.dtype) * per_sample_loss).sum()

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._capturing:
            return
        self._capturing = False
        if self.mode == "all_params":
            if not self._weighted_in_step:
                raise ConfigError("mode='all_params' needs the module to reduce its per-sample losses with "
                                  "lightning_ws.callbacks.gradmimic.reduce_per_sample_loss(self, per_sample_loss) in "
                                  "training_step; it was not called in this step.")
            return
        if self._a is None or self._delta is None:
            raise ConfigError(f"the mimic layer {self.mimic_layer!r} received no gradient in this training step; "
                              f"check that its output reaches the loss.")
        if self._in_graph:  # already re-weighted inside backward
            self._a = self._z = self._delta = None
            return
        a, delta_hooked = self._a, self._delta
        with torch.no_grad():
            weights_local, apply = self._weights(a, delta_hooked, grad_scale=self._units_factor(a.shape[0]))
            if not apply:
                return
            self._step_applied = True
            if math.isinf(self.tau):
                self._a = self._z = self._delta = None
                return  # uniform weights on every micro-batch: the plain gradient is the weighted one, exactly
            coeffs = weights_local * a.shape[0] if self.loss_reduction == "mean" else weights_local
            gw, gb = weighted_layer_grad(a, delta_hooked, coeffs, with_bias=self._layer.bias is not None)
            self._acc_w = gw if self._acc_w is None else self._acc_w.add_(gw)
            if gb is not None:
                self._acc_b = gb if self._acc_b is None else self._acc_b.add_(gb)
        self._a = self._z = self._delta = None

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.mode != "layer_only" or not self._step_applied:
            return
        self._step_applied = False
        acc_w, acc_b = self._acc_w, self._acc_b
        self._acc_w = self._acc_b = None
        if acc_w is None:  # in-graph path or tau=inf: .grad already holds the weighted gradient
            self.reweighted_steps += 1
            return
        if self._world > 1:  # every rank reaches this point once per optimizer step
            acc_w = trainer.strategy.reduce(acc_w, reduce_op="sum")
            if acc_b is not None:
                acc_b = trainer.strategy.reduce(acc_b, reduce_op="sum")
        layer = self._layer
        if layer.weight.grad is None:
            return
        scaler = self._scaler_obj
        if scaler is not None:
            if not getattr(optimizer, "_step_supports_amp_scaling", False):
                inv = 1.0 / float(scaler.get_scale())  # Lightning already unscaled the .grad tensors
                acc_w = acc_w * inv
                acc_b = acc_b * inv if acc_b is not None else None
            # an overflow step (the scaler skips it): keep the plain gradient. Without a scaler there is no such
            # check (a device sync per step): a non-finite weighted gradient reaches the optimizer like a plain one.
            finite = bool(torch.isfinite(acc_w).all()) and (acc_b is None or bool(torch.isfinite(acc_b).all()))
            if not finite:
                return
        layer.weight.grad.copy_(acc_w)
        if acc_b is not None and layer.bias is not None and layer.bias.grad is not None:
            layer.bias.grad.copy_(acc_b)
        self.reweighted_steps += 1

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._capturing = False
        self._a = self._z = self._delta = None
        stats = self._stats
        if not stats:
            return
        self._stats = {}
        # Lightning's self.log costs milliseconds per call; log at the trainer's logging cadence, on optimizer steps,
        # and compute the statistics only then (the step path keeps references: no reductions, no syncs)
        step = trainer.global_step
        if step != self._last_logged_step and step % self._log_every == 0:
            self._last_logged_step = step
            w, sc = stats["weights"], stats["scores"]
            values = {"weight_entropy": weight_entropy(w), "max_relative_weight": float(w.max() * w.numel()),
                      "score_mean": float(sc.mean()), "score_std": float(sc.std()) if sc.numel() > 1 else 0.0,
                      "v_norm": float(stats["v_norm"]) if stats["v_norm"] is not None else self._v_norm_now()}
            pl_module.log_dict({f"gradmimic/{k}": v for k, v in values.items()}, on_step=True, on_epoch=False,
                               batch_size=int(stats["batch_size"]))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_ws.gradmimic.outputs import write_epoch_outputs

        write_epoch_outputs(self, trainer)  # per-sample scores/weights/keep mask/quality to the run folder and W&B
        rel = torch.cat(self._epoch_rel) if self._epoch_rel else None
        self._epoch_rel = []
        if rel is None or not trainer.is_global_zero:
            return
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({"gradmimic/relative_weight_hist": wandb.Histogram(rel.numpy()),
                                       "trainer/global_step": trainer.global_step})

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _scaler(trainer: pl.Trainer) -> Any:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def _gather(self, t: Tensor) -> tuple[Tensor, int]:
        """All-gather a ``(n, ...)`` tensor over ranks (sizes may differ); return it and this rank's offset."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return t, 0
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = trainer.strategy.all_gather(n).reshape(-1).tolist()
        pad = max(sizes) - t.shape[0]
        padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t
        allv = trainer.strategy.all_gather(padded)
        parts = [allv[r, : sizes[r]] for r in range(len(sizes))]
        return torch.cat(parts), int(sum(sizes[: trainer.global_rank]))

    def _weights(self, a: Tensor, delta: Tensor, *, grad_scale: float,
                 own_loss: Tensor | None = None) -> tuple[Tensor, bool]:
        """Local scores -> global softmax -> (this rank's weights, whether to apply them); records and stats.

        ``delta`` times ``grad_scale`` is the output gradient in per-sample-loss units.
        """
        layer = self._layer
        v_norm = None  # grand/rho do not need the direction; its norm is computed when logged
        if self.score in ("proj", "cos"):
            v_w, v_b, v_norm = self._target_direction()
            scores = mimic_scores(a, delta, v_w, v_b, variant=self.score, v_norm=v_norm, eps=self.eps,
                                  grad_scale=grad_scale)
        elif self.score == "grand":
            scores = grand_scores(a, delta, with_bias=layer.bias is not None) * grad_scale
        else:
            if self._batch_labels is None or self._z is None:
                raise DataError("score='rho' needs batch['labels'] and the mimic layer's output.")
            ref_w, ref_b = self._direction_fn.ref_weight, self._direction_fn.ref_bias
            if ref_w.device != a.device:
                self._direction_fn.to(a.device)
                ref_w, ref_b = self._direction_fn.ref_weight, self._direction_fn.ref_bias
            ref_logits = torch.nn.functional.linear(a.float(), ref_w, ref_b)
            scores = rho_scores(self._z.detach(), ref_logits, self._batch_labels.to(a.device))
        n_local = scores.shape[0]
        idx_local = self._batch_idx
        if idx_local is None or idx_local.numel() != n_local:
            raise DataError(f"batch['idx'] has {0 if idx_local is None else idx_local.numel()} entries but the mimic "
                            f"layer saw {n_local} samples; 'idx' must hold one id per sample.")
        if self._world > 1:
            all_scores, offset = self._gather(scores.float().contiguous())
            all_idx, _ = self._gather(idx_local.to(scores.device).long().contiguous())
        else:
            all_scores, offset, all_idx = scores, 0, idx_local
        weights, finite = batch_softmax_weights_checked(all_scores, self.tau)
        all_scores = all_scores if all_scores.dtype == torch.float32 else all_scores.float()
        n_all = all_scores.shape[0]
        local = weights[offset: offset + n_local] if self._world > 1 else weights
        trainer = self._trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        if finite:
            if self.record_scores:
                step = trainer.global_step if trainer is not None else 0
                self.score_log.append(all_idx, weights, all_scores, batch_size=n_all, epoch=epoch, step=step)
            if self._collect_hist:
                self._epoch_rel.append((weights * n_all).cpu())
            self._stats = {"weights": weights, "scores": all_scores, "v_norm": v_norm, "batch_size": n_local}
        return local, epoch >= self.start_epoch

    def _v_norm_now(self) -> float:
        """``||W_ref - W_t||`` of the current weights (logged under the baseline scores)."""
        return self._direction_fn(self._layer.weight, self._layer.bias)[2]

    def _target_direction(self) -> tuple[Tensor, Tensor | None, float]:
        """``W_ref - W_t`` and its norm, recomputed only when the layer's parameters changed (an optimizer step, or
        any in-place update: it bumps the tensor's version counter), not once per micro-batch."""
        w, b = self._params
        # an optimizer step or any in-place update bumps the version counters; a replaced tensor changes id/data_ptr
        key = (id(w), w.data_ptr(), w._version, -1 if b is None else b._version)
        if self._direction is None or key != self._direction_key:
            self._direction = self._direction_fn(w, b)
            self._direction_key = key
        return self._direction

    # ------------------------------------------------------------------ results

    def score_table(self, *, value: str = "relative_weight", by: str = "epoch",
                    num_samples: int | None = None) -> np.ndarray:
        """Dense ``(rounds, num_samples)`` table of recorded values (see :meth:`ScoreLog.table`)."""
        return self.score_log.table(value=value, by=by, num_samples=num_samples)

    def filter(self, binarizer: str = "gmm", aggregator: str = "majority", *, by: str = "epoch",
               num_samples: int | None = None, **kwargs: Any) -> FilterResult:
        """Run :class:`~lightning_ws.gradmimic.MimicScoreFilter` on the recorded relative weights."""
        if len(self.score_log) == 0:
            raise DataError("no scores recorded yet (record_scores=False, or fit has not run).")
        table = self.score_table(by=by, num_samples=num_samples)
        return MimicScoreFilter(binarizer, aggregator, **kwargs).fit(table)

    def save_scores(self, path: str | os.PathLike) -> Path:
        """Write the score log atomically as safetensors (columns ``idx, weight, score, batch_size, epoch, step``)."""
        return save_tensors(path, self.score_log.tensors(), metadata={"method": "gradmimic", "score": self.score,
                                                               "tau": repr(self.tau), "mode": self.mode,
                                                               "mimic_layer": self.mimic_layer})


def reduce_per_sample_loss(pl_module: pl.LightningModule, per_sample_loss: Tensor) -> Tensor:
    """Reduce per-sample losses in ``training_step``: Grad-Mimic weighted sum under an ``all_params`` callback.

    With no attached :class:`GradMimicCallback` in ``mode="all_params"`` this is ``per_sample_loss.mean()``; otherwise
    it returns that callback's :meth:`GradMimicCallback.reduce_loss` (arXiv 2501.06708, "all parameters" option).
    """
    trainer = getattr(pl_module, "_trainer", None)
    cbs = [cb for cb in (trainer.callbacks if trainer is not None else [])
           if isinstance(cb, GradMimicCallback) and cb.mode == "all_params"]
    if len(cbs) > 1:
        raise ConfigError(f"{len(cbs)} GradMimicCallback instances in mode='all_params'; at most one can set the loss.")
    if not cbs or not pl_module.training:
        return per_sample_loss.mean()
    return cbs[0].reduce_loss(per_sample_loss)
