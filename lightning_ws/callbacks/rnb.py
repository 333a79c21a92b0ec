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
from lightning_ws.rnb.accumulate import DomainAccumulator
from lightning_ws.rnb.capture import DomainGradCapture
from lightning_ws.rnb.fused import DomainGradSink, FusedForwardHandle, fused_blocker, install_fused_forward
from lightning_ws.rnb.mixture import (
    domain_gram,
    gram_stats,
    initial_mixture,
    mixture_entropy,
    multiplicative_update,
    rnb_update,
    trajectory_image,
    validate_mixture,
)
from lightning_ws.tracked_layer import LossReweighter, check_state_version

__all__ = ["RnBCallback", "METHODS", "ACCUMULATIONS"]

#: Mixture rules behind the same interface.
METHODS = ("rnb", "doge", "stratified", "proportional")
_GRAD_METHODS = ("rnb", "doge")
#: Ways to collect the per-domain sums (see ``RnBCallback``'s ``accumulation``).
ACCUMULATIONS = ("auto", "fused", "hooks")
_REDUCTIONS = ("mean", "token_mean", "sum")
_STATE_VERSION = 1


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

    Defaults for what the paper leaves open (arXiv 2505.00358, spec §15):

    * tracked layer: ``"classifier"`` (the head of :class:`lightning_ws.modules.TextClassifier`); bias included;
    * round length ``steps_per_round=10`` optimizer steps (choose it so ``K * B / m >= 20``); ``lam=3`` (the one value
      the paper reports); normalised logits (main text; ``normalize=False`` gives the appendix's Algorithm 3);
    * per-example loss (:func:`~lightning_ws.rnb.accumulate.example_scale`): ``loss_reduction="mean"`` multiplies
      ``delta`` by the micro-batch size (and by ``accumulate_grad_batches``, which Lightning divides the loss by);
      ``"token_mean"`` (with ``target_key``) weights example ``i`` by ``N_tokens / n_i`` so each example's loss is the
      mean over its own target tokens; ``"sum"`` applies no factor;
    * AMP: output gradients are divided by the active GradScaler's scale; under loss scaling, micro-batches with
      non-finite gradients (skipped AMP steps) are not accumulated (without a GradScaler there is no such check: the
      optimizer applies those gradients too, and a round whose Gram matrix is non-finite keeps ``p``);
    * empty domain in a round: it is left out of ``G p_eval`` and keeps its previous probability; ``||G p_eval|| = 0``
      or non-finite: ``p`` is kept; ``prob_floor`` (default 0) mixes in uniform so that ``p_i >= prob_floor / m``;
      ``warmup_rounds=1``: the first round trains on the initial mixture (uniform, as in the paper);
    * memory: exact accumulators ``m x d_out x (d_in + 1)`` fp32, or a Kronecker random-projection sketch
      (``sketch_dim=(k_out, k_in)`` or an int for both), an unbiased estimate of ``G`` (not in the paper).

    Two ways to collect the exact per-domain sums (``accumulation``): ``"hooks"`` captures ``a`` and ``delta`` and
    calls :func:`~lightning_ws.rnb.accumulate.accumulate_domain_grads` in ``on_after_backward`` (about one extra
    weight-gradient computation of the layer); ``"fused"`` routes the layer's forward through
    :func:`~lightning_ws.rnb.fused.fused_linear` while a training micro-batch is captured (an instance-level
    ``forward`` set in ``setup`` and removed in ``teardown`` / ``on_exception``), whose backward derives autograd's
    weight gradient from the per-example products and adds the per-domain sums as a by-product (about no extra GEMM;
    see :mod:`lightning_ws.rnb.fused`). ``"auto"`` (default) uses fused where it is valid and cheap and the hooks
    otherwise (``fused_fallback_reason`` says why): with a ``sketch_dim``; for a layer that is not exactly
    ``nn.Linear`` or already has an instance ``forward``; per call under autocast or an active GradScaler, for inputs
    that are not 2-D/3-D or not float32/float64, for ``token_mean`` above
    :data:`~lightning_ws.rnb.fused.FUSED_PER_EXAMPLE_MAX_ELEMENTS`, and while another callback re-weights the same
    layer's output gradient (Grad-Mimic's in-graph path: the fused backward would see the re-weighted gradient).
    ``"fused"`` ignores the size limit, raises ``ConfigError`` for a sketch or a non-``nn.Linear`` layer, and warns
    once when a call falls back. The fused backward is once-differentiable.

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

    Attributes:
        fused_fallback_reason: why the last capture (or ``setup``) used the hook path instead of the fused one
            (``None`` if it never fell back).
        capture_counts: tracked-layer calls captured per path since ``setup``: ``per_example`` / ``grouped`` (fused)
            and ``hooks``.

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
        for name, value, options in (("method", method, METHODS), ("loss_reduction", loss_reduction, _REDUCTIONS),
                                     ("accumulation", accumulation, ACCUMULATIONS)):
            if value not in options:  # LightningCLI checks the Literal; direct Python use is checked here
                raise ConfigError(f"{name} must be one of {options}, got {value!r}.")
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"layer must be the dotted name of an nn.Linear (e.g. 'classifier'), got {layer!r}.")
        for name, value, ok, need in (
                ("lam", lam, float(lam) > 0, "be > 0"), ("steps_per_round", steps_per_round, int(steps_per_round) >= 1,
                                                         "be >= 1"),
                ("prob_floor", prob_floor, 0.0 <= float(prob_floor) < 1.0, "lie in [0, 1)"),
                ("num_domains", num_domains, num_domains is None or int(num_domains) >= 1, "be >= 1"),
                ("doge_lr", doge_lr, float(doge_lr) > 0, "be > 0"),
                ("plot_every_n_rounds", plot_every_n_rounds, int(plot_every_n_rounds) >= 0, "be >= 0")):
            if not ok:
                raise ConfigError(f"{name} must {need}, got {value}.")
        if int(warmup_rounds) < 1:
            raise ConfigError(f"warmup_rounds must be >= 1 (1 = the paper: the first round uses the initial "
                              f"mixture), got {warmup_rounds}.")
        if loss_reduction == "token_mean" and not target_key:
            raise ConfigError("loss_reduction='token_mean' needs target_key (the batch key of the (B, T) targets).")
        if accumulation == "fused" and sketch_dim is not None:
            raise ConfigError("accumulation='fused' is exact accumulation; with sketch_dim the sketch is built from "
                              "the hooked factors (use accumulation='auto' or 'hooks').")
        if sketch_dim is not None:
            dims = [int(sketch_dim)] * 2 if isinstance(sketch_dim, int) else [int(v) for v in sketch_dim]
            if len(dims) != 2 or min(dims) < 1:
                raise ConfigError(f"sketch_dim must be a positive int or [k_out, k_in], got {sketch_dim!r}.")
            sketch_dim = dims
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
        if self.method in _GRAD_METHODS:
            pe = self._p_eval_arg if self._p_eval_arg is not None else dm.p_eval
            if pe is None:
                raise ConfigError("R&B needs p_eval (evaluation proportions per domain): pass p_eval= or give the "
                                  "datamodule evaluation domains.")
            self.p_eval = validate_mixture(pe, self.m, name="p_eval")
        if self.p is None:
            self.p = initial_mixture(self.m, dm.domain_sizes, proportional=self.method == "proportional")
        if self.method in _GRAD_METHODS:
            reweighters = [type(cb).__name__ for cb in trainer.callbacks
                           if isinstance(cb, LossReweighter) and cb.reweights_loss]
            if reweighters:
                raise ConfigError(f"{reweighters[0]} re-weights the training loss per sample (Grad-Mimic's "
                                  f"mode='all_params'), so every per-example gradient R&B reads would carry that "
                                  f"weight. Use GradMimicCallback(mode='layer_only'): it leaves the output gradient "
                                  f"R&B reads untouched.")
            module = self._tracked.attach(trainer, pl_module, self.layer, self._forward_hook)
            use_bias = bool(self.include_bias and module.bias is not None)
            old, self.acc = self.acc, DomainAccumulator(self.m, module.out_features, module.in_features + use_bias,
                                                        sketch_dim=self.sketch_dim, seed=self.seed,
                                                        distributed=trainer.world_size > 1)
            if old is not None and old.sums.shape == self.acc.sums.shape:
                self.acc.load(old.sums, old.counts)
            self._capture = DomainGradCapture(self.acc, loss_reduction=self.loss_reduction,
                                              ignore_index=self.ignore_index, include_bias=use_bias,
                                              force_fused=self.accumulation == "fused")
            self._install_fused(module)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        dm.set_mixture(self.p.clone())

    def _install_fused(self, module: nn.Module) -> None:
        """Route the tracked layer through the fused backward (``accumulation`` ``"auto"``/``"fused"``) if valid."""
        if self.accumulation == "hooks":
            return
        reason = "sketch_dim is set (the sketch is built from the hooked factors)" if self.sketch_dim is not None \
            else fused_blocker(module, self.layer)
        if reason is not None:
            if self.accumulation == "fused":
                raise ConfigError(f"accumulation='fused' is not possible: {reason}; use accumulation='auto' or "
                                  f"'hooks'.")
            self._capture.fallback_reason = reason
            return
        self._fused_handle = install_fused_forward(module, self._plan_fused)

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
        if self.method not in _GRAD_METHODS:
            return
        if not isinstance(batch, dict) or self.domain_key not in batch:
            raise ConfigError(f"RnBCallback needs dict batches with a {self.domain_key!r} key of (B,) domain ids; "
                              f"got {type(batch).__name__} (keys {list(batch) if isinstance(batch, dict) else '-'}).")
        if self.loss_reduction == "token_mean" and self.target_key not in batch:
            raise ConfigError(f"loss_reduction='token_mean' needs batch[{self.target_key!r}].")
        self._capture.start(batch[self.domain_key], batch.get(self.target_key) if self.target_key else None,
                            float(trainer.accumulate_grad_batches))

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
        """The active GradScaler's scale, or ``None`` without loss scaling (then no finiteness check is needed)."""
        scaler = active_scaler(trainer)
        return float(scaler.get_scale()) if scaler is not None else None

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
        if self.method in _GRAD_METHODS and self.acc.distributed:
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
        if self.method in _GRAD_METHODS:
            acc = self.acc  # already global: reduced every optimizer step under DDP
            counts = acc.counts.clone() if logging else None
            if self.round >= self.warmup_rounds:
                gram, present = domain_gram(acc.sums.cpu(), acc.counts.cpu())
                update = rnb_update if self.method == "rnb" else multiplicative_update
                rate = {"lam": self.lam} if self.method == "rnb" else {"lr": self.doge_lr}
                p_new, updated = update(gram, self.p_eval, self.p.double(), present=present, normalize=self.normalize,
                                        prob_floor=self.prob_floor, **rate)
                self.p = p_new.cpu()
                stats = gram_stats(gram) if logging else {}
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
        values = {f"rnb/p_{name}": float(v) for name, v in zip(self.domain_names, self.p)}
        values.update({"rnb/entropy": mixture_entropy(self.p), "rnb/round": float(self.round),
                       "rnb/updated": float(updated), "rnb/update_ms": elapsed_ms})
        values.update({f"rnb/{k}": v for k, v in stats.items()})
        if counts is not None:
            values.update({f"rnb/n_{name}": float(c) for name, c in zip(self.domain_names, counts.cpu())})
        pl_module.log_dict(values, on_step=True, on_epoch=False)
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
        state: dict[str, Any] = {
            "version": _STATE_VERSION, "method": self.method, "p": None if self.p is None else self.p.clone().cpu(),
            "round": self.round, "steps_in_round": self.steps_in_round, "last_global_step": self.last_global_step,
            "history": [list(h) for h in self.history],
        }
        if self.acc is not None:
            state["sums"] = self.acc.sums.detach().clone().cpu()
            state["counts"] = self.acc.counts.detach().clone().cpu()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before or after ``setup``)."""
        state = dict(state_dict)
        check_state_version(state, _STATE_VERSION, "RnBCallback")
        if state.get("method", self.method) != self.method:
            raise ConfigError(f"checkpoint state is for method={state['method']!r}, this callback uses "
                              f"{self.method!r}.")
        if self.m is None:
            self._pending_state = state
        else:
            self._apply_state(state)

    def _apply_state(self, state: dict[str, Any]) -> None:
        if state.get("p") is not None:
            p = torch.as_tensor(state["p"], dtype=torch.float64)
            if self.m is not None and p.numel() != self.m:
                raise ConfigError(f"checkpoint mixture has {p.numel()} domains, the data has {self.m}.")
            self.p = p.clone()
        self.round = int(state["round"])
        self.steps_in_round = int(state["steps_in_round"])
        self.last_global_step = int(state["last_global_step"])
        self.history = [list(h) for h in state.get("history", [])]
        if "sums" in state and self.acc is not None:
            self.acc.load(state["sums"], state["counts"])

    # ------------------------------------------------------------------ convenience
    @property
    def mixture(self) -> torch.Tensor | None:
        """The current mixture ``p`` (``None`` before ``setup``)."""
        return None if self.p is None else self.p.clone()

    def gram(self) -> torch.Tensor | None:
        """The Gram matrix of the current (local, un-reduced) accumulators, for inspection."""
        return None if self.acc is None else domain_gram(self.acc.sums.cpu(), self.acc.counts.cpu())[0]
