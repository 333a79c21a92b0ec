"""Closed-form per-sample scores and batch weights for a linear "mimic layer" (Grad-Mimic, arXiv 2501.06708).

Everything here is plain torch (no Lightning). A linear layer ``z = a W^T + b`` applied to inputs ``a`` of shape
``(B, in)`` or ``(B, T, in)`` (``T`` sequence positions, any number of middle dimensions) has the per-sample weight
gradient ``g_i = sum_t delta_{i,t} a_{i,t}^T`` and bias gradient ``sum_t delta_{i,t}``, where ``delta`` is the gradient
of sample ``i``'s loss with respect to the layer output. All scores below are computed from ``a`` and ``delta`` without
materialising the ``(B, out, in)`` per-sample gradients (except :func:`per_sample_layer_grads`, the slow reference, and
the cosine/gradient-norm of long sequences when materialising is the cheaper route).

Units: the functions take ``out_grads`` in *per-sample-loss units* (``delta_i = d loss_i / d z_i``). A hook on a layer
whose loss is the batch mean sees ``delta_i / B`` (times the AMP loss scale and ``1 / accumulate_grad_batches`` under
Lightning); the callback rescales before calling these functions, because the softmax temperature is not scale-free.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ws.errors import ConfigError, DataError

__all__ = [
    "SCORE_VARIANTS",
    "batch_scores",
    "TargetDirection",
    "target_direction",
    "mimic_scores",
    "per_sample_grad_norms",
    "grand_scores",
    "rho_scores",
    "batch_softmax_weights",
    "batch_softmax_weights_checked",
    "weighted_layer_grad",
    "per_sample_layer_grads",
    "weight_entropy",
]

#: Score variants understood by :func:`lightning_ws.gradmimic.compute_scores` and the callback.
SCORE_VARIANTS = ("proj", "cos", "grand", "rho")


def _check_pair(inputs: Tensor, out_grads: Tensor) -> None:
    """Raise a DataError unless inputs and output gradients are ``(B, ..., in)`` / ``(B, ..., out)`` alike."""
    if inputs.dim() < 2 or out_grads.dim() < 2:
        raise DataError(f"mimic-layer inputs and output gradients need a batch dimension and a feature dimension; "
                        f"got shapes {tuple(inputs.shape)} and {tuple(out_grads.shape)}.")
    if inputs.shape[:-1] != out_grads.shape[:-1]:
        raise DataError(f"mimic-layer inputs {tuple(inputs.shape)} and output gradients {tuple(out_grads.shape)} must "
                        f"agree on every dimension but the last (batch and sequence positions).")


def _as_seq(inputs: Tensor, out_grads: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes and flatten middle dimensions: return float32 ``(B, T, in)`` and ``(B, T, out)``."""
    _check_pair(inputs, out_grads)
    b = inputs.shape[0]
    a = inputs.reshape(b, -1, inputs.shape[-1]).float()
    d = out_grads.reshape(b, -1, out_grads.shape[-1]).float()
    return a, d


def _as_rows(inputs: Tensor, out_grads: Tensor) -> tuple[Tensor, Tensor, int]:
    """Validate shapes and flatten to float32 rows ``(B*T, in)``, ``(B*T, out)``; also return ``T``."""
    _check_pair(inputs, out_grads)
    b = inputs.shape[0]
    a = inputs if inputs.dim() == 2 else inputs.reshape(-1, inputs.shape[-1])
    d = out_grads if out_grads.dim() == 2 else out_grads.reshape(-1, out_grads.shape[-1])
    a = a if a.dtype == torch.float32 else a.float()
    d = d if d.dtype == torch.float32 else d.float()
    return a, d, (a.shape[0] // b if b else 1)


class TargetDirection:
    """The target direction ``v = W_ref - W_t`` of one linear layer and its norm (arXiv 2501.06708, §3), recomputed
    in place.

    Same values as :func:`target_direction`, for the training loop: ``v`` lives in one preallocated float32 buffer
    (weight part then bias part), so each call is two in-place subtractions and one norm, with no allocation. The
    returned ``v_weight``/``v_bias`` are views of that buffer: the next call overwrites them.

    Args:
        ref_weight: reference weight ``(out, in)``.
        ref_bias: reference bias ``(out,)``, or ``None`` when the layer has no bias.
    """

    def __init__(self, ref_weight: Tensor, ref_bias: Tensor | None = None) -> None:
        if ref_weight.dim() != 2:
            raise DataError(f"the reference weight of a linear layer is 2-D, got shape {tuple(ref_weight.shape)}.")
        if ref_bias is not None and tuple(ref_bias.shape) != (ref_weight.shape[0],):
            raise DataError(f"reference bias shape {tuple(ref_bias.shape)} does not match the weight "
                            f"{tuple(ref_weight.shape)}.")
        self.ref_weight = ref_weight.detach().float()
        self.ref_bias = ref_bias.detach().float() if ref_bias is not None else None
        self._alloc()

    def _alloc(self) -> None:
        n_w = self.ref_weight.numel()
        n_b = self.ref_bias.numel() if self.ref_bias is not None else 0
        self._flat = torch.empty(n_w + n_b, dtype=torch.float32, device=self.ref_weight.device)
        self._vw = self._flat[:n_w].view(self.ref_weight.shape)
        self._vb = self._flat[n_w:] if self.ref_bias is not None else None

    @property
    def device(self) -> torch.device:
        """Device of the reference tensors and the buffer."""
        return self.ref_weight.device

    def to(self, device: torch.device | str) -> TargetDirection:
        """Move the reference and the buffer to ``device`` (in place); returns ``self``."""
        self.ref_weight = self.ref_weight.to(device)
        self.ref_bias = self.ref_bias.to(device) if self.ref_bias is not None else None
        self._alloc()
        return self

    def __call__(self, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor | None, float]:
        """``(v_weight, v_bias, ||v||)`` for the current ``weight``/``bias`` (see :func:`target_direction`)."""
        if weight.shape != self.ref_weight.shape:
            raise DataError(f"reference weight shape {tuple(self.ref_weight.shape)} != layer weight shape "
                            f"{tuple(weight.shape)}; the reference must have the same architecture.")
        if (self.ref_bias is None) != (bias is None):
            raise DataError("the reference and the mimic layer disagree on having a bias; use the same architecture.")
        if weight.device != self.device:
            self.to(weight.device)
        if torch.is_grad_enabled():  # out= refuses tensors that require grad while autograd records
            weight = weight.detach()
            bias = bias.detach() if bias is not None else None
        torch.sub(self.ref_weight, weight, out=self._vw)
        if bias is not None:
            torch.sub(self.ref_bias, bias, out=self._vb)
        # ||v||^2 as a self dot product: the same kernel as the scores' row-wise dots (warm in the training step)
        return self._vw, self._vb, math.sqrt(float(torch.linalg.vecdot(self._flat, self._flat)))


def target_direction(ref_weight: Tensor, weight: Tensor, ref_bias: Tensor | None = None,
                     bias: Tensor | None = None) -> tuple[Tensor, Tensor | None, float]:
    """Return the target direction ``v = W_ref - W_t`` (and bias part) and its Frobenius norm (arXiv 2501.06708, §3).

    Args:
        ref_weight: reference weight ``(out, in)``.
        weight: current weight ``(out, in)``.
        ref_bias: reference bias ``(out,)``, or ``None`` when the mimic layer has no bias.
        bias: current bias ``(out,)``, or ``None``.

    Returns:
        ``(v_weight, v_bias, norm)`` with ``norm = sqrt(||v_weight||^2 + ||v_bias||^2)`` (float32 tensors).

    Raises:
        DataError: on shape mismatch, or when exactly one of ``ref_bias``/``bias`` is given.
    """
    if ref_weight.shape != weight.shape:
        raise DataError(f"reference weight shape {tuple(ref_weight.shape)} != layer weight shape "
                        f"{tuple(weight.shape)}; the reference must have the same architecture.")
    if (ref_bias is None) != (bias is None):
        raise DataError("the reference and the mimic layer disagree on having a bias; use the same architecture.")
    v_w = ref_weight.detach().float() - weight.detach().float()
    sq = v_w.pow(2).sum()
    v_b = None
    if bias is not None:
        assert ref_bias is not None
        if ref_bias.shape != bias.shape:
            raise DataError(f"reference bias shape {tuple(ref_bias.shape)} != layer bias shape {tuple(bias.shape)}.")
        v_b = ref_bias.detach().float() - bias.detach().float()
        sq = sq + v_b.pow(2).sum()
    return v_w, v_b, float(sq.sqrt())


def per_sample_grad_norms(inputs: Tensor, out_grads: Tensor, *, with_bias: bool = True) -> Tensor:
    """Frobenius norm of each sample's gradient of a linear layer (weight and, optionally, bias), shape ``(B,)``.

    For one position per sample ``||delta a^T|| = ||delta|| ||a||``. For sequences the squared norm is
    ``sum_{t,s} (delta_t . delta_s)(a_t . a_s)`` (Gram matrices, cost ``B T^2 (in + out)``) or, when cheaper, the
    materialised per-sample gradient (cost ``B T in out``).
    """
    a, d = _as_seq(inputs, out_grads)
    b, t, n_in = a.shape
    n_out = d.shape[-1]
    if t == 1:
        sq = d[:, 0].pow(2).sum(-1) * a[:, 0].pow(2).sum(-1)
    elif t * (n_in + n_out) <= n_in * n_out:
        sq = (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2))
    else:
        sq = torch.bmm(d.transpose(1, 2), a).pow(2).sum((1, 2))
    if with_bias:
        sq = sq + d.sum(1).pow(2).sum(-1)
    return sq.clamp_min(0).sqrt()


def mimic_scores(inputs: Tensor, out_grads: Tensor, v_weight: Tensor, v_bias: Tensor | None = None, *,
                 variant: str = "proj", v_norm: float | None = None, eps: float = 1e-12,
                 grad_scale: float = 1.0) -> Tensor:
    """Per-sample mimic scores ``m_i = <-g_i, v> / ||v||`` in closed form (arXiv 2501.06708, §3; spec §4.3).

    ``<g_i, v> = sum_t delta_{i,t} . (V a_{i,t} + v_b)``: one ``(B T, in) x (in, out)`` product for the batch (the
    layer's own forward cost), never the ``(out, in)`` per-sample gradients.

    Args:
        inputs: layer inputs ``a``, shape ``(B, ..., in)``.
        out_grads: gradients of each sample's loss w.r.t. the layer output, ``(B, ..., out)``.
        v_weight: target direction ``W_ref - W_t`` ``(out, in)``.
        v_bias: bias part of the target direction ``(out,)`` (``None``: the layer has no bias).
        variant: ``"proj"`` (the paper's projection; scales with the gradient norm) or ``"cos"`` (additionally divided
            by ``||g_i||``, i.e. the cosine between ``-g_i`` and ``v``).
        v_norm: precomputed ``||v||`` (including the bias part); computed when ``None``.
        eps: guard for ``||v||`` and ``||g_i||``. When ``||v|| <= eps`` (``W_ref == W_t``) the scores are all zero, so
            the batch softmax gives uniform weights (the paper leaves this case open).
        grad_scale: positive factor that converts ``out_grads`` to per-sample-loss units (e.g. the batch size for the
            gradients a hook sees under a mean-reduced loss); applied to the ``B`` scores instead of the gradients.

    Returns:
        float32 tensor ``(B,)``.
    """
    if variant not in ("proj", "cos"):
        raise ConfigError(f"mimic score variant must be 'proj' or 'cos', got {variant!r}.")
    if not grad_scale > 0:
        raise ConfigError(f"grad_scale must be positive, got {grad_scale!r}.")
    a, d, t = _as_rows(inputs, out_grads)
    vw = v_weight if v_weight.dtype == torch.float32 else v_weight.float()
    if vw.shape != (d.shape[-1], a.shape[-1]):
        raise DataError(f"target direction shape {tuple(vw.shape)} does not match the layer (out={d.shape[-1]}, "
                        f"in={a.shape[-1]}).")
    if v_norm is None:
        sq = vw.pow(2).sum() + (v_bias.float().pow(2).sum() if v_bias is not None else 0.0)
        v_norm = float(torch.as_tensor(sq).sqrt())
    if not v_norm > eps:
        return torch.zeros(inputs.shape[0], device=a.device)
    # rows of c (V a + v_b) with the score scale c folded into the product: one matmul and one row-wise dot
    c = -grad_scale / v_norm if variant == "proj" else -1.0 / v_norm
    if v_bias is not None:
        vb = v_bias if v_bias.dtype == torch.float32 else v_bias.float()
        proj = torch.addmm(vb, a, vw.T, beta=c, alpha=c)
    else:
        proj = torch.mm(a, vw.T).mul_(c)
    scores = torch.linalg.vecdot(proj, d)
    if t > 1:
        scores = scores.reshape(-1, t).sum(1)
    if variant == "cos":
        norms = per_sample_grad_norms(inputs, out_grads, with_bias=v_bias is not None)
        scores = scores / norms.clamp_min(eps / grad_scale)  # = (grad_scale * proj) / max(grad_scale * norm, eps)
    return scores


def grand_scores(inputs: Tensor, out_grads: Tensor, *, with_bias: bool = True) -> Tensor:
    """GraNd baseline score (arXiv 2107.07075): the per-sample gradient norm of the mimic layer, ``(B,)``.

    The Grad-Mimic repository takes the norm over all trainable parameters; under linear probing (the setting of its
    tables) that is the head, i.e. this layer.
    """
    return per_sample_grad_norms(inputs, out_grads, with_bias=with_bias)


def rho_scores(logits: Tensor, ref_logits: Tensor, labels: Tensor) -> Tensor:
    """RHO-LOSS baseline score (arXiv 2206.07137): ``loss_theta(x) - loss_ref(x)`` per sample, ``(B,)``.

    Cross-entropy with hard labels ``(B,)`` or soft targets ``(B, C)``. Logits may carry sequence dimensions
    ``(B, ..., C)``; the per-sample loss is then the mean over positions (labels must broadcast accordingly).
    """
    if logits.shape != ref_logits.shape:
        raise DataError(f"logits {tuple(logits.shape)} and reference logits {tuple(ref_logits.shape)} differ.")
    c = logits.shape[-1]
    lg, rl = logits.detach().float().reshape(-1, c), ref_logits.detach().float().reshape(-1, c)
    if labels.dtype.is_floating_point:
        y = labels.float().reshape(-1, c)
    else:
        y = labels.reshape(-1).long()
    if y.shape[0] != lg.shape[0]:
        raise DataError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}.")
    own = F.cross_entropy(lg, y, reduction="none").reshape(logits.shape[0], -1).mean(1)
    ref = F.cross_entropy(rl, y, reduction="none").reshape(logits.shape[0], -1).mean(1)
    return own - ref


def batch_softmax_weights(scores: Tensor, tau: float) -> Tensor:
    """Softmax of ``scores / tau`` over the batch (arXiv 2501.06708, §3); weights sum to 1.

    ``tau = inf`` gives uniform weights ``1/B`` (plain SGD). Non-finite scores (an AMP overflow step) also give uniform
    weights. Invariant to adding a constant to every score. See :func:`batch_softmax_weights_checked`.
    """
    return batch_softmax_weights_checked(scores, tau)[0]


def batch_softmax_weights_checked(scores: Tensor, tau: float) -> tuple[Tensor, bool]:
    """:func:`batch_softmax_weights` and whether every score was finite, with one reduction and one host sync.

    Returns:
        ``(weights (B,) float32, finite)``.
    """
    if not (isinstance(tau, (int, float)) and tau > 0 and not math.isnan(tau)):
        raise ConfigError(f"temperature tau must be a positive number (float('inf') for plain SGD), got {tau!r}.")
    s = scores if scores.dtype == torch.float32 and scores.dim() == 1 else scores.float().reshape(-1)
    n = s.numel()
    if n == 0:
        raise DataError("cannot compute batch weights of an empty batch.")
    # a float64 sum of float32 values cannot overflow, so it is finite iff every value is
    finite = math.isfinite(float(s.sum(dtype=torch.float64)))
    if math.isinf(tau) or not finite:
        return torch.full_like(s, 1.0 / n), finite
    return torch.softmax(s if tau == 1.0 else s / tau, dim=0), True


def weighted_layer_grad(inputs: Tensor, out_grads: Tensor, coeffs: Tensor, *,
                        with_bias: bool = True) -> tuple[Tensor, Tensor | None]:
    """``sum_i c_i g_i`` for a linear layer as one matmul: weight part ``(out, in)`` and bias part ``(out,)``.

    ``out_grads`` may be in any units (e.g. the hooked, loss-scaled ones); the result is in the same units.
    """
    a, d, t = _as_rows(inputs, out_grads)
    c = coeffs.float().reshape(-1)
    if c.numel() != inputs.shape[0]:
        raise DataError(f"{c.numel()} coefficients for a batch of {inputs.shape[0]} samples.")
    dw = d * (c if t == 1 else c.repeat_interleave(t))[:, None]
    gw = dw.T @ a
    gb = dw.sum(0) if with_bias else None
    return gw, gb


def per_sample_layer_grads(inputs: Tensor, out_grads: Tensor, *, with_bias: bool = True) -> tuple[Tensor, Tensor | None]:
    """Materialised per-sample gradients ``(B, out, in)`` (and ``(B, out)``): the slow reference for tests."""
    a, d = _as_seq(inputs, out_grads)
    gw = torch.einsum("bto,bti->boi", d, a)
    return gw, (d.sum(1) if with_bias else None)


def weight_entropy(weights: Tensor) -> float:
    """Entropy of batch weights divided by ``log B`` (1 = uniform, 0 = one sample takes all the weight)."""
    w = weights.float().reshape(-1)
    if w.numel() <= 1:
        return 1.0
    h = -(w * w.clamp_min(1e-30).log()).sum()
    return float(h / math.log(w.numel()))


def batch_scores(variant: str, inputs: Tensor, out_grads: Tensor, *, grad_scale: float = 1.0,
                 direction: tuple[Tensor, Tensor | None, float] | None = None, outputs: Tensor | None = None,
                 ref_outputs: Tensor | None = None, ref_head: tuple[Tensor, Tensor | None] | None = None,
                 labels: Tensor | None = None, with_bias: bool = True, eps: float = 1e-12) -> Tensor:
    """Per-sample scores of one micro-batch for any :data:`SCORE_VARIANTS` (arXiv 2501.06708 and its baselines).

    * ``"proj"`` / ``"cos"``: :func:`mimic_scores` along ``direction = (V_w, V_b, ||V||)``, or, with ``ref_outputs``
      (the reference's own mimic-layer outputs), the output-space form
      :func:`~lightning_ws.gradmimic.signal.output_mimic_scores` (needs ``outputs``, the model's);
    * ``"grand"``: :func:`grand_scores` (times ``grad_scale``);
    * ``"rho"``: :func:`rho_scores` of the model's ``outputs`` against ``ref_outputs``, or, without them, the
      reference head ``ref_head = (W_ref, b_ref)`` applied to the model's ``inputs`` (exact when the layers below are
      shared), on ``labels``.

    ``out_grads * grad_scale`` is the output gradient in per-sample-loss units.
    """
    if variant in ("proj", "cos"):
        v_w, v_b, v_norm = direction
        if ref_outputs is not None:
            from lightning_ws.gradmimic.signal import output_mimic_scores

            return output_mimic_scores(out_grads, ref_outputs, outputs, v_norm=v_norm, variant=variant, inputs=inputs,
                                       with_bias=with_bias, eps=eps, grad_scale=grad_scale)
        return mimic_scores(inputs, out_grads, v_w, v_b, variant=variant, v_norm=v_norm, eps=eps,
                            grad_scale=grad_scale)
    if variant == "grand":
        return grand_scores(inputs, out_grads, with_bias=with_bias) * grad_scale
    ref_logits = ref_outputs.float() if ref_outputs is not None else \
        torch.nn.functional.linear(inputs.float(), ref_head[0], ref_head[1])
    return rho_scores(outputs.detach(), ref_logits, labels.to(inputs.device))
