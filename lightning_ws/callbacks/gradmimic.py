"""Grad-Mimic online batch re-weighting (Huang et al., "Evaluating Sample Utility for (Efficient) Data Selection by
Mimicking Model Weights", arXiv 2501.06708), with the GraNd and RHO-LOSS baselines behind the same interface.

The maths lives in :mod:`lightning_ws.gradmimic` (no Lightning), the tracked-layer machinery in
:mod:`lightning_ws.callbacks._tracked`; this module is the thin Lightning layer: rescaling of hooked gradients (mean
reduction, gradient accumulation, AMP loss scale), cross-rank gathering, gradient replacement once per optimizer step,
the per-sample score log, and logging.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_ws.callbacks._tracked import StateKeyCache, TrackedLinear, check_trainer, gather_rows
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.gradmimic import config as core
from lightning_ws.gradmimic.config import DirectionCache, Micro
from lightning_ws.gradmimic.filters import FilterResult, MimicScoreFilter
from lightning_ws.gradmimic.loss import reduce_per_sample_loss
from lightning_ws.gradmimic.records import ScoreLog
from lightning_ws.gradmimic.reference import ReferenceRunner, output_contains, reference_forward_active
from lightning_ws.gradmimic.scores import TargetDirection, batch_scores, weighted_layer_grad
from lightning_ws.gradmimic.signal import GradMimicSignalWarning, SignalMonitor
from lightning_ws.io import save_tensors
from lightning_ws.tracked_layer import resolve_linear

__all__ = ["GradMimicCallback", "GradMimicSignalWarning", "reduce_per_sample_loss"]


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

    Modes (details in :mod:`lightning_ws.gradmimic.config`): ``"layer_only"`` (paper default) re-weights the mimic
    layer's gradient only (in-graph for a linear probe on one process, else by replacing its ``.grad`` once per
    optimizer step); ``"all_params"`` re-weights every parameter through the loss, which the module must reduce with
    :func:`reduce_per_sample_loss` (or :meth:`reduce_loss`) in ``training_step``.

    The defaults the paper leaves open (gradient accumulation, DDP, AMP, ``v = 0``, per-sample-loss units, reference
    noise, sharing the layer with R&B through its :class:`~lightning_ws.tracked_layer.LayerTap`) and where the mimic
    direction carries signal (``space``: ``"weights"`` is the paper's direction, checked by the alignment kappa when
    the layers below are not provably the reference's; ``"outputs"`` projects in the output layer's space on the
    reference's own outputs; ``"auto"`` picks ``"weights"`` only when the layers below are shared, and how the
    reference is run on ``forward_module``) are documented in :mod:`lightning_ws.gradmimic.config`.

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
        space: ``"auto"``, ``"weights"`` or ``"outputs"`` (see above).
        forward_module: dotted name of the submodule that ``training_step`` calls with the batch inputs and that
            contains the mimic layer; ``""`` = the LightningModule's own forward.
        min_alignment: kappa below which the weight-space direction is declared to carry no signal (``None``: do not
            check; only when you know the layer's inputs are the reference's).
        check_every_n_steps: optimizer steps between alignment checks after the first (0: only the first check).
        on_no_signal: ``"raise"`` (refuse with the reason) or ``"warn"`` when the direction carries no signal at the
            start; drops during training always warn (:class:`GradMimicSignalWarning`) and make :meth:`filter` refuse.

    Raises:
        ConfigError: invalid arguments (here), or in ``setup``: unknown/non-linear mimic layer, reference of another
        architecture, manual optimization, FSDP/DeepSpeed; at the first steps: no signal in the mimic direction (see above).

    Example::

        cb = GradMimicCallback("head", reference="reference.safetensors", tau=0.5)
        trainer = pl.Trainer(callbacks=[cb], max_epochs=5)
        trainer.fit(model, datamodule)        # batches carry "idx"
        result = cb.filter("gmm", "majority") # keep mask, quality estimate, top-p
    """

    STATE_VERSION = core.STATE_VERSION

    def __init__(
        self,
        mimic_layer: str,
        reference: str | os.PathLike | Mapping[str, Tensor] | nn.Module,
        tau: float = 1.0,
        mode: Literal["layer_only", "all_params"] = "layer_only",
        score: Literal["proj", "cos", "grand", "rho"] = "proj",
        start_epoch: int = 0,
        record_scores: bool = True,
        loss_reduction: Literal["mean", "sum"] = "mean",
        strict_reference: bool = True,
        reference_noise_std: float = 0.0,
        seed: int = 0,
        eps: float = 1e-12,
        space: Literal["auto", "weights", "outputs"] = "auto",
        forward_module: str = "",
        min_alignment: float | None = 0.5,
        check_every_n_steps: int = 50,
        on_no_signal: Literal["raise", "warn"] = "raise",
    ) -> None:
        super().__init__()
        tau = core.check_gradmimic_args(
            mimic_layer=mimic_layer, reference=reference, tau=tau, mode=mode, score=score, start_epoch=start_epoch,
            loss_reduction=loss_reduction, reference_noise_std=reference_noise_std, eps=eps, space=space,
            forward_module=forward_module, min_alignment=min_alignment, check_every_n_steps=check_every_n_steps,
            on_no_signal=on_no_signal)
        self.mimic_layer, self.reference, self.tau, self.mode, self.score = mimic_layer, reference, tau, mode, score
        self.start_epoch, self.record_scores, self.loss_reduction = start_epoch, bool(record_scores), loss_reduction
        self.strict_reference, self.reference_noise_std = bool(strict_reference), float(reference_noise_std)
        self.seed, self.eps, self.space, self.forward_module = int(seed), float(eps), space, forward_module
        self.min_alignment = None if min_alignment is None else float(min_alignment)
        self.check_every_n_steps, self.on_no_signal = check_every_n_steps, on_no_signal

        self.score_log = ScoreLog()
        self.reweighted_steps = 0
        self._tracked = TrackedLinear("Grad-Mimic")
        self._monitor = SignalMonitor(mimic_layer, on_no_signal, self.min_alignment, check_every_n_steps)
        self._direction_fn: TargetDirection | None = None
        self._direction = DirectionCache()
        self._runner: ReferenceRunner | None = None  # runs the reference on the training inputs, when needed
        self._module_hook: Any = None
        self._output_checked = False
        self._trainer: pl.Trainer | None = None
        self._micro = Micro()
        self._acc: tuple[Tensor, Tensor | None] | None = None  # sum of weighted micro-batch gradients of the step
        self._step_applied = False
        self._stats: dict[str, Any] = {}
        self._last_logged_step = -1
        self._epoch_rel: list[Tensor] = []
        self._state_key = StateKeyCache()

    # ------------------------------------------------------------------ identity and state

    @property
    @override
    def state_key(self) -> str:
        return self._state_key.get(self, mimic_layer=self.mimic_layer, score=self.score, mode=self.mode)

    @override
    def state_dict(self) -> dict[str, Any]:
        return core.pack_state(self.reweighted_steps, self.score_log, self._monitor)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = core.unpack_state(state_dict)
        self.reweighted_steps = int(state["reweighted_steps"])
        self.score_log.load_state_dict(state["log"])
        self._monitor.load_state_dict(state["signal"])

    @property
    def signal(self) -> dict[str, Any]:
        """What the run's checks found: ``ok`` (the direction carries signal as far as checked), ``space`` (the
        resolved score space), ``reasons`` (why not), ``alignment`` (``(step, kappa, rows)`` per alignment check)."""
        return self._monitor.summary()

    @property
    def reweights_loss(self) -> bool:
        """Whether this callback sets the training loss (``mode="all_params"``; see :func:`reduce_per_sample_loss`)."""
        return self.mode == "all_params"

    @property
    def _in_graph(self) -> bool:
        """Whether the last micro-batch was re-weighted inside autograd (the linear-probe path)."""
        return self._micro.in_graph

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_trainer(trainer, pl_module, "GradMimicCallback",
                      why_automatic="it replaces gradients between backward and the optimizer step")
        layer = resolve_linear(pl_module, self.mimic_layer, what="mimic_layer", method="Grad-Mimic")
        if not layer.weight.requires_grad:
            raise ConfigError(f"mimic_layer {self.mimic_layer!r} is frozen (weight.requires_grad=False); the mimic "
                              f"layer must be trained.")
        model_state = pl_module.state_dict()
        ref, full, ref_w, ref_b, self._direction_fn = core.prepare_reference(
            self.reference, model_state, self.mimic_layer, strict=self.strict_reference,
            has_bias=layer.bias is not None, noise_std=self.reference_noise_std, seed=self.seed,
            device=layer.weight.device)
        self._trainer = trainer
        self._direction = DirectionCache()
        self._remove_hooks()
        self._resolve_space(pl_module, ref, model_state, full=full, ref_w=ref_w, ref_b=ref_b)
        # the in-graph re-weighting (one process, layer_only) rewrites the layer's output gradient: it is declared to
        # the layer's tap, which runs it after every other tracker of the layer has read the plain gradient
        self._tracked.attach(trainer, pl_module, self.mimic_layer, self._forward_hook, what="mimic_layer",
                             rewrites=self.mode == "layer_only" and trainer.world_size == 1)
        if self._runner is not None:
            self._module_hook = self._runner.module.register_forward_hook(self._module_forward_hook, with_kwargs=True)

    def _resolve_space(self, pl_module: pl.LightningModule, ref: Mapping[str, Tensor],
                       model_state: Mapping[str, Tensor], *, full: bool, ref_w: Tensor, ref_b: Tensor | None) -> None:
        """Decide the score space and whether the alignment must be checked; prepare the runnable reference."""
        others_train, shared = core.layers_below(pl_module.named_parameters(), ref, model_state, self.mimic_layer,
                                                 full=full)
        self._output_checked, self._runner = False, None
        # a fresh fit (a resume restores the findings afterwards)
        if not self._monitor.choose_space(self.space, score=self.score, others_train=others_train, shared=shared,
                                          full=full):
            return
        fwd = core.forward_module_of(pl_module, self.forward_module)
        self._runner = ReferenceRunner(fwd, ref, self.forward_module, self.mimic_layer, ref_w, ref_b)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracked.read_facts(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._trainer = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        self._tracked.detach()
        if self._module_hook is not None:
            self._module_hook.remove()
            self._module_hook = None

    # ------------------------------------------------------------------ hooks on the layer

    def _forward_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if reference_forward_active():
            if self._runner is not None:
                self._runner.observe(output)
            return
        micro = self._micro
        if not micro.capturing or not torch.is_grad_enabled() or not isinstance(output, Tensor) \
                or not output.requires_grad:
            return
        x = inputs[0]
        micro.layer_called(x, output, self.mimic_layer)
        if self.mode == "layer_only":
            # In-graph re-weighting when nothing below the layer gets a gradient through its input (a linear probe
            # on frozen features, the paper's setting), the softmax needs no collective (one process) and the output
            # is float32/64: the output-gradient hook returns c_i * delta_i, so autograd's own weight/bias gradient
            # is already the weighted one (no second matmul, no replacement). Otherwise the general path below.
            micro.in_graph = (not x.requires_grad and self._tracked.world == 1
                              and output.dtype in (torch.float32, torch.float64))
            if micro.in_graph:
                self._tracked.handle.rewrite_grad(self._grad_hook_in_graph)
            else:
                self._tracked.handle.watch_grad(self._grad_hook)

    def _grad_hook(self, grad: Tensor) -> None:
        self._micro.delta = grad.detach()

    def _grad_hook_in_graph(self, grad: Tensor) -> Tensor | None:
        # every tensor used here is detached (no graph is recorded without a no_grad context)
        micro = self._micro
        micro.delta = grad = grad.detach() if grad.requires_grad else grad
        a = micro.a
        weights, apply = self._weights(a, grad, grad_scale=self._units_factor(a.shape[0]))
        if not apply:
            return None
        self._step_applied = True
        if math.isinf(self.tau):
            return None  # uniform weights: the plain gradient, exactly
        return core.scale_rows(grad, core.sample_coeffs(weights, self.loss_reduction))

    def _module_forward_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                             output: Any) -> None:
        """After the model's forward on the training batch: run the reference on the same arguments when needed."""
        micro = self._micro
        if reference_forward_active() or not micro.capturing or not micro.ref_due or not torch.is_grad_enabled():
            return
        if micro.z is None or micro.a is None or micro.z_ref is not None:
            return  # the mimic layer did not run in this call, or the reference already ran for this micro-batch
        if self._monitor.space == "outputs" and not self._output_checked:
            if not output_contains(output, micro.z):
                raise core.not_output_layer(self.mimic_layer, self._runner.name)
            self._output_checked = True
        micro.z_ref = self._runner.run(args, kwargs, self._tracked.module.weight, tuple(micro.z.shape))
        step = self._trainer.global_step if self._trainer is not None else 0
        if self._monitor.alignment_due(step):  # every rank measures on the same steps: the collective is aligned
            d = self._direction_fn.to(micro.a.device) if self._direction_fn.device != micro.a.device \
                else self._direction_fn
            reduce = (lambda c: self._trainer.strategy.reduce(c, reduce_op="sum")) if self._tracked.world > 1 else None
            self._monitor.measure(micro.a, micro.z_ref, d.ref_weight, d.ref_bias, step, reduce)

    def _units_factor(self, batch_size: int) -> float:
        """Factor from a hooked output gradient to per-sample-loss units (accumulation, AMP scale, reduction)."""
        return core.units_factor(batch_size, accum=self._tracked.accum, loss_scale=self._tracked.loss_scale(),
                                 loss_reduction=self.loss_reduction)

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._micro = Micro()
        idx, labels = core.read_batch(batch, need_labels=self.score == "rho")
        ref_due = self._runner is not None and (self._monitor.space == "outputs" or self.score == "rho"
                                                or self._monitor.alignment_due(trainer.global_step))
        self._micro = Micro(idx, labels, ref_due)

    def reduce_loss(self, per_sample_loss: Tensor) -> Tensor:
        """Reduce per-sample losses ``(B,)``: the weighted sum in ``"all_params"`` mode, else the plain reduction.

        Call inside ``training_step`` after the forward pass (see :func:`reduce_per_sample_loss`).
        """
        if per_sample_loss.dim() != 1:
            raise DataError(f"per_sample_loss must have shape (B,), got {tuple(per_sample_loss.shape)}.")
        plain = per_sample_loss.mean() if self.loss_reduction == "mean" else per_sample_loss.sum()
        micro = self._micro
        if self.mode != "all_params" or not micro.capturing:
            return plain
        micro.check_loss(per_sample_loss, self.mimic_layer)
        (delta,) = torch.autograd.grad(per_sample_loss.sum(), micro.z, retain_graph=True)
        weights_local, apply = self._weights(micro.a, delta, grad_scale=1.0)
        micro.weighted = True
        if not apply:
            return plain
        return self._tracked.world * (weights_local.to(per_sample_loss.dtype) * per_sample_loss).sum()

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        micro = self._micro
        if not micro.capturing:
            return
        micro.capturing = False
        micro.check_backward(self.mode, self.mimic_layer)
        a, delta_hooked = micro.a, micro.delta
        if self.mode == "all_params" or micro.in_graph:  # weighted in the loss, or re-weighted inside backward
            if micro.in_graph:
                micro.clear()
            return
        with torch.no_grad():
            weights_local, apply = self._weights(a, delta_hooked, grad_scale=self._units_factor(a.shape[0]))
            micro.clear()
            if not apply:
                return
            self._step_applied = True
            if math.isinf(self.tau):
                return  # uniform weights on every micro-batch: the plain gradient is the weighted one, exactly
            gw, gb = weighted_layer_grad(a, delta_hooked, core.sample_coeffs(weights_local, self.loss_reduction),
                                         with_bias=self._tracked.module.bias is not None)
            self._acc = core.add_weighted_grad(self._acc, gw, gb)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.mode != "layer_only" or not self._step_applied:
            return
        self._step_applied = False
        acc, self._acc = self._acc, None
        if acc is None:  # in-graph path or tau=inf: .grad already holds the weighted gradient
            self.reweighted_steps += 1
            return
        if self._tracked.replace_grad(trainer, optimizer, *acc):  # every rank reaches this once per optimizer step
            self.reweighted_steps += 1

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        micro = self._micro
        micro.capturing = False
        micro.a = micro.z = micro.delta = micro.z_ref = None
        if self._monitor.new_kappa is not None:
            pl_module.log("gradmimic/alignment_kappa", self._monitor.new_kappa, on_step=True, on_epoch=False,
                          batch_size=1)
            self._monitor.new_kappa = None
        stats, self._stats = self._stats, {}
        # Lightning's self.log costs milliseconds per call; log at the trainer's logging cadence, on optimizer steps,
        # and compute the statistics only then (the step path keeps references: no reductions, no syncs)
        step = trainer.global_step
        if not stats or step == self._last_logged_step or step % self._tracked.log_every != 0:
            return
        self._last_logged_step = step
        values = core.step_log_values(stats, self._v_norm_now)
        self._monitor.observe_weights(values["gradmimic/max_relative_weight"])
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=int(stats["batch_size"]))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # flat weights on every logging step of the epoch (the same statistics on every rank: gathered weights)
        self._monitor.end_epoch(trainer.current_epoch, self.tau, judged=self.score in ("proj", "cos"))
        from lightning.pytorch.loggers import WandbLogger

        from lightning_ws.gradmimic.outputs import write_epoch_outputs

        # per-sample scores/weights/keep mask/quality to the run folder and W&B
        write_epoch_outputs(self, trainer, [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)])
        rel = torch.cat(self._epoch_rel) if self._epoch_rel else None
        self._epoch_rel = []
        if rel is not None and trainer.is_global_zero:
            import wandb

            TrackedLinear.wandb_log(trainer, {"gradmimic/relative_weight_hist": wandb.Histogram(rel.numpy())})

    # ------------------------------------------------------------------ internals

    def _weights(self, a: Tensor, delta: Tensor, *, grad_scale: float) -> tuple[Tensor, bool]:
        """Local scores -> global softmax -> (this rank's weights, whether to apply them); records and stats.

        ``delta`` times ``grad_scale`` is the output gradient in per-sample-loss units.
        """
        micro = self._micro
        direction = self._target_direction() if self.score in ("proj", "cos") else None
        v_norm = None if direction is None else direction[2]  # grand/rho: the norm is computed when logged
        # rho with trained layers below uses the reference's own outputs
        ref_outputs = micro.ref_outputs(self.score, self._monitor.space, self._runner is not None, self.forward_module)
        if self.score == "rho" and self._direction_fn.device != a.device:
            self._direction_fn.to(a.device)
        scores = batch_scores(self.score, a, delta, grad_scale=grad_scale, direction=direction, outputs=micro.z,
                              ref_outputs=ref_outputs,
                              ref_head=(self._direction_fn.ref_weight, self._direction_fn.ref_bias),
                              labels=micro.labels, with_bias=self._tracked.module.bias is not None, eps=self.eps)
        gather = (lambda t: gather_rows(self._trainer, t)) if self._tracked.world > 1 else None
        weights, finite, all_scores, all_idx, local = core.global_weights(scores, micro.idx, self.tau, gather)
        n_all, n_local = all_scores.shape[0], local.shape[0]
        trainer = self._trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        if finite:
            if self.record_scores:
                step = trainer.global_step if trainer is not None else 0
                self.score_log.append(all_idx, weights, all_scores, batch_size=n_all, epoch=epoch, step=step)
            if self._tracked.wandb:
                self._epoch_rel.append((weights * n_all).cpu())
            self._stats = {"weights": weights, "scores": all_scores, "v_norm": v_norm, "batch_size": n_local}
        return local, epoch >= self.start_epoch

    def _v_norm_now(self) -> float:
        """``||W_ref - W_t||`` of the current weights (logged under the baseline scores)."""
        return self._direction_fn(self._tracked.module.weight, self._tracked.module.bias)[2]

    def _target_direction(self) -> tuple[Tensor, Tensor | None, float]:
        """``W_ref - W_t`` and its norm (cached until the layer's parameters change: :class:`DirectionCache`)."""
        return self._direction.get(self._direction_fn, self._tracked.module.weight, self._tracked.module.bias)

    # ------------------------------------------------------------------ results

    def score_table(self, *, value: str = "relative_weight", by: str = "epoch",
                    num_samples: int | None = None) -> np.ndarray:
        """Dense ``(rounds, num_samples)`` table of recorded values (see :meth:`ScoreLog.table`)."""
        return self.score_log.table(value=value, by=by, num_samples=num_samples)

    def filter(self, binarizer: str = "gmm", aggregator: str = "majority", *, by: str = "epoch",
               num_samples: int | None = None, **kwargs: Any) -> FilterResult:
        """Run :class:`~lightning_ws.gradmimic.MimicScoreFilter` on the recorded relative weights.

        Refuses (DataError; with ``on_no_signal="warn"`` in ``kwargs``: warns and returns ``reliable=False``, quality
        NaN) when the training-time checks found no signal (:attr:`signal`) or the table itself is flat or
        inconsistent between epochs.
        """
        if len(self.score_log) == 0:
            raise DataError("no scores recorded yet (record_scores=False, or fit has not run).")
        table = self.score_table(by=by, num_samples=num_samples)
        reasons = () if self._monitor.ok else tuple(self._monitor.reasons)
        return MimicScoreFilter(binarizer, aggregator, **kwargs).fit(table, no_signal_reasons=reasons)

    def save_scores(self, path: str | os.PathLike) -> Path:
        """Write the score log atomically as safetensors (columns ``idx, weight, score, batch_size, epoch, step``)."""
        return save_tensors(path, self.score_log.tensors(), metadata=core.score_metadata(
            score=self.score, tau=self.tau, mode=self.mode, mimic_layer=self.mimic_layer, monitor=self._monitor))
