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
    GradMimicSignalWarning,
    alignment_counts,
    kappa_from_counts,
    output_mimic_scores,
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

__all__ = ["GradMimicCallback", "GradMimicSignalWarning", "reduce_per_sample_loss"]

_MODES = ("layer_only", "all_params")
_REDUCTIONS = ("mean", "sum")
_SPACES = ("auto", "weights", "outputs")
_POLICIES = ("raise", "warn")
#: rows (samples x positions) an alignment window collects before kappa is evaluated
_MIN_ALIGNMENT_ROWS = 32
# > 0 while some GradMimicCallback runs a reference forward pass: every instance's hooks ignore those calls
_REFERENCE_FORWARD = [0]
#: a batch whose largest relative weight is below 1 + _FLAT_TOL counts as flat (uniform weights)
_FLAT_TOL = 1e-3


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

    Where the mimic direction carries signal (``space``; measured in BENCHMARKS.md, section Grad-Mimic). The paper's
    score ``<-g_i, W_ref - W_t>`` applies the reference layer to *the model's* layer inputs. In the paper's main
    setting (linear probing: the layers below are a frozen backbone shared with the reference) that is the reference's
    own output; in its full fine-tuning setting both models start from the same pretrained weights and stay close. When
    the layers below train away from the reference's (from scratch, another initialisation, a small-data reference),
    ``W_ref a_i`` means nothing and the score is dominated by the model's own negative margin: mislabelled samples get
    *more* weight (AUC 0.31 on digits, 0.32 on a CIFAR-10 CNN). Therefore:

        * ``space="weights"``: the paper's direction. When the layers below are not provably the reference's (some
          parameter other than the mimic layer trains, or differs from the reference), the callback runs the
          reference on the training inputs for the first ``_MIN_ALIGNMENT_ROWS`` rows and then every
          ``check_every_n_steps`` steps, and measures the *alignment*: Cohen's kappa between the argmax of the
          reference layer on the model's inputs and of the reference's own output (1 = same feature space, ~0 =
          unrelated). Below ``min_alignment`` at the start it raises (``on_no_signal="raise"``, default) or warns;
          later drops warn. The reason is kept in :attr:`signal`.
        * ``space="outputs"``: the same projection in the layer's output space, ``-delta_i . (z_ref_i - z_i) /
          ||V||`` with ``z_ref_i`` the reference's own output on the same input (one reference forward pass per
          step, no gradient). Identical to ``"weights"`` when the layers below are shared; meaningful whatever the
          layers below do, provided the mimic layer is the output layer (its coordinates are the classes in both
          models). Refused for a layer whose output is not the forward's output.
        * ``space="auto"`` (default): ``"weights"`` when every other parameter is frozen and equal to the reference's
          (or the reference holds only the mimic layer and every other parameter is frozen, which is then assumed to
          be shared), else ``"outputs"``.

        The reference is run with ``torch.func.functional_call`` on the module named ``forward_module`` (default: the
        LightningModule) with the reference's tensors, in eval mode, on the arguments the training step passed to it;
        ``training_step`` must call that module (``self(x)``). A reference that holds only the mimic layer
        (``strict_reference=False``) cannot be run: with trained layers below it is refused (or warned about).
        GraNd (``score="grand"``) does not use the reference and is never checked.

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
        architecture, manual optimization; at the first steps: no signal in the mimic direction (see above).

    Example::

        cb = GradMimicCallback("head", reference="reference.safetensors", tau=0.5)
        trainer = pl.Trainer(callbacks=[cb], max_epochs=5)
        trainer.fit(model, datamodule)        # batches carry "idx"
        result = cb.filter("gmm", "majority") # keep mask, quality estimate, top-p
    """

    STATE_VERSION = 2

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
        space: str = "auto",
        forward_module: str = "",
        min_alignment: float | None = 0.5,
        check_every_n_steps: int = 50,
        on_no_signal: str = "raise",
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
        if space not in _SPACES:
            raise ConfigError(f"space must be one of {_SPACES}, got {space!r}.")
        if not isinstance(forward_module, str):
            raise ConfigError(f"forward_module must be a dotted submodule name ('' = the LightningModule), got "
                              f"{forward_module!r}.")
        if min_alignment is not None and (isinstance(min_alignment, bool) or not isinstance(min_alignment, (int, float))
                                          or not -1.0 <= min_alignment <= 1.0):
            raise ConfigError(f"min_alignment must be a kappa in [-1, 1] or None, got {min_alignment!r}.")
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 0:
            raise ConfigError(f"check_every_n_steps must be an integer >= 0, got {check_every_n_steps!r}.")
        if on_no_signal not in _POLICIES:
            raise ConfigError(f"on_no_signal must be one of {_POLICIES}, got {on_no_signal!r}.")
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
        self.space = space
        self.forward_module = forward_module
        self.min_alignment = None if min_alignment is None else float(min_alignment)
        self.check_every_n_steps = check_every_n_steps
        self.on_no_signal = on_no_signal

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
        # where the direction carries signal (see the class docstring); part of the state
        self._space = ""  # resolved in setup: "weights" or "outputs"
        self._check_alignment = False  # weight space with layers below that are not provably the reference's
        self._signal_ok = True
        self._signal_reasons: list[str] = []
        self._alignment: list[tuple[int, float, int]] = []  # (step, kappa, rows)
        self._first_check_done = False
        self._window: Tensor | None = None  # alignment counts collected so far
        self._new_kappa: float | None = None
        self._ref_state: dict[str, Tensor] = {}  # the reference's tensors, keys relative to the forward module
        self._ref_state_key: tuple[Any, ...] | None = None
        self._fwd_module: nn.Module | None = None
        self._ref_due = False
        self._ref_running = False
        self._ref_capture: tuple[Tensor, Tensor] | None = None
        self._z_ref: Tensor | None = None
        self._output_checked = False
        self._flat_obs = [0, 0]  # (flat, seen) logging steps of the current epoch

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
        align = torch.tensor(self._alignment, dtype=torch.float64).reshape(-1, 3)
        return {"version": self.STATE_VERSION, "reweighted_steps": self.reweighted_steps,
                "log": self.score_log.state_dict(),
                "signal": {"ok": self._signal_ok, "space": self._space, "reasons": list(self._signal_reasons),
                           "first_check_done": self._first_check_done, "alignment": align}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = self._migrate(dict(state_dict))
        self.reweighted_steps = int(state["reweighted_steps"])
        self.score_log.load_state_dict(state["log"])
        sig = state["signal"]
        self._signal_ok = bool(sig["ok"])
        self._signal_reasons = [str(r) for r in sig["reasons"]]
        self._first_check_done = bool(sig["first_check_done"])
        self._alignment = [(int(a), float(b), int(c)) for a, b, c in torch.as_tensor(sig["alignment"]).tolist()]
        self._window = None

    @classmethod
    def _migrate(cls, state: dict[str, Any]) -> dict[str, Any]:
        version = int(state.get("version", 1))
        if version > cls.STATE_VERSION:
            raise DataError(f"GradMimicCallback state version {version} is newer than this code "
                            f"({cls.STATE_VERSION}); upgrade lightning_ws to resume from this checkpoint.")
        if version < 2:  # v1 had no signal checks
            state["signal"] = {"ok": True, "space": "", "reasons": [], "first_check_done": False,
                               "alignment": torch.zeros(0, 3, dtype=torch.float64)}
        return state

    @property
    def signal(self) -> dict[str, Any]:
        """What the run's checks found: ``ok`` (the direction carries signal as far as checked), ``space`` (the
        resolved score space), ``reasons`` (why not), ``alignment`` (``(step, kappa, rows)`` per alignment check)."""
        return {"ok": self._signal_ok, "space": self._space, "reasons": list(self._signal_reasons),
                "alignment": list(self._alignment)}

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
        self._resolve_space(pl_module, ref, model_state, full=keys is None, ref_w=ref_w, ref_b=ref_b)
        self._handles.append(layer.register_forward_hook(self._forward_hook))
        if self._ref_state:
            self._handles.append(self._fwd_module.register_forward_hook(self._module_forward_hook, with_kwargs=True))

    def _resolve_space(self, pl_module: pl.LightningModule, ref: Mapping[str, Tensor],
                       model_state: Mapping[str, Tensor], *, full: bool, ref_w: Tensor, ref_b: Tensor | None) -> None:
        """Decide the score space and whether the alignment must be checked; prepare the runnable reference."""
        mimic_keys = {f"{self.mimic_layer}.weight", f"{self.mimic_layer}.bias"}
        others_train = [n for n, p in pl_module.named_parameters() if p.requires_grad and n not in mimic_keys]
        shared = not others_train and (not full or all(
            torch.equal(ref[k].to(v.device, v.dtype), v) for k, v in model_state.items() if k not in mimic_keys))
        self._output_checked = False
        self._ref_state = {}
        self._check_alignment = False
        self._signal_ok, self._signal_reasons, self._alignment = True, [], []  # a fresh fit (a resume restores them)
        self._first_check_done, self._window, self._new_kappa = False, None, None
        self._flat_obs = [0, 0]
        if self.score == "grand":  # GraNd does not use the reference
            self._space = "weights"
            return
        space = self.space
        if space == "auto":
            space = "weights" if shared or not full else "outputs"
        if space == "outputs" and not full:
            raise ConfigError("space='outputs' runs the reference model on the training inputs, but the reference "
                              "holds only the mimic layer (strict_reference=False). Pass the full reference (a "
                              "state dict, checkpoint or module of the LightningModule's architecture).")
        self._space = space
        if space == "weights" and not shared and not full:
            what = (f"parameters other than the mimic layer train ({others_train[:5]}"
                    f"{' ...' if len(others_train) > 5 else ''})")
            self._no_signal(f"{what}, so the mimic layer's inputs leave the reference's feature space and W_ref - W_t "
                            f"stops pointing toward the reference's predictions (with noisy labels it then favours "
                            f"mislabelled samples); the reference holds only the mimic layer, so this cannot be "
                            f"checked or scored in output space. Pass the full reference and space='auto' or "
                            f"'outputs', or freeze the layers below (linear probing on a backbone shared with the "
                            f"reference)", at_start=True)
            return
        self._check_alignment = (space == "weights" and not shared and self.min_alignment is not None)
        needs_ref = space == "outputs" or self._check_alignment or (self.score == "rho" and not shared)
        if not needs_ref:
            return
        try:
            fwd = pl_module.get_submodule(self.forward_module) if self.forward_module else pl_module
        except AttributeError as err:
            raise ConfigError(f"forward_module {self.forward_module!r} is not a submodule of "
                              f"{type(pl_module).__name__}.") from err
        prefix = f"{self.forward_module}." if self.forward_module else ""
        if not self.mimic_layer.startswith(prefix):
            raise ConfigError(f"the mimic layer {self.mimic_layer!r} is not inside forward_module "
                              f"{self.forward_module!r}; name the submodule whose call runs the mimic layer.")
        state = {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
        local = self.mimic_layer[len(prefix):]
        state[f"{local}.weight"] = ref_w  # with the sigma perturbation, if any
        if ref_b is not None:
            state[f"{local}.bias"] = ref_b
        self._ref_state = state
        self._ref_state_key = None  # moved to the module's devices and dtypes at the first reference forward
        self._fwd_module = fwd

    def _no_signal(self, reason: str, *, at_start: bool) -> None:
        """Record that the direction carries no signal; refuse at the start (policy 'raise'), else warn."""
        self._signal_ok = False
        if reason not in self._signal_reasons:
            self._signal_reasons.append(reason)
        msg = f"Grad-Mimic ({self.mimic_layer!r}, space={self._space!r}): {reason}."
        if at_start and self.on_no_signal == "raise":
            raise ConfigError(msg + " (on_no_signal='warn' trains anyway and records the reason.)")
        import warnings

        warnings.warn(msg, GradMimicSignalWarning, stacklevel=2)

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
        self._z_ref = None

    def _forward_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
        if _REFERENCE_FORWARD[0]:
            if self._ref_running and isinstance(output, Tensor):
                self._ref_capture = (inputs[0].detach(), output.detach())
            return
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

    def _alignment_due(self, step: int) -> bool:
        """Whether this step measures the alignment (the first window, an unfinished window, or a check step)."""
        if not self._check_alignment:
            return False
        return (not self._first_check_done or self._window is not None
                or (self.check_every_n_steps > 0 and step % self.check_every_n_steps == 0))

    def _module_forward_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                             output: Any) -> None:
        """After the model's forward on the training batch: run the reference on the same arguments when needed."""
        if _REFERENCE_FORWARD[0] or not self._capturing or not self._ref_due or not torch.is_grad_enabled():
            return
        if self._z is None or self._a is None or self._z_ref is not None:
            return  # the mimic layer did not run in this call, or the reference already ran for this micro-batch
        name = self.forward_module or type(module).__name__
        if self._space == "outputs" and not self._output_checked:
            if not _contains(output, self._z):
                raise ConfigError(
                    f"space='outputs' compares the reference's and the model's outputs of the mimic layer "
                    f"{self.mimic_layer!r}, which is meaningful only for the output layer (its coordinates are the "
                    f"classes in both models), but {name} does not return that layer's output. For an inner layer use "
                    f"space='weights' with the layers below shared with the reference (the alignment check says "
                    f"whether they are), or set forward_module to the module whose output the mimic layer produces.")
            self._output_checked = True
        self._z_ref = self._run_reference(module, args, kwargs, name)
        trainer = self._trainer
        step = trainer.global_step if trainer is not None else 0
        if self._alignment_due(step):
            self._update_alignment(self._z_ref, step)

    def _run_reference(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Tensor:
        """The reference's own output of the mimic layer on the same arguments (eval mode, no gradient)."""
        w = self._layer.weight
        key = (w.device, w.dtype)
        if self._ref_state_key != key:  # setup runs before Lightning moves the model (and before precision casts)
            own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
            self._ref_state = {k: v.to(own[k].device, own[k].dtype if v.is_floating_point() else v.dtype)
                               if k in own else v.to(w.device) for k, v in self._ref_state.items()}
            self._ref_state_key = key
        flags = [(m, m.training) for m in module.modules()]
        module.train(False)
        self._ref_running, self._ref_capture = True, None
        _REFERENCE_FORWARD[0] += 1
        try:
            with torch.no_grad():
                torch.func.functional_call(module, self._ref_state, args, kwargs, strict=False)
        finally:
            _REFERENCE_FORWARD[0] -= 1
            self._ref_running = False
            for m, f in flags:
                m.training = f
        if self._ref_capture is None:
            raise ConfigError(f"the reference forward through {name} did not call the mimic layer "
                              f"{self.mimic_layer!r}; set forward_module to the module that runs it.")
        z_ref = self._ref_capture[1]
        self._ref_capture = None
        if z_ref.shape != self._z.shape:
            raise DataError(f"the reference's mimic-layer output has shape {tuple(z_ref.shape)}, the model's "
                            f"{tuple(self._z.shape)}; the reference must have the same architecture.")
        return z_ref

    def _update_alignment(self, z_ref: Tensor, step: int) -> None:
        """Add this micro-batch to the alignment window (summed over ranks); judge the window once it is full."""
        d = self._direction_fn
        if d.device != self._a.device:
            d.to(self._a.device)
        cross = torch.nn.functional.linear(self._a.float(), d.ref_weight, d.ref_bias)
        counts = alignment_counts(z_ref.float(), cross)
        if self._world > 1:  # every rank measures on the same steps: the collective is aligned
            counts = self._trainer.strategy.reduce(counts, reduce_op="sum")
        self._window = counts if self._window is None else self._window + counts
        if float(self._window[0]) < _MIN_ALIGNMENT_ROWS:
            return
        kappa, rows = kappa_from_counts(self._window), int(self._window[0])
        self._window = None
        self._alignment.append((int(step), kappa, rows))
        self._new_kappa = kappa
        first = not self._first_check_done
        self._first_check_done = True
        if kappa < self.min_alignment and (first or self._signal_ok):  # one warning per loss of signal
            when = "at the start" if first else f"fell at step {step}"
            self._no_signal(
                f"the mimic layer's inputs are not in the reference's feature space ({when}: the reference layer on "
                f"the model's inputs agrees with the reference's own predictions at kappa {kappa:.2f} < min_alignment "
                f"{self.min_alignment:g}, {rows} rows), so W_ref - W_t does not point toward the reference's "
                f"predictions and the scores mostly rank samples by the model's own margin (with noisy labels it "
                f"favours mislabelled samples). Use space='outputs' (or 'auto'), which projects on the reference's "
                f"own outputs, or freeze the layers below on the reference's backbone (linear probing)", at_start=first)

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
        self._ref_due = bool(self._ref_state) and (self._space == "outputs" or self.score == "rho"
                                                   or self._alignment_due(trainer.global_step))
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
        self._a = self._z = self._delta = self._z_ref = None
        if self._new_kappa is not None:
            pl_module.log("gradmimic/alignment_kappa", self._new_kappa, on_step=True, on_epoch=False, batch_size=1)
            self._new_kappa = None
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
            max_rel = float(w.max() * w.numel())
            self._flat_obs[0] += int(max_rel < 1.0 + _FLAT_TOL)
            self._flat_obs[1] += 1
            values = {"weight_entropy": weight_entropy(w), "max_relative_weight": max_rel,
                      "score_mean": float(sc.mean()), "score_std": float(sc.std()) if sc.numel() > 1 else 0.0,
                      "v_norm": float(stats["v_norm"]) if stats["v_norm"] is not None else self._v_norm_now()}
            pl_module.log_dict({f"gradmimic/{k}": v for k, v in values.items()}, on_step=True, on_epoch=False,
                               batch_size=int(stats["batch_size"]))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        flat, seen = self._flat_obs
        self._flat_obs = [0, 0]
        # flat weights on every logging step of the epoch (the same statistics on every rank: gathered weights)
        if seen and flat == seen and not math.isinf(self.tau) and self.score in ("proj", "cos"):
            self._no_signal(f"the batch weights were flat in epoch {trainer.current_epoch} (max relative weight < "
                            f"{1 + _FLAT_TOL:g} on all {seen} logging steps): the scores are tiny next to "
                            f"tau={self.tau:g} or W_ref == W_t, so the re-weighting is plain SGD and the recorded "
                            f"weights say nothing about the samples; lower tau", at_start=False)

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
            if self._space == "outputs":
                scores = output_mimic_scores(delta, self._require_ref_outputs(), self._z, v_norm=v_norm,
                                             variant=self.score, inputs=a, with_bias=layer.bias is not None,
                                             eps=self.eps, grad_scale=grad_scale)
            else:
                scores = mimic_scores(a, delta, v_w, v_b, variant=self.score, v_norm=v_norm, eps=self.eps,
                                      grad_scale=grad_scale)
        elif self.score == "grand":
            scores = grand_scores(a, delta, with_bias=layer.bias is not None) * grad_scale
        else:
            if self._batch_labels is None or self._z is None:
                raise DataError("score='rho' needs batch['labels'] and the mimic layer's output.")
            if self._ref_state:  # the layers below are not the reference's: its own outputs
                ref_logits = self._require_ref_outputs().float()
            else:  # shared layers below: the reference head on the model's inputs is the reference's output
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

    def _require_ref_outputs(self) -> Tensor:
        if self._z_ref is None:
            name = repr(self.forward_module) if self.forward_module else "the LightningModule's forward"
            raise ConfigError(f"Grad-Mimic (space={self._space!r}, score={self.score!r}) needs the reference's outputs "
                              f"on the training inputs, but {name} was not called with them in this training step. "
                              f"Call it in training_step (e.g. logits = self(x)), or set forward_module to the "
                              f"submodule training_step calls.")
        return self._z_ref

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
        """Run :class:`~lightning_ws.gradmimic.MimicScoreFilter` on the recorded relative weights.

        Refuses (DataError; with ``on_no_signal="warn"`` in ``kwargs``: warns and returns ``reliable=False``, quality
        NaN) when the training-time checks found no signal (:attr:`signal`) or the table itself is flat or
        inconsistent between epochs.
        """
        if len(self.score_log) == 0:
            raise DataError("no scores recorded yet (record_scores=False, or fit has not run).")
        table = self.score_table(by=by, num_samples=num_samples)
        reasons = () if self._signal_ok else tuple(self._signal_reasons)
        return MimicScoreFilter(binarizer, aggregator, **kwargs).fit(table, no_signal_reasons=reasons)

    def save_scores(self, path: str | os.PathLike) -> Path:
        """Write the score log atomically as safetensors (columns ``idx, weight, score, batch_size, epoch, step``)."""
        return save_tensors(path, self.score_log.tensors(), metadata={"method": "gradmimic", "score": self.score,
                                                               "tau": repr(self.tau), "mode": self.mode,
                                                               "mimic_layer": self.mimic_layer, "space": self._space,
                                                               "signal_ok": str(self._signal_ok).lower(),
                                                               "signal_reasons": " | ".join(self._signal_reasons)})


def _contains(output: Any, t: Tensor) -> bool:
    """Whether ``t`` (by identity) is ``output`` or one of its (nested) tuple/list/mapping values."""
    if output is t:
        return True
    if isinstance(output, Mapping):
        return any(_contains(v, t) for v in output.values())
    if isinstance(output, (tuple, list)):
        return any(_contains(v, t) for v in output)
    return False


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
