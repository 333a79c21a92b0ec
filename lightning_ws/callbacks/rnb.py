"""R&B's Balance step as a Lightning callback (Ge et al., arXiv 2505.00358), plus same-harness baselines.

The maths lives in :mod:`lightning_ws.rnb` (``mixture``, ``accumulate``, ``fused``); the tracked-layer machinery in
:mod:`lightning_ws.callbacks._tracked`. This file wires hooks, DDP reductions, state and logging.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_ws.callbacks._tracked import TrackedLinear, active_scaler, check_trainer
from lightning_ws.contracts import DOMAIN, SupportsMixture, is_mixture_datamodule
from lightning_ws.errors import ConfigError
from lightning_ws.rnb import config as core
from lightning_ws.rnb.accumulate import DomainAccumulator
from lightning_ws.rnb.capture import DomainGradCapture
from lightning_ws.rnb.config import ACCUMULATIONS, GRAD_METHODS, METHODS
from lightning_ws.rnb.fused import DomainGradSink, FusedForwardHandle, install_fused_forward
from lightning_ws.rnb.mixture import domain_gram, initial_mixture, trajectory_image, validate_mixture
from lightning_ws.tracked_layer import LossReweighter

__all__ = ["ACCUMULATIONS", "METHODS", "RnBCallback"]


class RnBCallback(Callback):
    """Online domain re-weighting by R&B's Balance rule (arXiv 2505.00358) or a baseline, pushing ``p`` to the data.

    For ``method="rnb"``: the tracked ``nn.Linear`` (``layer``) exposes its input ``a`` and output gradient ``delta``
    during the ordinary backward; the per-example gradients ``delta_i^T a_i`` (summed over tokens) are added into
    per-domain sums ``s_d`` with counts ``n_d`` (no second backward, no per-example tensor). Every
    ``steps_per_round`` optimizer steps ``G_ij = <s_i/n_i, s_j/n_j>`` is formed and the mixture is *replaced* by
    ``p = softmax(lam * G p_eval / ||G p_eval||_2)``, then pushed to ``trainer.datamodule.set_mixture(p)`` (any data
    module satisfying :class:`~lightning_ws.contracts.SupportsMixture`).

    Other methods, same interface: ``"doge"`` = multiplicative (accumulating) update ``p <- p * exp(doge_lr * score)``
    on the same normalised score (a DoGE-style ablation, arXiv 2310.15393, without DoGE's proxy training);
    ``"stratified"`` = uniform, fixed; ``"proportional"`` = proportional to domain sizes, fixed. The fixed ones
    register no hooks and cost nothing.

    Defaults for what the paper leaves open (tracked layer, round length, ``lam``, per-example loss units, AMP,
    empty domains, ``prob_floor``, warm-up, sketch memory) and the two ways to collect the per-domain sums
    (``accumulation``: ``"hooks"`` re-derives them from captured factors after the backward; ``"fused"`` routes the
    layer's forward through :func:`~lightning_ws.rnb.fused.fused_linear`, whose backward adds them as a by-product;
    ``"auto"`` uses fused where valid and cheap, ``fused_fallback_reason`` says why not) are documented in
    :mod:`lightning_ws.rnb.config`.

    Sharing the layer: the hooks go through the layer's shared :class:`~lightning_ws.tracked_layer.LayerTap`, so R&B
    reads the plain output gradient even when another callback (Grad-Mimic) re-weights it, whatever the callback order.

    Gradient accumulation: every micro-batch is accumulated; rounds count optimizer steps (guarded on
    ``trainer.global_step``). DDP: each optimizer step's sums and counts are all-reduced (sum) in
    ``on_before_optimizer_step``, so all ranks hold identical accumulators and compute the same update; the new ``p``
    is also broadcast from rank 0. The W&B plot is made on rank 0 only, with no collective inside. Unsupported:
    FSDP/DeepSpeed, manual optimization. Measured overhead: ``benchmarks/bench_rnb.py --only overhead``.

    Logged keys (every round): ``rnb/p_<domain>``, ``rnb/entropy``, ``rnb/round``, ``rnb/updated``,
    ``rnb/gram_diag_mean``, ``rnb/gram_offdiag_mean``, ``rnb/n_<domain>`` (counts of the round), ``rnb/update_ms``;
    with a ``WandbLogger`` also the image ``rnb/mixture_trajectory`` every ``plot_every_n_rounds`` rounds.

    ``state_key`` identity args: ``method``, ``layer``, ``lam``, ``steps_per_round``, ``sketch_dim`` (not
    ``accumulation``: both paths give the same sums, and checkpoints resume across it).

    Args:
        layer: dotted name of the tracked ``nn.Linear`` in the LightningModule.
        method: one of ``"rnb"``, ``"doge"``, ``"stratified"``, ``"proportional"``.
        lam: temperature ``lambda`` (> 0).
        steps_per_round: optimizer steps per round ``K`` (>= 1).
        p_eval: evaluation proportions per domain; ``None`` = ``trainer.datamodule.p_eval``.
        num_domains: ``m``; ``None`` = ``trainer.datamodule.num_domains``.
        sketch_dim: ``None`` (exact) or sketch sizes.
        include_bias: also track the bias gradient.
        normalize: L2-normalise ``G p_eval``.
        prob_floor: uniform mixing fraction in ``[0, 1)``.
        warmup_rounds: rounds trained on the initial mixture before the first update (>= 1).
        loss_reduction: ``"mean"``, ``"token_mean"`` or ``"sum"`` (see above).
        target_key: batch key of ``(B, T)`` targets for ``"token_mean"`` (entries equal to ``ignore_index`` are not
            targets; they must align with the tracked layer's token axis).
        ignore_index: the ignored target value.
        domain_key: batch key of the ``(B,)`` domain ids.
        doge_lr: step size of ``method="doge"``.
        seed: seed of the sketch projections (identical on all ranks).
        plot_every_n_rounds: W&B trajectory image cadence (0 = never).
        accumulation: ``"auto"``, ``"fused"`` or ``"hooks"`` (see above).

    Example:
        >>> cb = RnBCallback(layer="classifier", lam=3.0, steps_per_round=10)
        >>> cb.state_key
        "RnBCallback{'method': 'rnb', 'layer': 'classifier', 'lam': 3.0, 'steps_per_round': 10, 'sketch_dim': None}"
    """

    def __init__(
        self,
        layer: str = "classifier",
        method: Literal["rnb", "doge", "stratified", "proportional"] = "rnb",
        lam: float = 3.0,
        steps_per_round: int = 10,
        p_eval: list[float] | None = None,
        num_domains: int | None = None,
        sketch_dim: int | list[int] | None = None,
        include_bias: bool = True,
        normalize: bool = True,
        prob_floor: float = 0.0,
        warmup_rounds: int = 1,
        loss_reduction: Literal["mean", "token_mean", "sum"] = "mean",
        target_key: str | None = None,
        ignore_index: int = -100,
        domain_key: str = DOMAIN,
        doge_lr: float = 1.0,
        seed: int = 0,
        plot_every_n_rounds: int = 1,
        accumulation: Literal["auto", "fused", "hooks"] = "auto",
    ) -> None:
        sketch_dim = core.check_rnb_args(
            layer=layer, method=method, lam=lam, steps_per_round=steps_per_round, num_domains=num_domains,
            sketch_dim=sketch_dim, prob_floor=prob_floor, warmup_rounds=warmup_rounds, loss_reduction=loss_reduction,
            target_key=target_key, doge_lr=doge_lr, plot_every_n_rounds=plot_every_n_rounds, accumulation=accumulation)
        self.layer, self.method, self.lam = layer, method, float(lam)
        self.steps_per_round = int(steps_per_round)
        self._p_eval_arg = None if p_eval is None else validate_mixture(p_eval, num_domains, name="p_eval")
        self._num_domains_arg = None if num_domains is None else int(num_domains)
        self.sketch_dim = sketch_dim
        self.include_bias, self.normalize = bool(include_bias), bool(normalize)
        self.prob_floor, self.warmup_rounds = float(prob_floor), int(warmup_rounds)
        self.loss_reduction, self.target_key, self.ignore_index = loss_reduction, target_key, int(ignore_index)
        self.domain_key, self.doge_lr, self.seed = domain_key, float(doge_lr), int(seed)
        self.plot_every_n_rounds = int(plot_every_n_rounds)
        self.accumulation = accumulation
        # runtime state
        self.m: int | None = None
        self.p_eval: torch.Tensor | None = None
        self.p: torch.Tensor | None = None
        self.acc: DomainAccumulator | None = None
        self.round = self.steps_in_round = 0
        self.last_global_step = -1
        self.history: list[list[float]] = []
        self.domain_names: list[str] = []
        self._tracked = TrackedLinear("RnBCallback")
        self._capture: DomainGradCapture | None = None  # the per-micro-batch capture (gradient methods)
        self._fused_handle: FusedForwardHandle | None = None
        self._pending_state: dict[str, Any] | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        """Identity: method, layer, lam, steps_per_round, sketch_dim."""
        return self._generate_state_key(method=self.method, layer=self.layer, lam=self.lam,
                                        steps_per_round=self.steps_per_round, sketch_dim=self.sketch_dim)

    @property
    def sums(self) -> torch.Tensor | None:
        """The round's per-domain gradient sums (``None`` for the fixed methods and before ``setup``)."""
        return None if self.acc is None else self.acc.sums

    @property
    def counts(self) -> torch.Tensor | None:
        """The round's per-domain example counts."""
        return None if self.acc is None else self.acc.counts

    @property
    def capture_counts(self) -> dict[str, int]:
        """Tracked-layer calls captured per path since ``setup``: ``per_example`` / ``grouped`` (fused), ``hooks``."""
        return {"per_example": 0, "grouped": 0, "hooks": 0} if self._capture is None else self._capture.capture_counts

    @property
    def fused_fallback_reason(self) -> str | None:
        """Why the last capture (or ``setup``) used the hook path instead of the fused one (``None``: never)."""
        return None if self._capture is None else self._capture.fallback_reason

    # ------------------------------------------------------------------ setup
    def _target(self, trainer: pl.Trainer) -> SupportsMixture:
        dm = trainer.datamodule
        if is_mixture_datamodule(dm):
            return dm
        raise ConfigError("RnBCallback needs a datamodule with set_mixture(p) (the SupportsMixture contract of "
                          "lightning_ws.contracts, e.g. lightning_ws.datamodules.rnb.MixtureDataModule or "
                          "TensorMixtureDataModule); pass datamodule= to trainer.fit.")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Validate the setup, resolve ``m``/``p_eval``/the layer, allocate accumulators and register hooks."""
        if stage != "fit":
            return
        check_trainer(trainer, pl_module, "RnBCallback",
                      why_automatic="it undoes Lightning's loss normalisation for gradient accumulation")
        dm = self._target(trainer)
        self.m = int(self._num_domains_arg if self._num_domains_arg is not None else dm.num_domains)
        names = list(dm.domain_names or [])
        self.domain_names = names if len(names) == self.m else [str(i) for i in range(self.m)]
        self._tracked.read_facts(trainer)
        if self.method in GRAD_METHODS:
            self.p_eval = core.resolve_p_eval(self._p_eval_arg, dm.p_eval, self.m)
        if self.p is None:
            self.p = initial_mixture(self.m, dm.domain_sizes, proportional=self.method == "proportional")
        if self.method in GRAD_METHODS:
            reweighters = [type(cb).__name__ for cb in trainer.callbacks
                           if isinstance(cb, LossReweighter) and cb.reweights_loss]
            if reweighters:
                raise ConfigError(f"{reweighters[0]} re-weights the training loss per sample (Grad-Mimic's "
                                  f"mode='all_params'), so every per-example gradient R&B reads would carry that "
                                  f"weight. Use GradMimicCallback(mode='layer_only'): it leaves the output gradient "
                                  f"R&B reads untouched.")
            module = self._tracked.attach(trainer, pl_module, self.layer, self._forward_hook)
            self._capture = DomainGradCapture.for_layer(
                module, self.m, include_bias=self.include_bias, sketch_dim=self.sketch_dim, seed=self.seed,
                distributed=trainer.world_size > 1, loss_reduction=self.loss_reduction, ignore_index=self.ignore_index,
                force_fused=self.accumulation == "fused", previous=self.acc)
            self.acc = self._capture.acc
            reason = None if self.accumulation == "hooks" else \
                core.fused_unavailable(self.accumulation, self.sketch_dim, module, self.layer)
            if reason is None and self.accumulation != "hooks":
                self._fused_handle = install_fused_forward(module, self._plan_fused)
            self._capture.fallback_reason = reason
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        dm.set_mixture(self.p.clone())

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hooks and restore the tracked layer's forward."""
        self._remove_hooks()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Remove the hooks and restore the tracked layer's forward (``teardown`` is not reached on every error)."""
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        self._tracked.detach()
        if self._fused_handle is not None:
            self._fused_handle.remove()
            self._fused_handle = None
        if self._capture is not None:
            self._capture.stop()

    # ------------------------------------------------------------------ capture
    def _forward_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._capture.on_forward(inputs, output, self._tracked.handle.watch_grad)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Read the micro-batch's domain ids (and targets for ``token_mean``)."""
        if self.method not in GRAD_METHODS:
            return
        self._capture.start_batch(batch, self.domain_key, self.target_key, float(trainer.accumulate_grad_batches))

    def _plan_fused(self, module: nn.Linear, x: torch.Tensor) -> DomainGradSink | None:
        """Called by the tracked layer's forward: a sink for the fused backward, or ``None`` (plain forward; the hook
        path captures the call if it is a training call)."""
        capture = self._capture
        fallbacks = capture.fallbacks
        sink = capture.plan(module, x, scaler_active=self._tracked.scaler is not None,
                            others_rewrite=self._tracked.handle.others_rewrite)
        if capture.fallbacks > fallbacks and self.accumulation == "fused" and "fallback" not in self._warned:
            rank_zero_warn(f"RnBCallback(accumulation='fused'): using the hook path because "
                           f"{capture.fallback_reason}.")
            self._warned.add("fallback")
        return sink

    @staticmethod
    def _amp_scale(trainer: pl.Trainer) -> float | None:
        """The active GradScaler's scale, or ``None`` without loss scaling."""
        return float(scaler.get_scale()) if (scaler := active_scaler(trainer)) is not None else None

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hook path: add this micro-batch's per-example tracked-layer gradients into the per-domain sums
        (:meth:`~lightning_ws.rnb.capture.DomainGradCapture.flush`; fused calls were added by their backward)."""
        if self._capture is None or self._capture.domains is None:
            return  # fixed-mixture methods never capture
        if not self._capture.flush(self._tracked.loss_scale()) and "no_capture" not in self._warned:
            rank_zero_warn(f"RnBCallback: layer {self.layer!r} produced no gradient in this backward pass; nothing "
                           f"is accumulated. Check `layer`.")
            self._warned.add("no_capture")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Under DDP, all-reduce this optimizer step's contributions so that every rank holds the global sums."""
        if self.method in GRAD_METHODS and self.acc.distributed:
            self.acc.merge_step(lambda t: trainer.strategy.reduce(t, reduce_op="sum"))

    # ------------------------------------------------------------------ update
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Anchor the optimizer-step counter (a restored value is kept) and re-push ``p``."""
        if self.last_global_step < 0:
            self.last_global_step = int(trainer.global_step)
        if self.p is not None:
            self._target(trainer).set_mixture(self.p.clone())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """After each optimizer step count the round; at its end update ``p`` and push it."""
        if self._capture is not None:
            self._capture.stop()
        if not TrackedLinear.new_optimizer_step(trainer, self.last_global_step):
            return  # still accumulating micro-batches
        self.last_global_step = int(trainer.global_step)
        self.steps_in_round += 1
        if self.steps_in_round >= self.steps_per_round:
            self._end_round(trainer, pl_module)

    def _end_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        self.round += 1
        self.steps_in_round = 0
        updated, stats, counts = False, {}, None
        logging = trainer.logger is not None or bool(trainer.loggers)  # statistics are only made to be logged
        if self.method in GRAD_METHODS:
            acc = self.acc  # already global: reduced every optimizer step under DDP
            counts = acc.counts.clone() if logging else None
            if self.round >= self.warmup_rounds:
                self.p, updated, stats = core.round_update(
                    self.method, acc.sums, acc.counts, self.p, self.p_eval, lam=self.lam, doge_lr=self.doge_lr,
                    normalize=self.normalize, prob_floor=self.prob_floor, with_stats=logging)
            acc.reset()
        # identical on every rank already; broadcast removes any floating-point divergence (all ranks call it)
        self.p = torch.as_tensor(trainer.strategy.broadcast(self.p.clone(), src=0), dtype=torch.float64).cpu()
        self._target(trainer).set_mixture(self.p.clone())
        self.history.append(self.p.tolist())
        if logging:
            self._log(trainer, pl_module, updated, stats, counts, 1000.0 * (time.perf_counter() - t0))

    # ------------------------------------------------------------------ logging
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, updated: bool, stats: dict[str, float],
             counts: torch.Tensor | None, elapsed_ms: float) -> None:
        pl_module.log_dict(core.round_log_values(self.p, self.domain_names, self.round, updated, stats, counts,
                                                 elapsed_ms), on_step=True, on_epoch=False)
        if self.plot_every_n_rounds and self.round % self.plot_every_n_rounds == 0 and self._tracked.wandb \
                and trainer.is_global_zero:
            import wandb

            TrackedLinear.wandb_log(trainer, {"rnb/mixture_trajectory": wandb.Image(
                self.trajectory_image(), caption=f"round {self.round}")})

    def trajectory_image(self) -> np.ndarray:
        """An RGB ``(H, W, 3)`` uint8 stack plot of the mixture per round (matplotlib, no pyplot state)."""
        hist = self.history if self.history else [[float(v) for v in self.p]]
        return trajectory_image(hist, self.domain_names, f"{self.method} mixture")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``p``, accumulators, counts, round/step counters, history (plain tensors/numbers/lists)."""
        return core.pack_state(self.method, self.p, self.round, self.steps_in_round, self.last_global_step,
                               self.history, self.acc)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before or after ``setup``)."""
        state = dict(state_dict)
        core.unpack_state(state, self.method, self.m)  # checks the version and the method now
        if self.m is None:
            self._pending_state = state
        else:
            self._apply_state(state)

    def _apply_state(self, state: dict[str, Any]) -> None:
        values = core.unpack_state(state, self.method, self.m)
        if values["p"] is not None:
            self.p = values["p"]
        self.round, self.steps_in_round = values["round"], values["steps_in_round"]
        self.last_global_step, self.history = values["last_global_step"], values["history"]
        if "sums" in values and self.acc is not None:
            self.acc.load(values["sums"], values["counts"])

    # ------------------------------------------------------------------ convenience
    @property
    def mixture(self) -> torch.Tensor | None:
        """The current mixture ``p`` (``None`` before ``setup``)."""
        return None if self.p is None else self.p.clone()

    def gram(self) -> torch.Tensor | None:
        """The Gram matrix of the current (local, un-reduced) accumulators, for inspection."""
        return None if self.acc is None else domain_gram(self.acc.sums.cpu(), self.acc.counts.cpu())[0]
