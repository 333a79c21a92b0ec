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
