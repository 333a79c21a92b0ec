"""R&B's Balance step as a Lightning callback (Ge et al., arXiv 2505.00358), plus same-harness baselines.

The maths lives in :mod:`lightning_ws.rnb.functional`; this file only wires hooks, DDP reductions, state and logging.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.rnb.functional import (
    FUSED_DTYPES,
    DomainGradSink,
    FusedForwardHandle,
    KroneckerSketch,
    accumulate_domain_grads,
    domain_gram,
    fused_accumulation_mode,
    install_fused_forward,
    mixture_entropy,
    multiplicative_update,
    rnb_update,
    token_mean_scale,
    validate_mixture,
)

__all__ = ["RnBCallback", "METHODS", "ACCUMULATIONS"]

#: Mixture rules behind the same interface.
METHODS = ("rnb", "doge", "stratified", "proportional")
_GRAD_METHODS = ("rnb", "doge")
#: Ways to collect the per-domain sums (see ``RnBCallback``'s ``accumulation``).
ACCUMULATIONS = ("auto", "fused", "hooks")
_STATE_VERSION = 1


class RnBCallback(Callback):
    """Online domain re-weighting by R&B's Balance rule (arXiv 2505.00358) or a baseline, pushing ``p`` to the data.

    For ``method="rnb"``: forward/backward hooks on one ``nn.Linear`` (``layer``) capture its input ``a`` and output
    gradient ``delta`` during the ordinary backward pass; after every backward the per-example gradients
    ``delta_i^T a_i`` (summed over tokens) are added into per-domain sums ``s_d`` with counts ``n_d`` (no second
    backward, no per-example tensor). Every ``steps_per_round`` optimizer steps
    ``G_ij = <s_i/n_i, s_j/n_j>`` is formed and the mixture is *replaced* by
    ``p = softmax(lam * G p_eval / ||G p_eval||_2)``, then pushed to ``trainer.datamodule.set_mixture(p)``.

    Other methods, same interface: ``"doge"`` = multiplicative (accumulating) update ``p <- p * exp(doge_lr * score)``
    on the same normalised score (a DoGE-style ablation, arXiv 2310.15393, without DoGE's proxy training);
    ``"stratified"`` = uniform, fixed; ``"proportional"`` = proportional to domain sizes, fixed. The fixed ones
    register no hooks and cost nothing.

    Defaults for what the paper leaves open (arXiv 2505.00358, spec §15):

    * tracked layer: ``"classifier"`` (the head of :class:`lightning_ws.modules.TextClassifier`); bias included;
    * round length ``steps_per_round=10`` optimizer steps (choose it so ``K * B / m >= 20``); ``lam=3`` (the one value
      the paper reports); normalised logits (main text; ``normalize=False`` gives the appendix's Algorithm 3);
    * per-example loss: ``loss_reduction="mean"`` multiplies ``delta`` by the micro-batch size to undo the batch mean
      (and by ``accumulate_grad_batches``, which Lightning divides the loss by); ``"token_mean"`` (with
      ``target_key``) weights example ``i`` by ``N_tokens / n_i`` so each example's loss is the mean over its own
      target tokens; ``"sum"`` applies no factor;
    * AMP: output gradients are divided by the active GradScaler's scale; under loss scaling, micro-batches with
      non-finite gradients (skipped AMP steps) are not accumulated (without a GradScaler there is no such check: the
      optimizer applies those gradients too, and a round whose Gram matrix is non-finite keeps ``p``);
    * empty domain in a round: it is left out of ``G p_eval`` and keeps its previous probability (the other domains
      share the rest); ``||G p_eval|| = 0`` or non-finite: ``p`` is kept; ``prob_floor`` (default 0) mixes in
      uniform so that ``p_i >= prob_floor / m``; ``warmup_rounds=1``: the first round trains on the initial mixture
      (uniform, as in the paper); larger values also discard the estimates of the next rounds;
    * memory: exact accumulators ``m x d_out x (d_in + 1)`` fp32, or a Kronecker random-projection sketch
      (``sketch_dim=(k_out, k_in)`` or an int for both), an unbiased estimate of ``G`` (not in the paper).

    Two ways to collect the exact per-domain sums (``accumulation``):

    * ``"hooks"``: a forward hook stores ``a``, a tensor hook ``delta``, and ``on_after_backward`` calls
      :func:`~lightning_ws.rnb.functional.accumulate_domain_grads` (one ``bmm`` + ``index_add_`` for small layers, one
      GEMM per present domain for large ones): about one extra weight-gradient computation of the tracked layer per
      micro-batch, on top of autograd's own.
    * ``"fused"``: while a training micro-batch is being captured, the layer's forward runs
      :func:`~lightning_ws.rnb.functional.fused_linear` (the callback sets an instance-level ``forward`` on that
      module in ``setup`` and removes it in ``teardown`` / ``on_exception``; forward hooks keep running, ``state_dict``
      and ``type`` are unchanged; copies of the module behave like a plain ``nn.Linear``). Its backward computes the
      per-example products ``P_i = delta_i^T a_i`` (and ``delta_i`` summed over tokens for the bias) with one batched
      matmul, and autograd's weight gradient *is* ``sum_i P_i``; the scaled per-domain sums come out of one small
      GEMM over ``P`` (or, for large layers with one scale per example = ``mean`` / ``sum``, one GEMM per present
      domain whose sum is the weight gradient). About no extra GEMM; ``layer.weight.grad`` / ``bias.grad`` equal plain
      autograd's up to float summation order.
    * ``"auto"`` (default): fused where it is valid and cheap, the hook path otherwise. It falls back to the hooks
      (``fused_fallback_reason`` says why) with a ``sketch_dim`` (the sketch needs the factors ``a`` and ``delta`` and
      is already cheap); for a layer that is not exactly ``nn.Linear`` (a subclass may change ``forward``; PEFT/LoRA
      wrappers) or that already has an instance ``forward``; per call, under autocast or an active GradScaler (the
      fused backward does no casting, and AMP's overflow skip needs ``delta``), for inputs that are not 2-D/3-D or not
      float32/float64, and for ``token_mean`` (per-example scales within a domain) when ``B x d_out x (d_in + 1)``
      exceeds :data:`~lightning_ws.rnb.functional.FUSED_PER_EXAMPLE_MAX_ELEMENTS` (the fused backward would need that
      per-example tensor; the hook path groups rows by domain instead). A weight tied to another module (tied
      embeddings) is fine: autograd adds the fused gradient to the other uses'. ``"fused"`` is the same but ignores
      the size limit (it then materialises the ``(B, d_out, d_in)`` tensor), raises ``ConfigError`` in
      ``__init__``/``setup`` for a sketch or a non-``nn.Linear`` layer, and warns once when a call falls back. The
      fused backward is once-differentiable (no double backward through the tracked layer while capturing).

    Host syncs: the group sizes of the grouped paths and, under AMP loss scaling (hook path), the scale and the
    overflow check. Per round: one ``(m, m)`` Gram matrix. A Kronecker ``sketch_dim`` cuts the per-step cost for wide
    heads (LM vocabularies). Measured overhead: ``benchmarks/bench_rnb.py --only overhead``.

    Gradient accumulation: every micro-batch is accumulated; rounds count optimizer steps (guarded on
    ``trainer.global_step``). DDP: each optimizer step's sums and counts are all-reduced (sum) in
    ``on_before_optimizer_step`` (every rank calls it), so all ranks hold identical accumulators at any checkpoint and
    compute the same update; the new ``p`` is also broadcast from rank 0. The W&B plot is made on rank 0 only and has no
    collective inside. Unsupported: FSDP/DeepSpeed (the tracked layer may be sharded), manual optimization.

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
        method: str = "rnb",
        lam: float = 3.0,
        steps_per_round: int = 10,
        p_eval: list[float] | None = None,
        num_domains: int | None = None,
        sketch_dim: int | list[int] | None = None,
        include_bias: bool = True,
        normalize: bool = True,
        prob_floor: float = 0.0,
        warmup_rounds: int = 1,
        loss_reduction: str = "mean",
        target_key: str | None = None,
        ignore_index: int = -100,
        domain_key: str = "domain",
        doge_lr: float = 1.0,
        seed: int = 0,
        plot_every_n_rounds: int = 1,
        accumulation: str = "auto",
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}.")
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"layer must be the dotted name of an nn.Linear (e.g. 'classifier'), got {layer!r}.")
        if not float(lam) > 0:
            raise ConfigError(f"lam must be > 0, got {lam}.")
        if int(steps_per_round) < 1:
            raise ConfigError(f"steps_per_round must be >= 1, got {steps_per_round}.")
        if not 0.0 <= float(prob_floor) < 1.0:
            raise ConfigError(f"prob_floor must lie in [0, 1), got {prob_floor}.")
        if int(warmup_rounds) < 1:
            raise ConfigError(f"warmup_rounds must be >= 1 (1 = the paper: the first round uses the initial "
                              f"mixture), got {warmup_rounds}.")
        if loss_reduction not in ("mean", "token_mean", "sum"):
            raise ConfigError(f"loss_reduction must be 'mean', 'token_mean' or 'sum', got {loss_reduction!r}.")
        if loss_reduction == "token_mean" and not target_key:
            raise ConfigError("loss_reduction='token_mean' needs target_key (the batch key of the (B, T) targets).")
        if num_domains is not None and int(num_domains) < 1:
            raise ConfigError(f"num_domains must be >= 1, got {num_domains}.")
        if not float(doge_lr) > 0:
            raise ConfigError(f"doge_lr must be > 0, got {doge_lr}.")
        if int(plot_every_n_rounds) < 0:
            raise ConfigError(f"plot_every_n_rounds must be >= 0, got {plot_every_n_rounds}.")
        if accumulation not in ACCUMULATIONS:
            raise ConfigError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}.")
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
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.round = 0
        self.steps_in_round = 0
        self.last_global_step = -1
        self.history: list[list[float]] = []
        self.domain_names: list[str] = []
        self._sketch: KroneckerSketch | None = None
        self._handles: list[Any] = []
        self._acts: list[torch.Tensor] = []
        self._grads: dict[int, torch.Tensor] = {}
        self._batch_domains: torch.Tensor | None = None
        self._batch_targets: torch.Tensor | None = None
        self._batch_scale: tuple[Any, ...] | None = None  # (factor, device, (B, T), token_mean_scale(...)) of the batch
        self._pending_state: dict[str, Any] | None = None
        self._warned_no_capture = False
        self._distributed = False
        self._step_sums: torch.Tensor | None = None
        self._step_counts: torch.Tensor | None = None
        self._use_bias = bool(include_bias)
        self._fused_handle: FusedForwardHandle | None = None
        self._sinks: list[DomainGradSink] = []
        self._fused_ran = False
        self._accum_factor = 1.0
        self._scaler_active = False
        self._warned_fallback = False
        self.fused_fallback_reason: str | None = None
        self.capture_counts: dict[str, int] = {"per_example": 0, "grouped": 0, "hooks": 0}

    # ------------------------------------------------------------------ identity
    @property
    def state_key(self) -> str:
        """Identity: method, layer, lam, steps_per_round, sketch_dim."""
        return self._generate_state_key(method=self.method, layer=self.layer, lam=self.lam,
                                        steps_per_round=self.steps_per_round, sketch_dim=self.sketch_dim)

    # ------------------------------------------------------------------ setup
    def _target(self, trainer: pl.Trainer) -> Any:
        dm = trainer.datamodule
        if dm is not None and callable(getattr(dm, "set_mixture", None)):
            return dm
        raise ConfigError("RnBCallback needs a datamodule with set_mixture(p) (e.g. "
                          "lightning_ws.datamodules.rnb.MixtureDataModule or TensorMixtureDataModule); "
                          "pass datamodule= to trainer.fit.")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Validate the setup, resolve ``m``/``p_eval``/the layer, allocate accumulators and register hooks."""
        if stage != "fit":
            return
        strategy = type(trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            raise ConfigError(f"RnBCallback does not support {strategy} (the tracked layer may be sharded); use "
                              f"DDP or a single device.")
        if not pl_module.automatic_optimization:
            raise ConfigError("RnBCallback supports automatic optimization only (it undoes Lightning's loss "
                              "normalisation for gradient accumulation).")
        dm = self._target(trainer)
        m = self._num_domains_arg if self._num_domains_arg is not None else getattr(dm, "num_domains", None)
        if m is None:
            raise ConfigError("number of domains unknown: pass num_domains= or use a datamodule with num_domains.")
        self.m = int(m)
        self.domain_names = list(getattr(dm, "domain_names", []) or [str(i) for i in range(self.m)])
        if len(self.domain_names) != self.m:
            self.domain_names = [str(i) for i in range(self.m)]
        if self.method in _GRAD_METHODS:
            pe = self._p_eval_arg if self._p_eval_arg is not None else getattr(dm, "p_eval", None)
            if pe is None:
                raise ConfigError("R&B needs p_eval (evaluation proportions per domain): pass p_eval= or give the "
                                  "datamodule evaluation domains.")
            self.p_eval = validate_mixture(pe, self.m, name="p_eval")
        if self.p is None:
            self.p = self._initial_mixture(dm)
        if self.method in _GRAD_METHODS:
            module = self._resolve_layer(pl_module)
            d_out, d_in = module.weight.shape
            d_in += int(self.include_bias and module.bias is not None)
            self._use_bias = bool(self.include_bias and module.bias is not None)
            if self.sketch_dim is not None:
                self._sketch = KroneckerSketch(d_out, d_in, self.sketch_dim[0], self.sketch_dim[1], seed=self.seed)
                shape = (self.m, self._sketch.k_out, self._sketch.k_in)
            else:
                shape = (self.m, d_out, d_in)
            if self.sums is None or tuple(self.sums.shape) != shape:
                self.sums = torch.zeros(shape, dtype=torch.float32)
                self.counts = torch.zeros(self.m, dtype=torch.float64)
            self._distributed = trainer.world_size > 1
            if self._distributed:
                self._step_sums = torch.zeros_like(self.sums)
                self._step_counts = torch.zeros_like(self.counts)
            self._remove_hooks()
            self._handles.append(module.register_forward_hook(self._forward_hook))
            self._install_fused(module)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        self._target(trainer).set_mixture(self.p.clone())

    def _initial_mixture(self, dm: Any) -> torch.Tensor:
        sizes = getattr(dm, "domain_sizes", None)
        sizes = None if sizes is None else torch.as_tensor(sizes, dtype=torch.float64)
        if self.method == "proportional":
            if sizes is None or float(sizes.sum()) <= 0:
                raise ConfigError("method='proportional' needs datamodule.domain_sizes.")
            return sizes / sizes.sum()
        if sizes is not None and sizes.numel() == self.m and float((sizes > 0).sum()) > 0:
            nonempty = (sizes > 0).double()
            return nonempty / nonempty.sum()
        return torch.full((self.m,), 1.0 / self.m, dtype=torch.float64)

    def _resolve_layer(self, pl_module: pl.LightningModule) -> nn.Linear:
        try:
            module = pl_module.get_submodule(self.layer)
        except AttributeError:
            names = [n for n, mod in pl_module.named_modules() if isinstance(mod, nn.Linear)]
            raise ConfigError(f"layer {self.layer!r} not found in {type(pl_module).__name__}; nn.Linear layers: "
                              f"{names[-5:]} (last five).") from None
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"layer {self.layer!r} is a {type(module).__name__}; R&B tracks an nn.Linear.")
        return module

    def _install_fused(self, module: nn.Module) -> None:
        """Route the tracked layer through the fused backward (``accumulation`` ``"auto"``/``"fused"``) if valid."""
        self.capture_counts = {"per_example": 0, "grouped": 0, "hooks": 0}
        self.fused_fallback_reason = None
        if self.accumulation == "hooks":
            return
        reason = None
        if self._sketch is not None:
            reason = "sketch_dim is set (the sketch is built from the hooked factors)"
        elif type(module) is not nn.Linear:
            reason = f"layer {self.layer!r} is a {type(module).__name__}, not exactly nn.Linear"
        elif "forward" in module.__dict__:
            reason = f"layer {self.layer!r} already has an instance-level forward"
        if reason is not None:
            if self.accumulation == "fused":
                raise ConfigError(f"accumulation='fused' is not possible: {reason}; use accumulation='auto' or "
                                  f"'hooks'.")
            self.fused_fallback_reason = reason
            return
        self._fused_handle = install_fused_forward(module, self._plan_fused)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hooks and restore the tracked layer's forward."""
        self._remove_hooks()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Remove the hooks and restore the tracked layer's forward (``teardown`` is not reached on every error)."""
        self._remove_hooks()
        self._batch_domains = None

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._fused_handle is not None:
            self._fused_handle.remove()
            self._fused_handle = None
        self._sinks, self._fused_ran = [], False

    # ------------------------------------------------------------------ capture
    def _forward_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._fused_ran:  # this call ran the fused backward; nothing to capture
            self._fused_ran = False
            return
        if self._batch_domains is None or not torch.is_grad_enabled() or not output.requires_grad:
            return
        self.capture_counts["hooks"] += 1
        pos = len(self._acts)
        self._acts.append(inputs[0].detach())

        def grad_hook(grad: torch.Tensor, pos: int = pos) -> None:
            self._grads[pos] = grad.detach()

        output.register_hook(grad_hook)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Read the micro-batch's domain ids (and targets for ``token_mean``)."""
        if self.method not in _GRAD_METHODS:
            return
        if not isinstance(batch, dict) or self.domain_key not in batch:
            raise ConfigError(f"RnBCallback needs dict batches with a {self.domain_key!r} key of (B,) domain ids; "
                              f"got {type(batch).__name__} (keys {list(batch) if isinstance(batch, dict) else '-'}).")
        self._batch_domains = torch.as_tensor(batch[self.domain_key]).reshape(-1)
        if self.loss_reduction == "token_mean":
            if self.target_key not in batch:
                raise ConfigError(f"loss_reduction='token_mean' needs batch[{self.target_key!r}].")
            self._batch_targets = batch[self.target_key]
        self._acts, self._grads = [], {}
        self._sinks, self._fused_ran = [], False
        self._accum_factor = float(trainer.accumulate_grad_batches)
        self._scaler_active = self._active_scaler(trainer) is not None  # no get_scale(): a device sync
        self._batch_scale = None
        if self.loss_reduction == "token_mean":
            # the per-example factors only depend on the batch: made here, where a few small ops cost less than
            # inside the forward pass (measured), and reused by the fused forward and the hook path
            targets = torch.as_tensor(self._batch_targets)
            if targets.dim() == 2:
                self._batch_scale = (self._accum_factor, targets.device, tuple(targets.shape),
                                     token_mean_scale(targets, self.ignore_index, self._accum_factor))

    def _plan_fused(self, module: nn.Linear, x: torch.Tensor) -> DomainGradSink | None:
        """Called by the tracked layer's forward: a sink for the fused backward, or ``None`` (plain forward; the hook
        path captures the call if it is a training call)."""
        domains = self._batch_domains
        if domains is None or not torch.is_grad_enabled():
            return None
        if not (x.requires_grad or module.weight.requires_grad
                or (module.bias is not None and module.bias.requires_grad)):
            return None
        reason = None
        if self._scaler_active:
            reason = "AMP loss scaling is active (the overflow skip needs the output gradient)"
        elif torch.is_autocast_enabled(x.device.type):
            reason = "autocast is active (the fused backward does not cast)"
        elif x.dim() not in (2, 3):
            reason = f"the layer input has shape {tuple(x.shape)} (fused needs (B, d) or (B, T, d))"
        elif x.dtype not in FUSED_DTYPES or module.weight.dtype != x.dtype:
            reason = f"input/weight dtypes {x.dtype}/{module.weight.dtype} (fused needs float32 or float64)"
        else:
            b = x.shape[0]
            self._check_batch_size(b)
            scale, valid = self._example_scale(tuple(x.shape), x.device, self._accum_factor)
            uniform = not isinstance(scale, torch.Tensor) and valid is None
            width = module.in_features + int(module.bias is not None or self._use_bias)
            mode = fused_accumulation_mode(b, module.out_features, width, uniform_scale=uniform,
                                           force=self.accumulation == "fused")
            if mode is None:
                reason = ("per-example scales (token_mean) on a layer whose (B, d_out, d_in + 1) per-example tensor "
                          "exceeds FUSED_PER_EXAMPLE_MAX_ELEMENTS")
        if reason is not None:
            self.fused_fallback_reason = reason
            if self.accumulation == "fused" and not self._warned_fallback:
                rank_zero_warn(f"RnBCallback(accumulation='fused'): using the hook path because {reason}.")
                self._warned_fallback = True
            return None
        sums, counts = self._accumulators(x.device)
        sink = DomainGradSink(sums, counts, domains, example_scale=scale, valid=valid, include_bias=self._use_bias,
                              mode=mode)
        self._sinks.append(sink)
        self._fused_ran = True
        self.capture_counts[mode] += 1
        return sink

    def _check_batch_size(self, b: int) -> None:
        """The tracked layer must see one row per example of the micro-batch (one domain id each)."""
        if b != self._batch_domains.numel():
            raise ConfigError(f"the tracked layer saw {b} examples but the batch has {self._batch_domains.numel()} "
                              f"domain ids; track a layer applied once per example.")

    def _accumulators(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(sums, counts)`` (the step buffers under DDP), moved to ``device`` on first use."""
        sums = self._step_sums if self._distributed else self.sums
        if sums.device != device:  # first micro-batch on an accelerator: move the accumulators once
            self._to_device(device)
        return (self._step_sums, self._step_counts) if self._distributed else (self.sums, self.counts)

    def _example_scale(self, shape: tuple[int, ...], device: torch.device,
                       factor: float) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        """Per-example factor turning the batch-loss gradient into each example's own loss gradient, and the
        ``valid`` mask (``token_mean``: examples with no target token)."""
        b = shape[0]
        if self.loss_reduction == "mean":
            return float(b) * factor, None
        if self.loss_reduction == "sum":
            return factor, None
        cached = self._batch_scale
        if cached is not None and cached[0] == factor and cached[1] == device and cached[2] == shape[:2] \
                and len(shape) == 3:
            return cached[3]
        targets = torch.as_tensor(self._batch_targets, device=device)
        if targets.dim() != 2 or targets.shape[0] != b or len(shape) != 3 or targets.shape[1] != shape[1]:
            raise ConfigError(f"token_mean: targets {tuple(targets.shape)} must be (B, T) aligned with the "
                              f"tracked layer input {tuple(shape)}.")
        # equal target counts (packed LM batches) give one float, which lets the fused path use its grouped mode
        return token_mean_scale(targets, self.ignore_index, factor)

    @staticmethod
    def _active_scaler(trainer: pl.Trainer) -> Any:
        """The precision plugin's enabled GradScaler, or ``None``."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return scaler if scaler is not None and getattr(scaler, "is_enabled", lambda: False)() else None

    def _amp_scale(self, trainer: pl.Trainer) -> float | None:
        """The active GradScaler's scale, or ``None`` without loss scaling (then no finiteness check is needed)."""
        scaler = self._active_scaler(trainer)
        return float(scaler.get_scale()) if scaler is not None else None

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hook path: add this micro-batch's per-example tracked-layer gradients into the per-domain sums (calls that
        ran the fused backward were already added there).

        Cost: one batched matmul + ``index_add_`` (small layers) or one GEMM per present domain (large layers), i.e.
        about one extra weight-gradient computation of the tracked layer; no per-example Python work, no host sync
        except the group sizes of the grouped path and, under AMP loss scaling only, the scale and an overflow check.
        """
        if self._batch_domains is None:
            return  # fixed-mixture methods never set it
        acts, grads, sinks = self._acts, self._grads, self._sinks
        self._acts, self._grads, self._sinks = [], {}, []
        pairs = [(acts[i], grads[i]) for i in range(len(acts)) if i in grads]
        if not pairs:
            if not any(s.calls for s in sinks) and not self._warned_no_capture:
                rank_zero_warn(f"RnBCallback: layer {self.layer!r} produced no gradient in this backward pass; "
                               f"nothing is accumulated. Check `layer`.")
                self._warned_no_capture = True
            return
        factor = float(trainer.accumulate_grad_batches)
        amp_scale = self._amp_scale(trainer)
        if amp_scale is not None:
            if not all(bool(torch.isfinite(delta).all()) for _, delta in pairs):
                return  # AMP overflow: the optimizer step is skipped, so is this contribution
            factor /= amp_scale
        domains = self._batch_domains
        sums, counts = self._accumulators(pairs[0][0].device)
        for a, delta in pairs:
            self._check_batch_size(a.shape[0])
            scale, valid = self._example_scale(tuple(a.shape), a.device, factor)
            accumulate_domain_grads(sums, counts, a, delta, domains, example_scale=scale,
                                    include_bias=self._use_bias, sketch=self._sketch, valid=valid)

    def _to_device(self, device: torch.device) -> None:
        self.sums, self.counts = self.sums.to(device), self.counts.to(device)
        if self._distributed:
            self._step_sums, self._step_counts = self._step_sums.to(device), self._step_counts.to(device)
        if self._sketch is not None:
            self._sketch.to(device)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Under DDP, all-reduce this optimizer step's contributions so that every rank holds the global sums."""
        if self.method not in _GRAD_METHODS or not self._distributed:
            return
        step_sums = trainer.strategy.reduce(self._step_sums, reduce_op="sum")
        step_counts = trainer.strategy.reduce(self._step_counts, reduce_op="sum")
        self.sums = self.sums.to(step_sums.device).add_(step_sums)
        self.counts = self.counts.to(step_counts.device).add_(step_counts)
        self._step_sums.zero_()
        self._step_counts.zero_()

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
        self._batch_domains = None
        if trainer.global_step == self.last_global_step:
            return  # still accumulating micro-batches
        self.last_global_step = int(trainer.global_step)
        self.steps_in_round += 1
        if self.steps_in_round >= self.steps_per_round:
            self._end_round(trainer, pl_module)

    def _end_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        self.round += 1
        self.steps_in_round = 0
        updated = False
        stats: dict[str, float] = {}
        counts = None
        logging = trainer.logger is not None or bool(trainer.loggers)  # statistics are only made to be logged
        if self.method in _GRAD_METHODS:
            counts = self.counts.clone() if logging else None
            sums = self.sums  # already global: reduced every optimizer step under DDP
            if self.round >= self.warmup_rounds:
                gram, present = domain_gram(sums.cpu(), self.counts.cpu())
                p_prev = self.p.double()
                if self.method == "rnb":
                    p_new, updated = rnb_update(gram, self.p_eval, p_prev, lam=self.lam, present=present,
                                                normalize=self.normalize, prob_floor=self.prob_floor)
                else:
                    p_new, updated = multiplicative_update(gram, self.p_eval, p_prev, lr=self.doge_lr,
                                                           present=present, normalize=self.normalize,
                                                           prob_floor=self.prob_floor)
                self.p = p_new.cpu()
                if logging:
                    m = gram.shape[0]
                    diag = torch.diagonal(gram)
                    stats["gram_diag_mean"] = float(diag.mean())
                    stats["gram_offdiag_mean"] = float((gram.sum() - diag.sum()) / max(1, m * m - m))
            self.sums.zero_()
            self.counts.zero_()
        # identical on every rank already; broadcast removes any floating-point divergence (all ranks call it)
        self.p = torch.as_tensor(trainer.strategy.broadcast(self.p.clone(), src=0), dtype=torch.float64).cpu()
        self._target(trainer).set_mixture(self.p.clone())
        self.history.append(self.p.tolist())
        elapsed_ms = 1000.0 * (time.perf_counter() - t0)
        self._log(trainer, pl_module, updated, stats, counts, elapsed_ms)

    # ------------------------------------------------------------------ logging
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, updated: bool, stats: dict[str, float],
             counts: torch.Tensor | None, elapsed_ms: float) -> None:
        if trainer.logger is None and not trainer.loggers:
            return
        values = {f"rnb/p_{name}": float(v) for name, v in zip(self.domain_names, self.p)}
        values["rnb/entropy"] = mixture_entropy(self.p)
        values["rnb/round"] = float(self.round)
        values["rnb/updated"] = float(updated)
        values["rnb/update_ms"] = elapsed_ms
        values.update({f"rnb/{k}": v for k, v in stats.items()})
        if counts is not None:
            values.update({f"rnb/n_{name}": float(c) for name, c in zip(self.domain_names, counts.cpu())})
        pl_module.log_dict(values, on_step=True, on_epoch=False)
        if self.plot_every_n_rounds and self.round % self.plot_every_n_rounds == 0 and trainer.is_global_zero:
            self._plot_wandb(trainer)

    def _plot_wandb(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        image = self.trajectory_image()
        for lg in loggers:
            lg.experiment.log({"rnb/mixture_trajectory": wandb.Image(image, caption=f"round {self.round}"),
                               "trainer/global_step": trainer.global_step})

    def trajectory_image(self) -> np.ndarray:
        """An RGB ``(H, W, 3)`` uint8 stack plot of the mixture per round (matplotlib, no pyplot state)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        hist = np.asarray(self.history if self.history else [[float(v) for v in self.p]], dtype=np.float64)
        fig = Figure(figsize=(6, 3), dpi=80)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.stackplot(np.arange(1, len(hist) + 1), hist.T, labels=self.domain_names[: hist.shape[1]])
        ax.set_xlabel("round")
        ax.set_ylabel("p")
        ax.set_ylim(0, 1)
        ax.set_title(f"{self.method} mixture")
        if hist.shape[1] <= 12:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
        fig.tight_layout()
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``p``, accumulators, counts, round/step counters, history (plain tensors/numbers/lists)."""
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "method": self.method,
            "p": None if self.p is None else self.p.clone().cpu(),
            "round": self.round,
            "steps_in_round": self.steps_in_round,
            "last_global_step": self.last_global_step,
            "history": [list(h) for h in self.history],
        }
        if self.sums is not None:
            state["sums"] = self.sums.detach().clone().cpu()
            state["counts"] = self.counts.detach().clone().cpu()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before or after ``setup``)."""
        state = self._migrate(dict(state_dict))
        if state.get("method", self.method) != self.method:
            raise ConfigError(f"checkpoint state is for method={state['method']!r}, this callback uses "
                              f"{self.method!r}.")
        if self.m is None:
            self._pending_state = state
        else:
            self._apply_state(state)

    @staticmethod
    def _migrate(state: dict[str, Any]) -> dict[str, Any]:
        version = int(state.get("version", 1))
        if version > _STATE_VERSION:
            raise ConfigError(f"RnBCallback state version {version} is newer than this code ({_STATE_VERSION}).")
        return state

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
        if "sums" in state and self.sums is not None:
            if tuple(state["sums"].shape) != tuple(self.sums.shape):
                raise ConfigError(f"checkpoint accumulators {tuple(state['sums'].shape)} do not match "
                                  f"{tuple(self.sums.shape)}; same layer and sketch_dim are needed to resume.")
            self.sums = state["sums"].clone().to(torch.float32)
            self.counts = state["counts"].clone().to(torch.float64)

    # ------------------------------------------------------------------ convenience
    @property
    def mixture(self) -> torch.Tensor | None:
        """The current mixture ``p`` (``None`` before ``setup``)."""
        return None if self.p is None else self.p.clone()

    def gram(self) -> torch.Tensor | None:
        """The Gram matrix of the current (local, un-reduced) accumulators, for inspection."""
        if self.sums is None:
            return None
        return domain_gram(self.sums.cpu(), self.counts.cpu())[0]
