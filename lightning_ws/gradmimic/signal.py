"""When does the Grad-Mimic direction carry signal? Scores in output space, alignment checks, filter checks.

Plain torch/numpy, no Lightning (arXiv 2501.06708). Background, measured in ``BENCHMARKS.md`` (section Grad-Mimic):

* The paper's score uses the weight-space direction ``V = W_ref - W_t`` of one linear layer. For sample ``i`` with
  layer input ``a_i`` and output gradient ``delta_i``, ``<-g_i, V> = -delta_i . (W_ref a_i + b_ref) + delta_i .
  (W_t a_i + b_t)``: the reference layer is applied to *the model's* inputs. That is the reference's own output only
  when the layers below are the reference's (linear probing on a shared backbone, the paper's main setting). When the
  layers below train from another initialisation, ``W_ref a_i`` is unrelated to the reference's prediction and the
  score reduces to its second term, the model's own negative margin: mislabelled samples get *more* weight.
* Output space (:func:`output_mimic_scores`): replace ``W_ref a_i + b_ref`` by the reference's own output on the same
  input (a reference forward pass). With shared layers below it is the same number; otherwise it is the only one of
  the two that says what the reference predicts. Defined for the output layer, whose coordinates (the classes) mean
  the same in both models.
* Alignment (:func:`alignment_counts`, :func:`kappa_from_counts`): Cohen's kappa between the argmax of the reference
  layer applied to the model's inputs and the argmax of the reference's own output. 1 with shared layers below; about 0
  when the feature spaces are unrelated.
* Filter checks (:func:`table_signal`): a recorded weight table whose values are flat, or whose per-sample ranking is
  not reproduced from one round to the next, carries no information about individual samples.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_ws.errors import ConfigError, DataError

__all__ = [
    "GradMimicSignalWarning",
    "output_mimic_scores",
    "alignment_counts",
    "kappa_from_counts",
    "table_signal",
    "reducible_loss_selection",
    "warn_no_signal",
    "SignalMonitor",
    "MIN_ALIGNMENT_ROWS",
    "FLAT_TOL",
]


class GradMimicSignalWarning(UserWarning):
    """The Grad-Mimic direction (or a recorded score table) carries no usable signal; the message says why."""


def warn_no_signal(message: str) -> None:
    """Emit :class:`GradMimicSignalWarning` (stacklevel pointing past the library)."""
    warnings.warn(message, GradMimicSignalWarning, stacklevel=3)


def output_mimic_scores(out_grads: Tensor, ref_outputs: Tensor, outputs: Tensor, *, v_norm: float,
                        variant: str = "proj", inputs: Tensor | None = None, with_bias: bool = True,
                        eps: float = 1e-12, grad_scale: float = 1.0) -> Tensor:
    """Mimic scores in output space: ``m_i = -sum_t delta_{i,t} . (z_ref_{i,t} - z_{i,t}) / ||V||``, shape ``(B,)``.

    ``z_ref`` is the reference model's own output of the mimic layer on sample ``i`` (its own forward pass) and ``z``
    the model's. When the layers below the mimic layer are the reference's, ``z_ref - z = V a + v_b`` and this equals
    :func:`~lightning_ws.gradmimic.mimic_scores` exactly; it is divided by the same ``||V|| = ||W_ref - W_t||`` so that
    ``tau`` keeps its meaning across the two.

    Args:
        out_grads: ``delta``, gradients of each sample's loss w.r.t. the layer output, ``(B, ..., out)``.
        ref_outputs: the reference's layer outputs on the same samples, same shape.
        outputs: the model's layer outputs, same shape.
        v_norm: ``||W_ref - W_t||`` (including the bias part); scores are 0 when it is ``<= eps``.
        variant: ``"proj"`` or ``"cos"`` (divided by the per-sample gradient norm; needs ``inputs``).
        inputs: the layer inputs ``(B, ..., in)`` (``"cos"`` only).
        with_bias: whether the layer has a bias (``"cos"`` gradient norm only).
        eps: guard for ``||V||`` and ``||g_i||``.
        grad_scale: factor from ``out_grads`` to per-sample-loss units (as in ``mimic_scores``).

    Returns:
        float32 tensor ``(B,)``.
    """
    if variant not in ("proj", "cos"):
        raise ConfigError(f"mimic score variant must be 'proj' or 'cos', got {variant!r}.")
    if out_grads.shape != ref_outputs.shape or outputs.shape != out_grads.shape:
        raise DataError(f"output gradients {tuple(out_grads.shape)}, reference outputs {tuple(ref_outputs.shape)} and "
                        f"outputs {tuple(outputs.shape)} must have the same shape.")
    b = out_grads.shape[0]
    if not v_norm > eps:
        return torch.zeros(b, device=out_grads.device)
    d = out_grads.reshape(b, -1).float()
    u = ref_outputs.reshape(b, -1).float() - outputs.detach().reshape(b, -1).float()
    # proj: scaled to per-sample-loss units; cos: the scale cancels (both factors of the ratio carry it)
    scores = torch.linalg.vecdot(d, u) * ((-grad_scale if variant == "proj" else -1.0) / v_norm)
    if variant == "cos":
        if inputs is None:
            raise ConfigError("the 'cos' variant needs the layer inputs for the per-sample gradient norm.")
        from lightning_ws.gradmimic.scores import per_sample_grad_norms

        norms = per_sample_grad_norms(inputs, out_grads, with_bias=with_bias)
        scores = scores / norms.clamp_min(eps / grad_scale)
    return scores


def alignment_counts(ref_outputs: Tensor, cross_outputs: Tensor) -> Tensor:
    """Counts for the alignment kappa, as one float64 vector (sum it over batches and ranks).

    Layout: ``[n, agreements, histogram of argmax(ref_outputs) (out), histogram of argmax(cross_outputs) (out)]``,
    over all rows (samples and positions) of ``(B, ..., out)`` outputs.

    Args:
        ref_outputs: the reference's own outputs of the mimic layer.
        cross_outputs: the reference layer applied to the *model's* inputs of the mimic layer.
    """
    if ref_outputs.shape != cross_outputs.shape:
        raise DataError(f"reference outputs {tuple(ref_outputs.shape)} and cross outputs "
                        f"{tuple(cross_outputs.shape)} differ in shape.")
    c = ref_outputs.shape[-1]
    pr = ref_outputs.reshape(-1, c).argmax(-1)
    pc = cross_outputs.reshape(-1, c).argmax(-1)
    out = torch.zeros(2 + 2 * c, dtype=torch.float64, device=ref_outputs.device)
    out[0] = pr.numel()
    out[1] = (pr == pc).sum()
    out[2: 2 + c] = torch.bincount(pr, minlength=c).double()
    out[2 + c:] = torch.bincount(pc, minlength=c).double()
    return out


def kappa_from_counts(counts: Tensor) -> float:
    """Cohen's kappa ``(agree - chance) / (1 - chance)`` from (summed) :func:`alignment_counts`; NaN when empty.

    1 when the reference layer on the model's inputs predicts what the reference predicts, about 0 when it is no
    better than chance given the two label histograms.
    """
    counts = counts.double().cpu()
    n = float(counts[0])
    if n <= 0:
        return math.nan
    c = (counts.numel() - 2) // 2
    agree = float(counts[1]) / n
    chance = float((counts[2: 2 + c] / n * counts[2 + c:] / n).sum())
    if chance >= 1.0 - 1e-12:  # both always predict the same single class: agreement is uninformative
        return 1.0 if agree >= 1.0 - 1e-12 else 0.0
    return (agree - chance) / (1.0 - chance)


def _rankdata(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size)
    return ranks


def table_signal(values: np.ndarray) -> dict[str, float]:
    """Signal statistics of an ``(R, N)`` relative-weight table (NaN = not seen).

    Returns:
        ``spread``: standard deviation over samples of the per-sample mean value (0 = flat: every sample got the same
        weight); ``consistency``: mean over consecutive round pairs of the Spearman correlation of the samples seen in
        both (NaN with fewer than two rounds or fewer than 3 common samples). A real per-sample signal is reproduced
        from one epoch to the next (batch composition changes, the sample does not); a ranking that is not reproduced
        is noise.
    """
    t = np.asarray(values, dtype=np.float64)
    if t.ndim != 2:
        raise DataError(f"values must be a (rounds, samples) table, got shape {t.shape}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sample_mean = np.nanmean(t, axis=0)
    seen = ~np.isnan(sample_mean)
    spread = float(np.std(sample_mean[seen])) if seen.any() else math.nan
    cors = []
    for r in range(1, t.shape[0]):
        both = ~np.isnan(t[r]) & ~np.isnan(t[r - 1])
        if both.sum() < 3:
            continue
        x, y = _rankdata(t[r - 1, both]), _rankdata(t[r, both])
        sx, sy = x.std(), y.std()
        cors.append(float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else 0.0)
    return {"spread": spread, "consistency": float(np.mean(cors)) if cors else math.nan}


def reducible_loss_selection(train_loss: Tensor, irreducible_loss: Tensor, fraction: float) -> Tensor:
    """RHO-LOSS selection (Mindermann et al., arXiv 2206.07137): weights over the batch, ``1/k`` on the ``k =
    ceil(fraction * B)`` samples with the largest reducible holdout loss ``train_loss - irreducible_loss``, 0 elsewhere.

    ``irreducible_loss`` is each sample's loss under a model trained on a clean holdout set (computed once before
    training, as in the paper). Ties are broken toward the lower batch position.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"selection fraction must be in (0, 1], got {fraction!r}.")
    if train_loss.shape != irreducible_loss.shape or train_loss.dim() != 1:
        raise DataError(f"train_loss {tuple(train_loss.shape)} and irreducible_loss {tuple(irreducible_loss.shape)} "
                        f"must both be (B,).")
    b = train_loss.numel()
    k = max(1, int(math.ceil(fraction * b)))
    red = (train_loss.detach().float() - irreducible_loss.float().to(train_loss.device))
    top = torch.topk(red, k, sorted=False).indices
    w = torch.zeros(b, device=train_loss.device)
    w[top] = 1.0 / k
    return w


#: rows (samples x positions) an alignment window collects before kappa is evaluated
MIN_ALIGNMENT_ROWS = 32
#: a batch whose largest relative weight is below 1 + FLAT_TOL counts as flat (uniform weights)
FLAT_TOL = 1e-3


class SignalMonitor:
    """What one Grad-Mimic fit found about the signal in its mimic direction (see the module docstring): whether it
    carries signal (``ok``), why not (``reasons``), the alignment checks ``(step, kappa, rows)``, and the flat-weight
    count of the current epoch. Its :meth:`state_dict` is the ``"signal"`` part of the callback's state.

    Args:
        label: the layer's name, for messages.
        on_no_signal: ``"raise"`` (a missing signal at the start raises ConfigError) or ``"warn"``.
        min_alignment: kappa below which the weight-space direction carries no signal (``None``: never checked).
        check_every_n_steps: optimizer steps between alignment checks after the first (0: only the first).
    """

    def __init__(self, label: str, on_no_signal: str = "raise", min_alignment: float | None = 0.5,
                 check_every_n_steps: int = 50) -> None:
        self.label, self.policy = label, on_no_signal
        self.min_alignment, self.every = min_alignment, check_every_n_steps
        self.reset("", check_alignment=False)

    def reset(self, space: str, *, check_alignment: bool) -> None:
        """A fresh fit scoring in ``space`` (a resume restores the recorded findings afterwards)."""
        self.space, self.check_alignment = space, check_alignment
        self.ok, self.reasons, self.alignment, self.first_check_done = True, [], [], False
        self.window: Tensor | None = None  # alignment counts collected so far
        self.new_kappa: float | None = None  # a kappa not logged yet
        self.flat = [0, 0]  # (flat, seen) logging steps of the current epoch

    def no_signal(self, reason: str, *, at_start: bool) -> None:
        """Record that the direction carries no signal; refuse at the start (policy ``"raise"``), else warn."""
        self.ok = False
        if reason not in self.reasons:
            self.reasons.append(reason)
        msg = f"Grad-Mimic ({self.label!r}, space={self.space!r}): {reason}."
        if at_start and self.policy == "raise":
            raise ConfigError(msg + " (on_no_signal='warn' trains anyway and records the reason.)")
        warnings.warn(msg, GradMimicSignalWarning, stacklevel=3)

    def alignment_due(self, step: int) -> bool:
        """Whether this step measures the alignment (the first window, an unfinished window, or a check step)."""
        if not self.check_alignment:
            return False
        return (not self.first_check_done or self.window is not None
                or (self.every > 0 and step % self.every == 0))

    def add_alignment(self, counts: Tensor, step: int) -> None:
        """Add one micro-batch's :func:`alignment_counts` (summed over ranks); judge the window once it is full."""
        self.window = counts if self.window is None else self.window + counts
        if float(self.window[0]) < MIN_ALIGNMENT_ROWS:
            return
        kappa, rows = kappa_from_counts(self.window), int(self.window[0])
        self.window = None
        self.alignment.append((int(step), kappa, rows))
        self.new_kappa = kappa
        first = not self.first_check_done
        self.first_check_done = True
        if kappa < self.min_alignment and (first or self.ok):  # one warning per loss of signal
            when = "at the start" if first else f"fell at step {step}"
            self.no_signal(
                f"the mimic layer's inputs are not in the reference's feature space ({when}: the reference layer on "
                f"the model's inputs agrees with the reference's own predictions at kappa {kappa:.2f} < min_alignment "
                f"{self.min_alignment:g}, {rows} rows), so W_ref - W_t does not point toward the reference's "
                f"predictions and the scores mostly rank samples by the model's own margin (with noisy labels it "
                f"favours mislabelled samples). Use space='outputs' (or 'auto'), which projects on the reference's "
                f"own outputs, or freeze the layers below on the reference's backbone (linear probing)", at_start=first)

    def observe_weights(self, max_relative_weight: float) -> None:
        """Count one logged batch, flat when its largest relative weight is below ``1 + FLAT_TOL``."""
        self.flat[0] += int(max_relative_weight < 1.0 + FLAT_TOL)
        self.flat[1] += 1

    def end_epoch(self, epoch: int, tau: float, judged: bool) -> None:
        """Flat weights on every logged batch of the epoch mean no signal (``judged``: this score is flat-checked)."""
        flat, seen = self.flat
        self.flat = [0, 0]
        if seen and flat == seen and judged and not math.isinf(tau):
            self.no_signal(f"the batch weights were flat in epoch {epoch} (max relative weight < {1 + FLAT_TOL:g} on "
                           f"all {seen} logging steps): the scores are tiny next to tau={tau:g} or W_ref == W_t, so "
                           f"the re-weighting is plain SGD and the recorded weights say nothing about the samples; "
                           f"lower tau", at_start=False)

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "space": self.space, "reasons": list(self.reasons), "alignment": list(self.alignment)}

    def state_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "space": self.space, "reasons": list(self.reasons),
                "first_check_done": self.first_check_done,
                "alignment": torch.tensor(self.alignment, dtype=torch.float64).reshape(-1, 3)}

    def load_state_dict(self, sig: dict[str, Any]) -> None:
        self.ok = bool(sig["ok"])
        self.reasons = [str(r) for r in sig["reasons"]]
        self.first_check_done = bool(sig["first_check_done"])
        self.alignment = [(int(a), float(b), int(c)) for a, b, c in torch.as_tensor(sig["alignment"]).tolist()]
        self.window = None

    def choose_space(self, requested: str, *, score: str, others_train: list[str], shared: bool, full: bool) -> bool:
        """Resolve the score space of a fresh fit and whether the alignment is checked; returns whether the reference
        must be run on the training inputs (output space, the alignment check, RHO-LOSS with trained layers below).

        ``others_train``: trained parameters other than the mimic layer; ``shared``: every other parameter is frozen
        and (as far as ``full`` lets us check) equal to the reference's; ``full``: the reference holds every tensor.

        Raises:
            ConfigError: ``space="outputs"`` with a mimic-layer-only reference; no signal at the start (policy).
        """
        if score == "grand":  # GraNd does not use the reference
            self.reset("weights", check_alignment=False)
            return False
        space = requested if requested != "auto" else ("weights" if shared or not full else "outputs")
        if space == "outputs" and not full:
            raise ConfigError("space='outputs' runs the reference model on the training inputs, but the reference "
                              "holds only the mimic layer (strict_reference=False). Pass the full reference (a "
                              "state dict, checkpoint or module of the LightningModule's architecture).")
        check = space == "weights" and not shared and full and self.min_alignment is not None
        self.reset(space, check_alignment=check)
        if space == "weights" and not shared and not full:
            more = " ..." if len(others_train) > 5 else ""
            what = f"parameters other than the mimic layer train ({others_train[:5]}{more})"
            self.no_signal(
                f"{what}, so the mimic layer's inputs leave the reference's feature space and W_ref - W_t stops "
                f"pointing toward the reference's predictions (with noisy labels it then favours mislabelled "
                f"samples); the reference holds only the mimic layer, so this cannot be checked or scored in output "
                f"space. Pass the full reference and space='auto' or 'outputs', or freeze the layers below (linear "
                f"probing on a backbone shared with the reference)", at_start=True)
            return False
        return space == "outputs" or check or (score == "rho" and not shared)

    def measure(self, inputs: Tensor, ref_outputs: Tensor, ref_weight: Tensor, ref_bias: Tensor | None, step: int,
                reduce: Any = None) -> None:
        """One micro-batch of the alignment check: the reference layer on the model's ``inputs`` against the
        reference's own ``ref_outputs`` (``reduce``: sums the counts over ranks, every rank calls it)."""
        counts = alignment_counts(ref_outputs.float(), torch.nn.functional.linear(inputs.float(), ref_weight, ref_bias))
        self.add_alignment(counts if reduce is None else reduce(counts), step)
