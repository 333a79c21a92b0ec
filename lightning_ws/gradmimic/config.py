"""Grad-Mimic callback arguments, step bookkeeping and checkpoint state, without Lightning (used by
:class:`~lightning_ws.callbacks.GradMimicCallback`, which only wires them to the Trainer's hooks).

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
      :func:`~lightning_ws.gradmimic.loss.reduce_per_sample_loss` (or the callback's ``reduce_loss``) inside
      ``training_step``; the weights are computed there from ``d loss_i / d z_i`` of the mimic layer's output
      ``z`` (a partial backward from the losses to ``z``: for an output head that is only the loss's own backward,
      ``O(B C)``; for an inner layer it is the backward of the layers above it), and the returned loss is
      ``sum_i w_i loss_i``.
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
    * Improvement over the reference code (~20x SGD per batch: ``vmap`` per-sample gradients of every parameter
      and a Python loop): closed-form scores, the weighted gradient from autograd itself (linear probe) or one
      matmul; ``W_ref - W_t`` recomputed once per optimizer step; statistics only on steps that log.
    * Sharing the layer: the hooks go through the layer's shared :class:`~lightning_ws.tracked_layer.LayerTap`;
      the scores use the plain output gradient, and the in-graph re-weighting runs after every other tracker
      (R&B) has read it, so another callback on the same layer sees what it would see alone, in either order.

Where the mimic direction carries signal (``space``; background in :mod:`lightning_ws.gradmimic.signal`, numbers
in BENCHMARKS.md, section Grad-Mimic): the paper's score applies the reference layer to *the model's* layer inputs,
which is the reference's own output only when the layers below are the reference's (linear probing on a shared
backbone); when they train away from it, the score ranks samples by the model's own margin and favours
mislabelled samples (AUC 0.31 on digits, 0.32 on a CIFAR-10 CNN). Therefore:

    * ``space="weights"``: the paper's direction. When the layers below are not provably the reference's (some
      parameter other than the mimic layer trains, or differs from the reference), the callback runs the
      reference on the training inputs for the first ``MIN_ALIGNMENT_ROWS`` rows and then every
      ``check_every_n_steps`` steps, and measures the *alignment*: Cohen's kappa between the argmax of the
      reference layer on the model's inputs and of the reference's own output (1 = same feature space, ~0 =
      unrelated). Below ``min_alignment`` at the start it raises (``on_no_signal="raise"``, default) or warns;
      later drops warn. The reason is kept in the callback's ``signal``.
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

"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ws.contracts import IDX, LABELS
from lightning_ws.errors import ConfigError, DataError
from lightning_ws.gradmimic.filters import NO_SIGNAL_POLICIES
from lightning_ws.gradmimic.reference import check_same_architecture, load_reference_state, reference_layer
from lightning_ws.gradmimic.scores import SCORE_VARIANTS, TargetDirection, batch_softmax_weights_checked, weight_entropy
from lightning_ws.tracked_layer import check_state_version

__all__ = [
    "MODES",
    "POLICIES",
    "REDUCTIONS",
    "SPACES",
    "STATE_VERSION",
    "DirectionCache",
    "Micro",
    "add_weighted_grad",
    "check_gradmimic_args",
    "layers_below",
    "missing_ref_outputs",
    "not_output_layer",
    "pack_state",
    "prepare_reference",
    "read_batch",
    "step_log_values",
    "units_factor",
    "unpack_state",
]

MODES = ("layer_only", "all_params")
REDUCTIONS = ("mean", "sum")
SPACES = ("auto", "weights", "outputs")
POLICIES = NO_SIGNAL_POLICIES
STATE_VERSION = 2


def check_gradmimic_args(*, mimic_layer: Any, reference: Any, tau: Any, mode: Any, score: Any, start_epoch: Any,
                         loss_reduction: Any, reference_noise_std: Any, eps: Any, space: Any, forward_module: Any,
                         min_alignment: Any, check_every_n_steps: Any, on_no_signal: Any) -> float:
    """Check :class:`~lightning_ws.callbacks.GradMimicCallback`'s arguments (``ConfigError``); return ``tau`` as a
    float. LightningCLI checks the ``Literal`` choices; direct Python use is checked here."""
    if not isinstance(mimic_layer, str) or not mimic_layer:
        raise ConfigError(f"mimic_layer must be the dotted name of an nn.Linear, got {mimic_layer!r}.")
    if not isinstance(reference, (str, os.PathLike, Mapping, nn.Module)):
        raise ConfigError(f"reference must be a checkpoint path, a state dict or an nn.Module, got "
                          f"{type(reference).__name__}.")
    tau = float(tau) if isinstance(tau, (int, float)) and not isinstance(tau, bool) else tau
    if not isinstance(tau, float) or not tau > 0:
        raise ConfigError(f"tau must be a positive number (inf = plain SGD), got {tau!r}.")
    for name, value, options in (("mode", mode, MODES), ("score", score, SCORE_VARIANTS),
                                 ("loss_reduction", loss_reduction, REDUCTIONS), ("space", space, SPACES),
                                 ("on_no_signal", on_no_signal, POLICIES)):
        if value not in options:
            raise ConfigError(f"{name} must be one of {options}, got {value!r}.")
    for name, value in (("start_epoch", start_epoch), ("check_every_n_steps", check_every_n_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}.")
    if not isinstance(reference_noise_std, (int, float)) or not reference_noise_std >= 0 \
            or math.isinf(reference_noise_std):
        raise ConfigError(f"reference_noise_std must be a finite number >= 0, got {reference_noise_std!r}.")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps!r}.")
    if not isinstance(forward_module, str):
        raise ConfigError(f"forward_module must be a dotted submodule name ('' = the LightningModule), got "
                          f"{forward_module!r}.")
    if min_alignment is not None and (isinstance(min_alignment, bool) or not isinstance(min_alignment, (int, float))
                                      or not -1.0 <= min_alignment <= 1.0):
        raise ConfigError(f"min_alignment must be a kappa in [-1, 1] or None, got {min_alignment!r}.")
    return tau


class Micro:
    """What one training micro-batch's capture holds (replaced at the start of every micro-batch)."""

    __slots__ = ("a", "calls", "capturing", "delta", "idx", "in_graph", "labels", "ref_due", "weighted", "z", "z_ref")

    def __init__(self, idx: Tensor | None = None, labels: Tensor | None = None, ref_due: bool = False) -> None:
        self.capturing = idx is not None
        self.a = self.z = self.delta = self.z_ref = None
        self.idx, self.labels, self.ref_due = idx, labels, ref_due
        self.calls = 0
        self.weighted = self.in_graph = False

    def clear(self) -> None:
        """Drop the captured tensors (the layer input and output, the output gradient)."""
        self.a = self.z = self.delta = None

    def layer_called(self, x: Tensor, output: Tensor, mimic_layer: str) -> None:
        """Record the mimic layer's input and output (``ConfigError`` when it runs twice in one step)."""
        self.calls += 1
        if self.calls > 1:
            raise ConfigError(f"mimic_layer {mimic_layer!r} was called {self.calls} times in one training "
                              f"step; the closed-form scores need a layer that is applied once per forward.")
        self.a, self.z = x.detach(), output

    def ref_outputs(self, score: str, space: str, has_runner: bool, forward_module: str) -> Tensor | None:
        """The reference's outputs on this micro-batch where the score uses them (``space="outputs"``, or ``rho``
        with a runnable reference), else ``None``; ``DataError`` for ``rho`` without labels or the layer's output,
        ``ConfigError`` when the forward module did not run."""
        if score == "rho" and (self.labels is None or self.z is None):
            raise DataError(f"score='rho' needs batch[{LABELS!r}] and the mimic layer's output.")
        uses_ref = space == "outputs" if score in ("proj", "cos") else (score == "rho" and has_runner)
        if uses_ref and self.z_ref is None:
            raise missing_ref_outputs(forward_module, space, score)
        return self.z_ref if uses_ref else None

    def check_loss(self, per_sample_loss: Tensor, mimic_layer: str) -> None:
        """``reduce_loss`` in ``all_params`` mode: the layer ran, and the losses match its batch."""
        if self.z is None or self.a is None:
            raise ConfigError(f"reduce_loss was called before the mimic layer {mimic_layer!r} ran in this "
                              f"training step; call it after the forward pass.")
        if per_sample_loss.shape[0] != self.a.shape[0]:
            raise DataError(f"per_sample_loss has {per_sample_loss.shape[0]} entries but the mimic layer saw a batch "
                            f"of {self.a.shape[0]}.")

    def check_backward(self, mode: str, mimic_layer: str) -> None:
        """After the backward: ``all_params`` needs the weighted loss, ``layer_only`` the layer's output gradient."""
        if mode == "all_params" and not self.weighted:
            raise ConfigError("mode='all_params' needs the module to reduce its per-sample losses with "
                              "lightning_ws.gradmimic.loss.reduce_per_sample_loss(self, per_sample_loss) in "
                              "training_step; it was not called in this step.")
        if mode == "layer_only" and (self.a is None or self.delta is None):
            raise ConfigError(f"the mimic layer {mimic_layer!r} received no gradient in this training step; "
                              f"check that its output reaches the loss.")


def forward_module_of(root: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``root`` that the training step calls (``""``: ``root``), or ``ConfigError``."""
    try:
        return root.get_submodule(name) if name else root
    except AttributeError as err:
        raise ConfigError(f"forward_module {name!r} is not a submodule of {type(root).__name__}.") from err


def score_metadata(*, score: str, tau: float, mode: str, mimic_layer: str, monitor: Any) -> dict[str, str]:
    """The metadata written with a saved score log (the run's settings and signal findings)."""
    return {"method": "gradmimic", "score": score, "tau": repr(tau), "mode": mode, "mimic_layer": mimic_layer,
            "space": monitor.space, "signal_ok": str(monitor.ok).lower(), "signal_reasons": " | ".join(monitor.reasons)}


def sample_coeffs(weights: Tensor, loss_reduction: str) -> Tensor:
    """Per-sample factors ``c_i`` that turn the plain (mean- or sum-reduced) output gradient into the weighted one."""
    return weights * weights.shape[0] if loss_reduction == "mean" else weights


def scale_rows(grad: Tensor, coeffs: Tensor) -> Tensor:
    """``grad`` (``(B, ...)``) with row ``i`` multiplied by ``coeffs[i]``."""
    return grad * (coeffs.unsqueeze(1) if grad.dim() == 2 else coeffs.reshape(-1, *([1] * (grad.dim() - 1))))


def read_batch(batch: Any, *, need_labels: bool) -> tuple[Tensor, Tensor | None]:
    """The micro-batch's ``(B,)`` sample ids and, ``need_labels`` (``score="rho"``), its labels (``DataError``)."""
    if not isinstance(batch, Mapping) or IDX not in batch:
        raise DataError(f"GradMimicCallback needs dict batches with an {IDX!r} entry (the sample's stable id, its "
                        f"row index in the training set) to record per-sample scores; add it in the dataset.")
    idx = batch[IDX]
    idx = idx if isinstance(idx, Tensor) and idx.dim() == 1 else torch.as_tensor(idx).reshape(-1)
    if need_labels and LABELS not in batch:
        raise DataError(f"score='rho' needs batch[{LABELS!r}] to compute the reference loss.")
    return idx, torch.as_tensor(batch[LABELS]) if need_labels else None


def units_factor(batch_size: int, *, accum: int, loss_scale: float | None, loss_reduction: str) -> float:
    """Factor from a hooked output gradient to per-sample-loss units (accumulation, AMP scale, mean reduction)."""
    factor = accum / (loss_scale if loss_scale is not None else 1.0)
    return factor * batch_size if loss_reduction == "mean" else factor


def prepare_reference(reference: Any, model_state: Mapping[str, Tensor], mimic_layer: str, *, strict: bool,
                      has_bias: bool, noise_std: float, seed: int,
                      device: torch.device) -> tuple[dict[str, Tensor], bool, Tensor, Tensor | None, TargetDirection]:
    """Load and check the reference (the full state dict, or only the mimic layer's keys unless ``strict``), take its
    mimic layer (plus Gaussian noise of std ``noise_std`` from a generator seeded with ``seed``) and return
    ``(reference state, whether it was checked in full, ref weight, ref bias, direction on device)``."""
    ref = load_reference_state(reference)
    keys = None if strict else [k for k in (f"{mimic_layer}.weight", f"{mimic_layer}.bias") if k in model_state]
    check_same_architecture(ref, model_state, keys=keys)
    ref_w, ref_b = reference_layer(ref, mimic_layer, has_bias=has_bias)
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed)
        ref_w = ref_w + noise_std * torch.randn(ref_w.shape, generator=gen)
        if ref_b is not None:
            ref_b = ref_b + noise_std * torch.randn(ref_b.shape, generator=gen)
    direction = TargetDirection(ref_w.to(device), ref_b.to(device) if ref_b is not None else None)
    return ref, keys is None, ref_w, ref_b, direction


def layers_below(named_parameters: Any, ref: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                 mimic_layer: str, *, full: bool) -> tuple[list[str], bool]:
    """The trained parameters other than the mimic layer, and whether the layers below are provably the
    reference's (nothing else trains, and every other tensor equals the reference's when it was checked in full)."""
    mimic_keys = {f"{mimic_layer}.weight", f"{mimic_layer}.bias"}
    others_train = [n for n, p in named_parameters if p.requires_grad and n not in mimic_keys]
    shared = not others_train and (not full or all(
        torch.equal(ref[k].to(v.device, v.dtype), v) for k, v in model_state.items() if k not in mimic_keys))
    return others_train, shared


class DirectionCache:
    """``W_ref - W_t`` and its norm, recomputed only when the layer's parameters changed (an optimizer step or any
    in-place update bumps the tensors' version counters; a replaced tensor changes id/data_ptr), not once per
    micro-batch."""

    def __init__(self) -> None:
        self.key: tuple[int, ...] | None = None
        self.value: tuple[Tensor, Tensor | None, float] | None = None

    def get(self, fn: TargetDirection, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None, float]:
        key = (id(w), w.data_ptr(), w._version, -1 if b is None else b._version)
        if self.value is None or key != self.key:
            self.key, self.value = key, fn(w, b)
        return self.value


def add_weighted_grad(acc: tuple[Tensor, Tensor | None] | None, gw: Tensor,
                      gb: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Add a micro-batch's weighted layer gradient into the optimizer step's sum (``acc``; ``None`` = empty)."""
    if acc is None:
        return gw, gb
    acc[0].add_(gw)
    if gb is not None:
        acc[1].add_(gb)
    return acc


def step_log_values(stats: dict[str, Any], v_norm_now: Any) -> dict[str, float]:
    """The ``gradmimic/*`` values of a logging step from the last micro-batch's ``stats`` (weights, scores, ``v_norm``
    or ``None``: then ``v_norm_now()`` is called)."""
    w, sc = stats["weights"], stats["scores"]
    values = {"weight_entropy": weight_entropy(w), "max_relative_weight": float(w.max() * w.numel()),
              "score_mean": float(sc.mean()), "score_std": float(sc.std()) if sc.numel() > 1 else 0.0,
              "v_norm": float(stats["v_norm"]) if stats["v_norm"] is not None else v_norm_now()}
    return {f"gradmimic/{k}": v for k, v in values.items()}


def pack_state(reweighted_steps: int, log: Any, monitor: Any) -> dict[str, Any]:
    """The callback's checkpoint state: the re-weighted step count, the score log and the signal findings."""
    return {"version": STATE_VERSION, "reweighted_steps": reweighted_steps, "log": log.state_dict(),
            "signal": monitor.state_dict()}


def unpack_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Check a :func:`pack_state` dict's version and bring an older one up to date (v1 had no signal checks)."""
    state = dict(state_dict)
    if check_state_version(state, STATE_VERSION, "GradMimicCallback") < 2:
        state["signal"] = {"ok": True, "space": "", "reasons": [], "first_check_done": False,
                           "alignment": torch.zeros(0, 3, dtype=torch.float64)}
    return state


def missing_ref_outputs(forward_module: str, space: str, score: str) -> ConfigError:
    """The error when the reference's outputs are needed but the forward module was not called in the step."""
    name = repr(forward_module) if forward_module else "the LightningModule's forward"
    return ConfigError(f"Grad-Mimic (space={space!r}, score={score!r}) needs the reference's outputs on the training "
                       f"inputs, but {name} was not called with them in this training step. Call it in training_step "
                       f"(e.g. logits = self(x)), or set forward_module to the submodule training_step calls.")


def not_output_layer(mimic_layer: str, runner_name: str) -> ConfigError:
    """The error for ``space="outputs"`` on a layer whose output is not the forward module's output."""
    return ConfigError(
        f"space='outputs' compares the reference's and the model's outputs of the mimic layer {mimic_layer!r}, which "
        f"is meaningful only for the output layer (its coordinates are the classes in both models), but {runner_name} "
        f"does not return that layer's output. For an inner layer use space='weights' with the layers below shared "
        f"with the reference (the alignment check says whether they are), or set forward_module to the module whose "
        f"output the mimic layer produces.")


def global_weights(scores: Tensor, idx: Tensor | None, tau: float,
                   gather: Any = None) -> tuple[Tensor, bool, Tensor, Tensor, Tensor]:
    """The softmax over the global micro-batch: ``(weights, finite, all scores (float32), all ids, this rank's
    weights)``. ``gather`` (a collective, ``None`` on one process) all-gathers ``(n, ...)`` rows and returns them with
    this rank's offset; ``idx`` must hold one id per local score (``DataError``)."""
    n_local = scores.shape[0]
    if idx is None or idx.numel() != n_local:
        raise DataError(f"batch[{IDX!r}] has {0 if idx is None else idx.numel()} entries but the "
                        f"mimic layer saw {n_local} samples; {IDX!r} must hold one id per sample.")
    if gather is not None:
        all_scores, offset = gather(scores.float().contiguous())
        all_idx, _ = gather(idx.to(scores.device).long().contiguous())
    else:
        all_scores, offset, all_idx = scores, 0, idx
    weights, finite = batch_softmax_weights_checked(all_scores, tau)
    all_scores = all_scores if all_scores.dtype == torch.float32 else all_scores.float()
    local = weights[offset: offset + n_local] if gather is not None else weights
    return weights, finite, all_scores, all_idx, local
