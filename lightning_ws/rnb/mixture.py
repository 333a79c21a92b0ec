"""R&B's mixture maths (arXiv 2505.00358): the Gram matrix of mean domain gradients, the Balance update and the
DoGE-style multiplicative ablation, the probability floor, the initial mixture and checks. Lightning-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lightning_ws.errors import ConfigError

__all__ = [
    "domain_gram",
    "gram_stats",
    "initial_mixture",
    "rnb_scores",
    "rnb_update",
    "multiplicative_update",
    "apply_prob_floor",
    "mixture_entropy",
    "validate_mixture",
    "trajectory_image",
]


def domain_gram(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix of mean domain gradients, ``G_ij = <s_i / n_i, s_j / n_j>`` (R&B, arXiv 2505.00358, Alg. 1 step 4).

    Args:
        sums: ``(m, ...)`` per-domain gradient sums.
        counts: ``(m,)`` per-domain example counts.

    Returns:
        ``(G, present)``: the float64 ``(m, m)`` Gram matrix (rows/columns of domains with ``n_i = 0`` are zero) and a
        bool mask of the domains with at least one example. The inner products of the sums are taken in the sums'
        dtype (float32 accumulators: relative error ~1e-6, far below what moves the softmax; redone in float64 if they
        overflow; pass float64 sums for float64 products), then scaled by the counts in float64.
    """
    present = counts > 0
    flat = sums.reshape(sums.shape[0], -1)
    inv = counts.to(torch.float64).clamp_min(1.0).reciprocal_().mul_(present).to(flat.device)
    g = (flat @ flat.T).to(torch.float64)  # no (m, D) means copy, no float64 copy of the sums
    if flat.dtype != torch.float64 and not bool(torch.isfinite(g).all()):  # float32 overflow (sums beyond ~1e19)
        g = flat.double() @ flat.double().T
    g.mul_(torch.outer(inv, inv))
    return (g + g.T).mul_(0.5), present


def rnb_scores(gram: torch.Tensor, p_eval: torch.Tensor, *, normalize: bool = True) -> torch.Tensor | None:
    """The logits of R&B's update, ``G p_eval / ||G p_eval||_2`` (main text) or ``G p_eval`` (Algorithm 3).

    Returns ``None`` when the direction is undefined (``||G p_eval|| = 0`` or non-finite, e.g. evaluation domains that
    no training domain covers); callers then keep the previous mixture. See arXiv 2505.00358, Sec. 4.
    """
    v = gram.double() @ p_eval.double().to(gram.device)
    if not normalize:
        return v if bool(torch.isfinite(v).all()) else None
    norm = float(torch.linalg.vector_norm(v))  # inf or nan when any entry of v is
    if not math.isfinite(norm) or norm <= torch.finfo(torch.float64).tiny:
        return None
    return v / norm


def apply_prob_floor(p: torch.Tensor, floor: float) -> torch.Tensor:
    """Mix ``p`` with uniform so that every entry is at least ``floor / m``: ``(1 - floor) p + floor / m``.

    The probability floor R&B (arXiv 2505.00358) leaves open; ``floor = 0`` is the paper's rule.
    """
    if not 0.0 <= floor < 1.0:
        raise ConfigError(f"prob_floor must lie in [0, 1), got {floor}.")
    if floor == 0.0:
        return p
    m = p.numel()
    return (1.0 - floor) * p + floor / m


def _masked_replace(p_prev: torch.Tensor, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over present domains, scaled to the mass they had; absent domains keep their previous probability."""
    p_prev = p_prev.double()
    if bool(present.all()):
        return torch.softmax(logits, dim=0)
    out = p_prev.clone()
    mass = p_prev[present].sum()
    out[present] = mass * torch.softmax(logits[present], dim=0)
    return out


def _present_scores(gram: torch.Tensor, p_eval: torch.Tensor, p_prev: torch.Tensor, present: torch.Tensor | None,
                    normalize: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shared first half of the mixture updates: check shapes, mask absent domains out of ``p_eval``, score.

    Returns ``(present, scores)``; ``scores`` is ``None`` when no domain is present or the score is zero/non-finite
    (the caller then keeps ``p_prev``).
    """
    m = gram.shape[0]
    if gram.shape != (m, m) or p_eval.shape != (m,) or p_prev.shape != (m,):
        raise ConfigError(f"shapes must be G (m, m), p_eval (m,), p (m,); got {tuple(gram.shape)}, "
                          f"{tuple(p_eval.shape)}, {tuple(p_prev.shape)}.")
    present = torch.ones(m, dtype=torch.bool, device=gram.device) if present is None else present.to(gram.device)
    if not bool(present.any()):
        return present, None
    pe = torch.where(present, p_eval.double().to(gram.device), torch.zeros((), dtype=torch.float64))
    return present, rnb_scores(gram, pe, normalize=normalize)


def rnb_update(
    gram: torch.Tensor,
    p_eval: torch.Tensor,
    p_prev: torch.Tensor,
    *,
    lam: float = 3.0,
    present: torch.Tensor | None = None,
    normalize: bool = True,
    prob_floor: float = 0.0,
) -> tuple[torch.Tensor, bool]:
    """R&B's Balance step: ``p <- softmax(lam * G p_eval / ||G p_eval||_2)`` (arXiv 2505.00358, Eq. in Sec. 3.2).

    The new mixture *replaces* the old one. Defaults for what the paper leaves open:

    * Domains absent from the round (``present[i] = False``) are left out of ``G p_eval`` (their mean gradient is
      unknown) and keep their previous probability; the other domains share the remaining mass by the softmax.
    * If ``||G p_eval|| = 0`` or anything is non-finite, the previous mixture is returned unchanged.
    * ``prob_floor`` (default 0) mixes the result with uniform so that ``p_i >= prob_floor / m``.

    Args:
        gram: ``(m, m)`` Gram matrix of mean domain gradients.
        p_eval: ``(m,)`` evaluation proportions per domain.
        p_prev: ``(m,)`` current mixture.
        lam: temperature ``lambda`` (paper: 3); logits lie in ``[-lam, lam]`` when ``normalize``.
        present: ``(m,)`` bool mask of domains seen in the round (``None`` = all).
        normalize: L2-normalise ``G p_eval`` (main text; ``False`` = the appendix's Algorithm 3).
        prob_floor: floor fraction in ``[0, 1)``.

    Returns:
        ``(p_new, updated)``: float64 mixture and whether an update happened (``False`` = fallback to ``p_prev``).
    """
    present, scores = _present_scores(gram, p_eval, p_prev, present, normalize)
    if scores is None:
        return p_prev.double(), False
    p = _masked_replace(p_prev.to(gram.device), lam * scores, present)
    p = apply_prob_floor(p, prob_floor)
    return p / p.sum(), True


def multiplicative_update(
    gram: torch.Tensor,
    p_eval: torch.Tensor,
    p_prev: torch.Tensor,
    *,
    lr: float = 1.0,
    present: torch.Tensor | None = None,
    normalize: bool = True,
    prob_floor: float = 0.0,
) -> tuple[torch.Tensor, bool]:
    """DoGE-style multiplicative (accumulating) update on R&B's scores: ``p <- p * exp(lr * G p_eval / ||G p_eval||)``.

    DoGE (arXiv 2310.15393) uses ``p_t ∝ p_{t-1} exp(eta W_t / mu)`` with ``W_i`` the inner product of domain ``i``'s
    gradient and a target gradient. Here the target is R&B's proxy ``sum_j p_eval_j g_j`` so that the only difference to
    :func:`rnb_update` is accumulate-vs-replace, the ablation R&B's paper (arXiv 2505.00358, Sec. 4.3) argues about.
    The score is L2-normalised by default (scale-free, as R&B's); absent domains keep their probability; a zero or
    non-finite score keeps ``p_prev``.

    Returns:
        ``(p_new, updated)`` as :func:`rnb_update`.
    """
    present, scores = _present_scores(gram, p_eval, p_prev, present, normalize)
    if scores is None:
        return p_prev.double(), False
    prev = p_prev.double().to(gram.device).clamp_min(1e-300)
    logits = torch.log(prev) + lr * scores
    p = _masked_replace(prev, logits, present)
    p = apply_prob_floor(p, prob_floor)
    return p / p.sum(), True


def mixture_entropy(p: torch.Tensor) -> float:
    """Shannon entropy (nats) of a mixture; ``log m`` for uniform (logged by R&B's callback, arXiv 2505.00358)."""
    p = p.double()
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


def validate_mixture(p: Sequence[float] | torch.Tensor, m: int | None = None, *, name: str = "p") -> torch.Tensor:
    """Check that ``p`` is a finite, non-negative vector with positive sum (length ``m`` if given); return it normalised.

    Used for mixtures and ``p_eval`` of R&B (arXiv 2505.00358).

    Raises:
        ConfigError: naming the problem.
    """
    t = torch.as_tensor(p, dtype=torch.float64).reshape(-1).cpu()
    if m is not None and t.numel() != m:
        raise ConfigError(f"{name} has {t.numel()} entries but there are {m} domains; pass one weight per domain.")
    if t.numel() == 0:
        raise ConfigError(f"{name} is empty; pass one non-negative weight per domain.")
    if not torch.isfinite(t).all() or bool((t < 0).any()) or float(t.sum()) <= 0:
        raise ConfigError(f"{name} must be finite, non-negative and sum to a positive number; got {t.tolist()}.")
    return t / t.sum()


def initial_mixture(m: int, domain_sizes: Sequence[float] | torch.Tensor | None = None, *,
                    proportional: bool = False) -> torch.Tensor:
    """The mixture a run starts from: uniform over the non-empty domains (uniform over all ``m`` when the sizes are
    unknown), or, with ``proportional``, proportional to ``domain_sizes`` (the fixed baseline of R&B's comparisons,
    arXiv 2505.00358).

    Raises:
        ConfigError: ``proportional`` without positive ``domain_sizes``.
    """
    sizes = None if domain_sizes is None else torch.as_tensor(domain_sizes, dtype=torch.float64)
    if proportional:
        if sizes is None or float(sizes.sum()) <= 0:
            raise ConfigError("method='proportional' needs datamodule.domain_sizes.")
        return sizes / sizes.sum()
    if sizes is not None and sizes.numel() == m and float((sizes > 0).sum()) > 0:
        nonempty = (sizes > 0).double()
        return nonempty / nonempty.sum()
    return torch.full((m,), 1.0 / m, dtype=torch.float64)


def gram_stats(gram: torch.Tensor) -> dict[str, float]:
    """Mean diagonal and mean off-diagonal entry of a Gram matrix (logged every R&B round)."""
    m = gram.shape[0]
    diag = torch.diagonal(gram)
    return {"gram_diag_mean": float(diag.mean()),
            "gram_offdiag_mean": float((gram.sum() - diag.sum()) / max(1, m * m - m))}


def trajectory_image(history: Sequence[Sequence[float]], names: Sequence[str], title: str) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 stack plot of a mixture per round (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = np.asarray(history, dtype=np.float64)
    fig = Figure(figsize=(6, 3), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.stackplot(np.arange(1, len(hist) + 1), hist.T, labels=list(names)[: hist.shape[1]])
    ax.set_xlabel("round")
    ax.set_ylabel("p")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if hist.shape[1] <= 12:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
