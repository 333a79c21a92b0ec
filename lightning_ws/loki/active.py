"""Which classes can Loki predict, and which class to observe next (arXiv 2307.12226, spec §6).

The *locus* ``Π(Λ)`` of observed classes ``Λ`` is the set of classes that Loki predicts for *some* weight vector
in the simplex.  :func:`reachable_classes` computes it:

* ``method="tree"`` (exact, ``O(k N)``): when every node of a tree is a class, ``Π(Λ)`` is the minimal subtree
  spanning ``Λ`` (union of pairwise paths).  With ``r = λ_1``, ``y`` is on the path ``r -> b`` iff
  ``d(r, y) + d(y, b) = d(r, b)``; the union over ``b`` is the spanning subtree.
* ``method="lp"`` (exact for any metric, ``N`` small linear programs): ``y`` is reachable iff
  ``max_{w in simplex} min_{y' != y} sum_i w_i (d^2(y', λ_i) - d^2(y, λ_i)) > tol`` (strictly the unique argmin;
  ties with a measure-zero set of weights are not counted). Cheap certificates (one-hot and random Dirichlet
  weights) settle most classes before any LP is solved.
* ``method="sample"`` (a lower bound for big ``N``): classes that win for ``num_samples`` random weights.

:func:`active_next_class` picks the next class to observe: ``"farthest"`` (the unobserved class farthest from the
current locus, the exact greedy maximiser on class trees, spec §6.1) or ``"greedy"`` (the candidate that maximises
``|Π(Λ ∪ {y})|``, for general metrics; ties, which are the rule on embedding metrics where the locus is often just the
observed set, go to the candidate farthest from the locus, never to the lowest index).  :func:`select_classes` repeats
it and reports the reachable counts.  :func:`reachability_report` summarises how many unseen classes Loki can reach;
:class:`~lightning_ws.loki.predict.LokiHead` computes it when a head is built and warns when unseen classes are
unreachable.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.loki.metric_space import LabelMetric

__all__ = ["reachable_classes", "active_next_class", "select_classes", "ActiveSelection", "ReachabilityReport",
           "LokiReachabilityWarning", "reachability_report"]

Method = Literal["auto", "tree", "lp", "sample"]


def _observed_positions(metric: LabelMetric, observed: Sequence[Hashable]) -> torch.Tensor:
    if len(observed) == 0:
        raise DataError("observed is empty: Loki needs at least one observed class.")
    pos = metric.index(list(observed))
    return torch.unique(pos)


def reachable_classes(metric: LabelMetric, observed: Sequence[Hashable], *, method: Method = "auto",
                      squared: bool = True, tol: float = 1e-9, num_samples: int = 4096, seed: int = 0,
                      max_lp_classes: int = 5000) -> torch.Tensor:
    """Boolean mask ``(N,)`` of the classes Loki can predict from ``observed`` (the locus; arXiv 2307.12226).

    Args:
        metric: the label metric.
        observed: observed class ids.
        method: ``"auto"`` (``"tree"`` when the metric is a tree whose nodes are all classes, else ``"lp"``),
            ``"tree"``, ``"lp"`` or ``"sample"`` (see the module docstring).
        squared: the rule uses ``d^2`` (default True; the paper's rule).
        tol: margin a class must win by (default 1e-9, relative to the largest squared distance).
        num_samples: random Dirichlet(1) weight vectors tried (``"sample"``, and as certificates for ``"lp"``).
        seed: seed of the sampler's own generator (default 0).
        max_lp_classes: refuse ``"lp"`` above this many classes (default 5000); use ``"sample"`` instead.

    Returns:
        BoolTensor ``(N,)`` in ``metric.class_ids`` order; ``mask.sum()`` is the number of reachable classes.
    """
    obs = _observed_positions(metric, observed)
    if method == "auto":
        method = "tree" if (metric.is_class_tree and squared) else "lp"
    if method == "tree":
        if not metric.is_class_tree:
            raise ConfigError("method='tree' needs a tree metric whose every node is a class "
                              "(LabelMetric.from_parents with classes=None); use method='lp'.")
        d = metric.distance_rows(positions=obs)  # (k, N) hop distances (integers)
        r = d[0]
        on_path = (r[None, :] + d) == r[obs][:, None]  # y on the path obs[0] -> obs[b]
        return on_path.any(0)
    if method not in ("lp", "sample"):
        raise ConfigError(f"method must be 'auto', 'tree', 'lp' or 'sample'; got {method!r}.")
    if num_samples < 0:
        raise ConfigError(f"num_samples must be >= 0; got {num_samples}.")
    n = metric.num_classes
    if method == "lp" and n > max_lp_classes:
        raise ConfigError(f"method='lp' solves {n} linear programs over {n} constraints; above "
                          f"max_lp_classes={max_lp_classes} use method='sample' (a lower bound).")
    sq = metric.distance_rows(positions=obs, squared=squared)  # (k, N)
    scale = float(sq.abs().max()) or 1.0
    sqn = sq / scale
    reach = torch.zeros(n, dtype=torch.bool)
    # certificates: one-hot weights and random simplex points
    gen = torch.Generator().manual_seed(int(seed))
    k = len(obs)
    # Dirichlet(1) draws as normalised exponentials, from our own generator
    w = torch.cat([torch.eye(k, dtype=torch.float64),
                   -torch.log1p(-torch.rand(num_samples, k, generator=gen, dtype=torch.float64))])
    w = w / w.sum(1, keepdim=True)
    for r0 in range(0, len(w), 1024):
        s = w[r0:r0 + 1024] @ sqn
        two = s.topk(2 if n > 1 else 1, dim=1, largest=False)
        if n == 1:
            reach[:] = True
            break
        win = (two.values[:, 1] - two.values[:, 0]) > tol
        reach[two.indices[win, 0]] = True
    if method == "sample":
        return reach
    from scipy.optimize import linprog

    sq_np = sqn.numpy()
    for y in np.nonzero(~reach.numpy())[0]:
        others = np.delete(np.arange(n), y)
        # variables (w_1..w_k, t): maximise t  s.t.  t - sum_i w_i (S[i, y'] - S[i, y]) <= 0, sum w = 1, w >= 0
        diff = sq_np[:, others] - sq_np[:, [y]]  # (k, N-1)
        a_ub = np.hstack([-diff.T, np.ones((len(others), 1))])
        res = linprog(c=np.r_[np.zeros(k), -1.0], A_ub=a_ub, b_ub=np.zeros(len(others)),
                      A_eq=np.r_[np.ones(k), 0.0][None], b_eq=[1.0],
                      bounds=[(0, None)] * k + [(None, None)], method="highs")
        if res.status != 0:
            raise DataError(f"the locus LP for class {metric.class_ids[y]!r} failed: {res.message}")
        reach[int(y)] = -res.fun > tol
    return reach


def active_next_class(metric: LabelMetric, observed: Sequence[Hashable], *,
                      strategy: Literal["auto", "farthest", "greedy"] = "auto",
                      candidates: Sequence[Hashable] | None = None, method: Method = "auto") -> Hashable | None:
    """The class to observe next so that Loki can predict the most classes (arXiv 2307.12226, spec §6.1).

    Args:
        metric: the label metric.
        observed: current observed class ids.
        strategy: ``"farthest"``: the candidate outside the locus farthest from it (exact greedy on class trees);
            ``"greedy"``: the candidate maximising ``|Π(Λ ∪ {y})|`` (one locus per candidate); ``"auto"``:
            farthest on class trees, greedy otherwise if ``N <= 200``, else farthest.
        candidates: ids allowed to be chosen (default: every class not observed).
        method: locus method (see :func:`reachable_classes`).

    Returns:
        The chosen class id, or ``None`` when every candidate is already predictable (the locus covers them).
        Ties go to the lowest position.
    """
    obs = _observed_positions(metric, observed)
    if strategy == "auto":
        strategy = "farthest" if metric.is_class_tree or metric.num_classes > 200 else "greedy"
    if strategy not in ("farthest", "greedy"):
        raise ConfigError(f"strategy must be 'auto', 'farthest' or 'greedy'; got {strategy!r}.")
    cand_mask = torch.ones(metric.num_classes, dtype=torch.bool)
    if candidates is not None:
        cand_mask[:] = False
        cand_mask[metric.index(list(candidates))] = True
    cand_mask[obs] = False
    locus = reachable_classes(metric, [metric.class_ids[i] for i in obs.tolist()], method=method)
    pool = cand_mask & ~locus
    if not pool.any():
        return None
    if strategy == "farthest":
        dist = metric.min_distance_to(torch.nonzero(locus).reshape(-1))
        dist = torch.where(pool, dist, torch.full_like(dist, -1.0))
        return metric.class_ids[int(dist.argmax())]
    best, best_key = None, (-1, -1.0)
    base = [metric.class_ids[i] for i in obs.tolist()]
    # ties in |locus| (the rule on embedding metrics, where adding y often makes only y reachable) go to the
    # candidate farthest from the current locus (k-center greedy), not to the lowest position
    dist = metric.min_distance_to(torch.nonzero(locus).reshape(-1))
    for y in torch.nonzero(pool).reshape(-1).tolist():
        size = int(reachable_classes(metric, [*base, metric.class_ids[y]], method=method).sum())
        key = (size, float(dist[y]))
        if key > best_key:
            best, best_key = y, key
    return metric.class_ids[best]


class LokiReachabilityWarning(UserWarning):
    """Observed classes leave unseen classes that Loki can never predict (arXiv 2307.12226, the locus)."""


@dataclass(frozen=True)
class ReachabilityReport:
    """How many classes Loki can predict from the observed ones (the locus ``Π(Λ)``, arXiv 2307.12226).

    Attributes:
        num_classes: ``N``, classes in the label metric.
        num_observed: distinct observed classes.
        num_unseen: ``N - num_observed``.
        unseen_reachable: unseen classes Loki predicts for some weight vector.
        unreachable: up to 10 unseen class ids that Loki can never predict.
        method: the locus method used (``"tree"``, ``"lp"`` exact; ``"sample"`` a lower bound).
        exact: whether ``unseen_reachable`` is exact (``False`` for ``"sample"``: a lower bound).
    """

    num_classes: int
    num_observed: int
    num_unseen: int
    unseen_reachable: int
    unreachable: tuple
    method: str
    exact: bool

    @property
    def all_reachable(self) -> bool:
        """True when every unseen class is reachable."""
        return self.unseen_reachable == self.num_unseen

    def __str__(self) -> str:
        bound = "" if self.exact else " at least"
        return (f"Loki reachability ({self.method}): {self.num_observed} observed of {self.num_classes} classes;"
                f"{bound} {self.unseen_reachable} of {self.num_unseen} unseen classes reachable")

    def message(self) -> str:
        """A warning text naming the problem and what to do about it."""
        return (f"{self}. Loki can never predict the other {self.num_unseen - self.unseen_reachable} unseen classes "
                f"(e.g. {list(self.unreachable[:5])}) whatever the classifier outputs: with this metric the observed "
                "classes' locus does not contain them (e.g. a tree whose leaves are the classes, or class-name "
                "embeddings, where the weighted Fréchet mean stays on the observed classes). Observe classes chosen "
                "by lightning_ws.loki.select_classes, or use a metric whose internal nodes are classes.")


def reachability_report(metric: LabelMetric, observed: Sequence[Hashable], *, squared: bool = True,
                        method: Method = "auto", max_exact_classes: int = 100, num_samples: int = 4096,
                        seed: int = 0) -> ReachabilityReport:
    """Count the unseen classes Loki can reach from ``observed`` (arXiv 2307.12226; see :func:`reachable_classes`).

    Args:
        metric: the label metric.
        observed: observed class ids.
        squared: the rule uses ``d^2`` (default True).
        method: locus method; ``"auto"`` is exact (``"tree"``/``"lp"``) up to ``max_exact_classes`` classes and
            ``"sample"`` (a lower bound) above.
        max_exact_classes: the ``"auto"`` switch point (default 100: one small LP per unseen class is cheap there).
        num_samples: random weight vectors for ``"sample"`` and as LP certificates.
        seed: seed of those draws.
    """
    if method == "auto":
        if metric.is_class_tree and squared:
            method = "tree"
        else:
            method = "lp" if metric.num_classes <= max_exact_classes else "sample"
    reach = reachable_classes(metric, observed, method=method, squared=squared, num_samples=num_samples, seed=seed)
    obs = _observed_positions(metric, observed)
    unseen = torch.ones(metric.num_classes, dtype=torch.bool)
    unseen[obs] = False
    unreachable = torch.nonzero(unseen & ~reach).reshape(-1)[:10].tolist()
    return ReachabilityReport(num_classes=metric.num_classes, num_observed=len(obs), num_unseen=int(unseen.sum()),
                              unseen_reachable=int((unseen & reach).sum()),
                              unreachable=tuple(metric.class_ids[i] for i in unreachable), method=str(method),
                              exact=method != "sample")


def warn_unreachable(report: ReachabilityReport, stacklevel: int = 3) -> None:
    """Issue a :class:`LokiReachabilityWarning` when some unseen classes are unreachable."""
    if not report.all_reachable:
        warnings.warn(report.message(), LokiReachabilityWarning, stacklevel=stacklevel)


@dataclass
class ActiveSelection:
    """Result of :func:`select_classes`: the chosen ids in order and the locus size after each step.

    ``reachable_counts[0]`` is the size for the initial set; ``reachable_counts[i]`` after ``i`` additions.
    """

    selected: list = field(default_factory=list)
    reachable_counts: list[int] = field(default_factory=list)

    @property
    def observed(self) -> list:
        """Initial plus selected ids (set by :func:`select_classes`)."""
        return list(self._initial) + list(self.selected)

    _initial: list = field(default_factory=list, repr=False)


def select_classes(metric: LabelMetric, initial: Sequence[Hashable], budget: int, *,
                   strategy: Literal["auto", "farthest", "greedy", "random"] = "auto", seed: int = 0,
                   method: Method = "auto") -> ActiveSelection:
    """Add ``budget`` classes to ``initial`` one at a time and report how many classes become reachable.

    Paper: Loki, arXiv 2307.12226 (active next-class selection).  ``strategy="random"`` draws uniformly among the
    unobserved classes with its own ``numpy`` generator seeded by ``seed`` (the baseline of spec §6.1).
    If every class becomes reachable early, selection continues with the farthest (or random) unobserved classes,
    which no longer change the count.
    """
    if budget < 0:
        raise ConfigError(f"budget must be >= 0; got {budget}.")
    rng = np.random.default_rng(seed)
    obs = list(initial)
    res = ActiveSelection(_initial=list(initial))
    res.reachable_counts.append(int(reachable_classes(metric, obs, method=method).sum()))
    for _ in range(budget):
        left = [c for c in metric.class_ids if c not in set(obs)]
        if not left:
            break
        if strategy == "random":
            nxt = left[int(rng.integers(len(left)))]
        else:
            nxt = active_next_class(metric, obs, strategy=strategy, method=method)
            if nxt is None:  # everything reachable: keep adding the farthest observed-wise class
                d = metric.min_distance_to(metric.index(obs))
                d[metric.index(obs)] = -1.0
                nxt = metric.class_ids[int(d.argmax())]
        obs.append(nxt)
        res.selected.append(nxt)
        res.reachable_counts.append(int(reachable_classes(metric, obs, method=method).sum()))
    return res
