"""Loki prediction: the weighted Fréchet mean over the full label space (arXiv 2307.12226).

Given weights ``P(x)`` over the ``k`` observed classes ``Λ`` and a metric ``d`` on all ``N`` classes ``Y``::

    ŷ(x) = argmin_{y in Y} sum_i P_i(x) d(y, λ_i)^2

computed as ``S = P @ D2[Λ, Y]`` (an ``(n x k) (k x N)`` GEMM) and a row argmin, in blocks of at most
``chunk_elements`` scores so memory stays bounded for 100k+ classes on CPU or GPU.  Ties go to the lowest
position (NumPy's ``argmin`` rule, spec §3.1), also across blocks.  For squared Euclidean embedding metrics the
rule is the nearest class embedding to the ``P``-weighted mean of the observed embeddings
(:func:`loki_predict_embedding`), ``O(n k e + n N e)`` instead of needing ``D2``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
from torch import nn

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.loki.metric_space import LabelMetric

__all__ = ["loki_scores", "loki_predict", "loki_predict_embedding", "LokiHead", "check_weights"]

DEFAULT_CHUNK_ELEMENTS = 2**24


def check_weights(weights: torch.Tensor, k: int) -> None:
    """Raise :class:`DataError` unless ``weights`` is a finite, non-negative ``(n, k)`` matrix with no zero row.

    Loki needs non-negative weights (probabilities or one-vs-rest scores), never raw logits: the paper's CLIP
    extractor calls its softmax output ``logits`` (spec §9.3); we check instead of trusting names.
    """
    if weights.ndim != 2 or weights.shape[1] != k:
        raise DataError(f"weights must have shape (batch, {k}) (one column per observed class); "
                        f"got {tuple(weights.shape)}.")
    w = weights.to_dense() if weights.layout != torch.strided else weights
    if not torch.isfinite(w).all():
        raise DataError("weights contain NaN or inf.")
    if (w < 0).any():
        raise DataError("weights must be non-negative (probabilities or scores); got a negative entry. "
                        "Pass softmax(logits), or use LokiHead(input='logits').")
    if w.shape[0] and (w.sum(1) <= 0).any():
        raise DataError("a row of weights sums to 0: Loki's rule is undefined without any weight.")


def loki_scores(weights: torch.Tensor, sq_dist_rows: torch.Tensor) -> torch.Tensor:
    """Dense Fréchet variances ``S = P @ D2[Λ, Y]`` of shape ``(n, N)``; lower is better (arXiv 2307.12226).

    ``-S`` can serve as logits ("Loki as a layer", spec §3.2, exploratory).  Memory is ``n * N``: for large
    ``N`` use :func:`loki_predict`, which never materialises ``S``.
    """
    check_weights(weights, sq_dist_rows.shape[0])
    w = weights.to(sq_dist_rows.dtype)
    return torch.sparse.mm(w, sq_dist_rows) if w.layout != torch.strided else w @ sq_dist_rows


def loki_predict(weights: torch.Tensor, sq_dist_rows: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                 return_scores: bool = False, validate: bool = True
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Loki's prediction ``argmin_y sum_i P_i d^2(y, λ_i)``, chunked over rows and classes (arXiv 2307.12226).

    Args:
        weights: ``(n, k)`` non-negative weights over the observed classes (rows need not sum to 1: the rule is
            invariant to positive row scaling).  A sparse COO/CSR tensor (e.g. k-NN votes, top-k probabilities)
            takes the sparse path, ``O(nnz * N)``.
        sq_dist_rows: ``(k, N)`` squared distances ``D2[Λ, Y]`` (only the observed rows, never ``N x N``).
        chunk_elements: at most this many scores are alive at once (default 2**24, 64 MiB in fp32).
        return_scores: also return the minimal score of each row.
        validate: check the weights (non-negative, finite, no zero row); default True.

    Returns:
        LongTensor ``(n,)`` of full-space positions (and the ``(n,)`` minimal scores if ``return_scores``).
        Ties go to the lowest position.
    """
    if chunk_elements < 1:
        raise ConfigError(f"chunk_elements must be >= 1; got {chunk_elements}.")
    if sq_dist_rows.ndim != 2:
        raise DataError(f"sq_dist_rows must be (k, N); got shape {tuple(sq_dist_rows.shape)}.")
    k, n_cls = sq_dist_rows.shape
    if validate:
        check_weights(weights, k)
    sparse = weights.layout != torch.strided
    if sparse:
        weights = (weights.to_sparse() if weights.layout != torch.sparse_coo else weights).coalesce()
    n = weights.shape[0]
    dev = sq_dist_rows.device
    best_idx = torch.zeros(n, dtype=torch.long, device=dev)
    best_val = torch.full((n,), float("inf"), dtype=sq_dist_rows.dtype, device=dev)
    if n == 0:
        return (best_idx, best_val) if return_scores else best_idx
    cols = min(n_cls, max(1, chunk_elements))
    rows = max(1, min(n, chunk_elements // cols))
    w_all = weights.to(dtype=sq_dist_rows.dtype, device=dev)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        w = w_all[r0:r1] if not sparse else _coo_rows(w_all, r0, r1)
        bv = best_val[r0:r1]
        bi = best_idx[r0:r1]
        for c0 in range(0, n_cls, cols):
            blk = sq_dist_rows[:, c0:c0 + cols]
            s = torch.sparse.mm(w, blk) if sparse else w @ blk
            v, i = s.min(dim=1)  # first minimum inside the block
            better = v < bv  # strict: an earlier block keeps its tie
            bv = torch.where(better, v, bv)
            bi = torch.where(better, i + c0, bi)
        best_val[r0:r1] = bv
        best_idx[r0:r1] = bi
    return (best_idx, best_val) if return_scores else best_idx


def _coo_rows(w: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of a coalesced COO matrix (indices are sorted by row)."""
    idx, val = w.indices(), w.values()
    a, b = torch.searchsorted(idx[0], torch.tensor([r0, r1], device=idx.device)).tolist()
    sub = idx[:, a:b].clone()
    sub[0] -= r0
    return torch.sparse_coo_tensor(sub, val[a:b], (r1 - r0, w.shape[1]), is_coalesced=True,
                                   check_invariants=False)


def loki_predict_embedding(weights: torch.Tensor, observed_embeddings: torch.Tensor,
                           class_embeddings: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                           validate: bool = True) -> torch.Tensor:
    """Loki for squared Euclidean embedding metrics: the nearest class to the weighted mean (arXiv 2307.12226).

    With ``d^2(y, λ) = ||e_y - e_λ||^2`` and ``m = sum_i P_i e_λi / sum_i P_i``,
    ``sum_i P_i d^2(y, λ_i) = (sum_i P_i) ||e_y - m||^2 + const``, so the argmin is
    ``argmin_y ||e_y||^2 - 2 <e_y, m>`` (spec §8.4, derived).  Exact up to floating-point rounding; ties (equal
    up to rounding) go to the lowest position.

    Args:
        weights: ``(n, k)`` non-negative weights.
        observed_embeddings: ``(k, e)`` embeddings of the observed classes, in weight-column order.
        class_embeddings: ``(N, e)`` embeddings of all classes.
        chunk_elements: bound on the ``(rows x classes)`` block size (default 2**24).
        validate: check the weights (default True).
    """
    if validate:
        check_weights(weights, observed_embeddings.shape[0])
    w = weights.to_dense() if weights.layout != torch.strided else weights
    w = w.to(class_embeddings.dtype)
    mean = (w @ observed_embeddings.to(class_embeddings.dtype)) / w.sum(1, keepdim=True)
    sq_norm = class_embeddings.pow(2).sum(1)
    n, n_cls = mean.shape[0], class_embeddings.shape[0]
    cols = min(n_cls, max(1, chunk_elements))
    rows = max(1, min(max(n, 1), chunk_elements // cols))
    out = torch.zeros(n, dtype=torch.long, device=class_embeddings.device)
    for r0 in range(0, n, rows):
        m = mean[r0:r0 + rows]
        bv = torch.full((m.shape[0],), float("inf"), dtype=m.dtype, device=m.device)
        bi = torch.zeros(m.shape[0], dtype=torch.long, device=m.device)
        for c0 in range(0, n_cls, cols):
            s = sq_norm[c0:c0 + cols][None] - 2 * (m @ class_embeddings[c0:c0 + cols].T)
            v, i = s.min(dim=1)
            better = v < bv
            bv = torch.where(better, v, bv)
            bi = torch.where(better, i + c0, bi)
        out[r0:r0 + rows] = bi
    return out


class LokiHead(nn.Module):
    """Loki on top of any classifier over the observed classes (``nn.Module``; arXiv 2307.12226).

    ``head(logits)`` returns full-space positions ``(B,)`` (map them to ids with ``head.class_ids``).  Holds
    either the ``(k, N)`` squared-distance rows ``D2[Λ, Y]`` (buffer ``sq_dist``) or, for Euclidean embedding
    metrics with the shortcut, the ``(N, e)`` class embeddings (buffer ``class_embeddings``) and the positions of
    the observed classes (buffer ``observed_index``).  Build it with :meth:`from_metric`.

    Defaults the paper leaves open: inputs are logits turned into probabilities by ``softmax(x / temperature)``
    (``input="probs"`` or ``"scores"`` takes non-negative weights as given, e.g. one-vs-rest sigmoids);
    ``top_k=None`` uses all weights (an integer keeps the ``top_k`` largest per row: the sparse path).

    Example:
        >>> m = LabelMetric.from_parents({0: None, 1: 0, 2: 1, 3: 2, 4: 3})  # a path 0-1-2-3-4
        >>> head = LokiHead.from_metric(m, observed=[0, 4], input="probs")
        >>> head(torch.tensor([[0.5, 0.5], [0.9, 0.1]])).tolist()
        [2, 0]
    """

    def __init__(self, sq_dist: torch.Tensor | None = None, *, class_embeddings: torch.Tensor | None = None,
                 observed_index: torch.Tensor | None = None, class_ids: Sequence[Hashable] | None = None,
                 input: Literal["logits", "probs", "scores"] = "logits", temperature: float = 1.0,
                 top_k: int | None = None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        super().__init__()
        if (sq_dist is None) == (class_embeddings is None):
            raise ConfigError("LokiHead needs exactly one of sq_dist (k, N) or class_embeddings (N, e).")
        if input not in ("logits", "probs", "scores"):
            raise ConfigError(f"input must be 'logits', 'probs' or 'scores'; got {input!r}.")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0; got {temperature}.")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be None or >= 1; got {top_k}.")
        if chunk_elements < 1:
            raise ConfigError(f"chunk_elements must be >= 1; got {chunk_elements}.")
        if sq_dist is not None:
            if sq_dist.ndim != 2:
                raise DataError(f"sq_dist must be (k, N); got {tuple(sq_dist.shape)}.")
            self.register_buffer("sq_dist", sq_dist.detach().clone())
            self.class_embeddings = None
            self.observed_index = None
            k, n = sq_dist.shape
        else:
            if observed_index is None:
                raise ConfigError("class_embeddings needs observed_index (positions of the observed classes).")
            self.sq_dist = None
            self.register_buffer("class_embeddings", class_embeddings.detach().clone())
            self.register_buffer("observed_index", torch.as_tensor(observed_index, dtype=torch.long).clone())
            k, n = len(self.observed_index), class_embeddings.shape[0]
        if class_ids is not None and len(class_ids) != n:
            raise DataError(f"class_ids has {len(class_ids)} entries for {n} classes.")
        self.class_ids = tuple(class_ids) if class_ids is not None else tuple(range(n))
        self.num_observed, self.num_classes = int(k), int(n)
        self.input, self.temperature, self.top_k, self.chunk_elements = input, float(temperature), top_k, chunk_elements
        self.reachability = None  # a ReachabilityReport when built by from_metric

    @classmethod
    def from_metric(cls, metric: LabelMetric, observed: Sequence[Hashable], *, squared: bool = True,
                    shortcut: Literal["auto", "always", "never"] = "auto", dtype: torch.dtype = torch.float32,
                    reachability: Literal["warn", "report", "off"] = "warn", **kwargs) -> LokiHead:
        """Build a head for classifier columns ``observed`` (class ids, in logit-column order).

        The head's ``reachability`` attribute holds a
        :class:`~lightning_ws.loki.active.ReachabilityReport` (how many unseen classes Loki can ever predict from
        ``observed`` under this metric); with ``reachability="warn"`` (default) a
        :class:`~lightning_ws.loki.active.LokiReachabilityWarning` names the unreachable unseen classes.

        Args:
            metric: the label metric on the full space.
            observed: the class id of each logit column (order matters and is looked up by id).
            squared: use ``d^2`` (the paper's rule; default True) or ``d`` (the spec's ablation baseline).
            shortcut: nearest-weighted-mean shortcut for embedding metrics: ``"auto"`` (when the metric is an
                embedding metric and ``squared``), ``"always"`` (error if impossible) or ``"never"``.
            dtype: buffer dtype (default float32).
            reachability: ``"warn"`` (compute the report and warn on unreachable unseen classes), ``"report"``
                (compute it, no warning) or ``"off"`` (skip; ``head.reachability`` is ``None``).
            **kwargs: forwarded to the constructor (``input``, ``temperature``, ``top_k``, ``chunk_elements``).
        """
        if shortcut not in ("auto", "always", "never"):
            raise ConfigError(f"shortcut must be 'auto', 'always' or 'never'; got {shortcut!r}.")
        if reachability not in ("warn", "report", "off"):
            raise ConfigError(f"reachability must be 'warn', 'report' or 'off'; got {reachability!r}.")
        head = cls._from_metric(metric, observed, squared=squared, shortcut=shortcut, dtype=dtype, **kwargs)
        if reachability != "off":
            from lightning_ws.loki.active import reachability_report, warn_unreachable

            head.reachability = reachability_report(metric, observed, squared=squared)
            if reachability == "warn":
                warn_unreachable(head.reachability, stacklevel=3)
        return head

    @classmethod
    def _from_metric(cls, metric: LabelMetric, observed: Sequence[Hashable], *, squared: bool,
                     shortcut: str, dtype: torch.dtype, **kwargs) -> LokiHead:
        pos = metric.index(list(observed))
        if len(set(pos.tolist())) != len(pos):
            raise DataError("observed contains a class id twice; each logit column must be a distinct class.")
        can = metric.kind == "embedding" and squared
        if shortcut == "always" and not can:
            raise ConfigError("the embedding shortcut needs an embedding metric and squared=True.")
        if can and shortcut != "never":
            return cls(class_embeddings=metric.embeddings.to(dtype), observed_index=pos,
                       class_ids=metric.class_ids, **kwargs)
        return cls(metric.distance_rows(positions=pos, squared=squared).to(dtype), class_ids=metric.class_ids,
                   **kwargs)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Turn the classifier output into non-negative weights (softmax for ``input="logits"``; top-k sparse)."""
        if x.ndim != 2 or x.shape[1] != self.num_observed:
            raise DataError(f"expected (batch, {self.num_observed}) inputs; got {tuple(x.shape)}.")
        buf = self.sq_dist if self.sq_dist is not None else self.class_embeddings
        w = torch.softmax(x.to(buf.dtype) / self.temperature, dim=1) if self.input == "logits" else x.to(buf.dtype)
        if self.top_k is not None and self.top_k < self.num_observed:
            vals, idx = w.topk(self.top_k, dim=1)
            rows = torch.arange(w.shape[0], device=w.device).repeat_interleave(self.top_k)
            w = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), vals.reshape(-1), w.shape,
                                        check_invariants=False).coalesce()
        return w

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted full-space positions ``(B,)`` for logits/weights ``x`` of shape ``(B, k)``."""
        w = self.weights(x)
        if self.sq_dist is not None:
            return loki_predict(w, self.sq_dist, chunk_elements=self.chunk_elements)
        return loki_predict_embedding(w, self.class_embeddings[self.observed_index], self.class_embeddings,
                                      chunk_elements=self.chunk_elements)

    def frechet_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``(B, N)`` scores ``P @ D2`` (lower is better); ``-scores`` are "Loki as a layer" logits."""
        w = self.weights(x)
        if self.sq_dist is not None:
            return loki_scores(w, self.sq_dist)
        e = self.class_embeddings
        obs = e[self.observed_index]
        w = w.to_dense() if w.layout != torch.strided else w
        sq = (obs.pow(2).sum(1)[:, None] - 2 * obs @ e.T + e.pow(2).sum(1)[None]).clamp_min(0)
        return w @ sq
