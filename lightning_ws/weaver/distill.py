"""Lightning-free core of Weaver cross-encoder distillation (arXiv 2506.18203, spec §9).

Plain torch / numpy helpers used by :class:`lightning_ws.modules.weaver.WeaverCrossEncoder` and
:class:`lightning_ws.datamodules.weaver.WeaverDistillDataModule`:

* :func:`split_problems`: a seeded split of *problem* indices (never candidates) into train / val / test. The
  reference ``distillation/train.py`` splits at the sample level, so candidates of one problem land in both train and
  test; here a problem is always in exactly one split (spec §12, "distillation hygiene").
* :func:`pairwise_ranking_loss` / :func:`listwise_ranking_loss`: within-problem ranking losses computed from the
  ``problem`` ids of a flat batch (the reference trains with MSE only; the ranking term is an optional addition).
* :func:`select_from_scores` / :func:`flat_selection_accuracy`: argmax selection per problem on flat per-candidate
  scores, and the resulting selection accuracy.
* :func:`load_score_file`: read the ``weaver_scores.safetensors`` / ``.json`` that ``lightning-ws weaver select --out``
  writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError

__all__ = [
    "RANKING_LOSSES",
    "flat_selection_accuracy",
    "listwise_ranking_loss",
    "load_score_file",
    "pairwise_ranking_loss",
    "ranking_loss",
    "ranking_loss_terms",
    "select_from_scores",
    "split_problems",
]

RANKING_LOSSES = ("pairwise", "listwise")


def split_problems(num_problems: int, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint split of problem indices ``0..P-1`` (Weaver distillation, arXiv 2506.18203).

    Each split is sorted. Sizes are ``round(fraction * P)``; validation and test get at least one problem when their
    fraction is positive, and train always keeps at least one.

    Args:
        num_problems: ``P``.
        val_fraction: fraction of problems for validation (``[0, 1)``; default 0.1, left open by the paper).
        test_fraction: fraction for test (``[0, 1)``; default 0.2, left open by the paper).
        seed: seed of the ``np.random.default_rng`` permutation.

    Returns:
        ``(train, val, test)`` int64 arrays of problem indices.

    Raises:
        ConfigError: bad fractions or too few problems for the requested splits.
    """
    P = int(num_problems)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {f}.")
    n_val = max(1, round(val_fraction * P)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * P)) if test_fraction > 0 else 0
    if P - n_val - n_test < 1:
        raise ConfigError(f"{P} problems cannot be split into {n_val} validation + {n_test} test problems and a "
                          f"non-empty training set; lower val_fraction/test_fraction or use more problems.")
    perm = np.random.default_rng(seed).permutation(P)
    val, test, train = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64), np.sort(test).astype(np.int64)


def _check_flat(problem: torch.Tensor, *tensors: torch.Tensor) -> None:
    if problem.ndim != 1:
        raise DataError(f"problem ids must be a 1-d tensor, got shape {tuple(problem.shape)}.")
    for t in tensors:
        if t.shape != problem.shape:
            raise DataError(f"scores/targets must have the shape of the problem ids {tuple(problem.shape)}; got "
                            f"{tuple(t.shape)}.")


def pairwise_ranking_loss(scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor, *,
                          margin: float = 1e-6) -> torch.Tensor:
    """Pairwise logistic (RankNet-style) loss over same-problem candidate pairs (arXiv 2506.18203 distillation).

    For every ordered pair ``(i, j)`` of candidates of the same problem with ``targets[i] > targets[j] + margin``,
    the loss is ``softplus(-(scores[i] - scores[j]))`` = ``-log sigmoid(s_i - s_j)``; the result is the mean over
    such pairs. Pairs with equal targets (within ``margin``) carry no preference and are skipped, so a batch with no
    ordered pair returns an exact ``0`` that still has a (zero) gradient path to ``scores`` (never NaN).

    Args:
        scores: ``(B,)`` model scores (logits; the loss is shift-invariant per problem).
        targets: ``(B,)`` teacher scores (Weaver P(correct)).
        problem: ``(B,)`` problem ids; only candidates with equal ids are compared.
        margin: minimum target gap for a pair to count (default 1e-6; the paper has no ranking loss).
    """
    total, n = _pairwise_terms(scores, targets, problem, margin=margin)
    return total / n.clamp_min(1).to(scores.dtype)


def _pairwise_terms(scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor, *,
                    margin: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the pair losses, number of ordered pairs)`` of :func:`pairwise_ranking_loss`."""
    _check_flat(problem, scores, targets)
    same = problem[:, None] == problem[None, :]
    better = (targets[:, None] - targets[None, :]) > margin
    pairs = same & better
    diff = scores[:, None] - scores[None, :]
    losses = F.softplus(-diff) * pairs.to(scores.dtype)
    return losses.sum(), pairs.sum()


def listwise_ranking_loss(scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor, *,
                          temperature: float = 0.1) -> torch.Tensor:
    """Listwise softmax (ListNet-style) cross-entropy within each problem (arXiv 2506.18203 distillation).

    Per problem ``p`` with candidate set ``C_p`` (``|C_p| >= 2``), the target distribution is
    ``softmax(targets[C_p] / temperature)`` and the loss is the cross-entropy ``-sum q log softmax(scores[C_p])``
    minus the entropy of ``q`` (i.e. ``KL(q || softmax(scores))``, which is 0 when the model's within-problem
    distribution matches the teacher's). Averaged over problems with at least two candidates; ``0`` if none.

    Args:
        scores: ``(B,)`` model scores (logits).
        targets: ``(B,)`` teacher scores.
        problem: ``(B,)`` problem ids.
        temperature: softmax temperature of the teacher scores (default 0.1, our choice: Weaver probabilities lie in
            [0, 1], so a small temperature makes the teacher's preferred candidate dominate).
    """
    kl, valid = _listwise_terms(scores, targets, problem, temperature=temperature)
    if not bool(valid.any()):
        return scores.sum() * 0.0
    return kl[valid].mean()


def _listwise_terms(scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor, *,
                    temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem KL terms of :func:`listwise_ranking_loss` and the mask of problems with >= 2 candidates."""
    _check_flat(problem, scores, targets)
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}.")
    uniq, inv = torch.unique(problem, return_inverse=True)
    G = uniq.numel()
    counts = torch.zeros(G, dtype=torch.long, device=problem.device).scatter_add_(0, inv, torch.ones_like(inv))
    member = inv[None, :] == torch.arange(G, device=problem.device)[:, None]  # (G, B)
    neg = torch.finfo(scores.dtype).min
    log_p = torch.log_softmax(torch.where(member, scores[None, :], neg), dim=1)
    log_q = torch.log_softmax(torch.where(member, (targets / temperature)[None, :].to(scores.dtype), neg), dim=1)
    log_p = torch.where(member, log_p, 0.0)
    log_q = torch.where(member, log_q, 0.0)
    q = log_q.exp() * member.to(scores.dtype)
    kl = (q * (log_q - log_p)).sum(dim=1)
    return kl, counts >= 2


def ranking_loss(kind: str, scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor) -> torch.Tensor:
    """Dispatch to :func:`pairwise_ranking_loss` (``"pairwise"``) or :func:`listwise_ranking_loss` (``"listwise"``)."""
    if kind == "pairwise":
        return pairwise_ranking_loss(scores, targets, problem)
    if kind == "listwise":
        return listwise_ranking_loss(scores, targets, problem)
    raise ConfigError(f"ranking loss must be one of {RANKING_LOSSES}, got {kind!r}.")


def ranking_loss_terms(kind: str, scores: torch.Tensor, targets: torch.Tensor, problem: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total, count)`` with ``ranking_loss(...) == total / max(count, 1)``: the summed pair losses and the number of
    ordered pairs (``"pairwise"``), or the summed per-problem KLs and the number of problems with at least two
    candidates (``"listwise"``).

    For data parallelism: dividing each rank's ``total`` by the *global* count (summed over ranks) divided by the
    world size makes the averaged gradient that of the mean over all ranks' pairs, as one process with the combined
    batch computes; each rank's own mean would weight the pairs of a rank with fewer pairs more.
    """
    if kind == "pairwise":
        return _pairwise_terms(scores, targets, problem)
    if kind == "listwise":
        kl, valid = _listwise_terms(scores, targets, problem)
        return (kl[valid].sum() if bool(valid.any()) else scores.sum() * 0.0), valid.sum()
    raise ConfigError(f"ranking loss must be one of {RANKING_LOSSES}, got {kind!r}.")


def select_from_scores(problem_ids: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Pick the highest-scoring candidate of each problem from flat per-candidate scores (arXiv 2506.18203).

    Ties go to the candidate that comes first in the input (the reference's lowest-index rule); NaN scores are never
    selected unless all of a problem's scores are NaN.

    Args:
        problem_ids: ``(M,)`` problem id of each candidate (any order; e.g. concatenated ``predict`` outputs).
        scores: ``(M,)`` per-candidate scores.

    Returns:
        ``(problems (Q,), positions (Q,))``: the sorted unique problem ids and, for each, the position in the input
        arrays of its selected candidate.
    """
    p = np.asarray(problem_ids.detach().cpu() if isinstance(problem_ids, torch.Tensor) else problem_ids).reshape(-1)
    s = np.asarray(scores.detach().float().cpu() if isinstance(scores, torch.Tensor) else scores,
                   dtype=np.float64).reshape(-1)
    if p.shape != s.shape:
        raise DataError(f"problem_ids ({p.shape[0]}) and scores ({s.shape[0]}) must have the same length.")
    if p.size == 0:
        raise DataError("select_from_scores got no candidates.")
    s = np.where(np.isnan(s), -np.inf, s)
    # sort by (problem, -score, position): the first row of each problem is its argmax with the first-index tie rule
    pos = np.arange(p.size)
    order = np.lexsort((pos, -s, p))
    ps = p[order]
    first = np.ones(ps.size, dtype=bool)
    first[1:] = ps[1:] != ps[:-1]
    return ps[first].astype(np.int64), order[first].astype(np.int64)


def flat_selection_accuracy(problem_ids: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray,
                            correct: torch.Tensor | np.ndarray) -> float:
    """Selection accuracy (Select@1): fraction of problems whose argmax-score candidate is correct.

    Args:
        problem_ids: ``(M,)`` problem ids. scores: ``(M,)`` scores. correct: ``(M,)`` bool / 0-1 correctness.
    """
    c = np.asarray(correct.detach().cpu() if isinstance(correct, torch.Tensor) else correct).reshape(-1)
    n = problem_ids.numel() if isinstance(problem_ids, torch.Tensor) else np.asarray(problem_ids).size
    if c.size != n:
        raise DataError(f"correct has {c.size} entries for {n} candidates; pass one per candidate.")
    _, pos = select_from_scores(problem_ids, scores)
    return float(c[pos].astype(np.float64).mean())


def load_score_file(path: str | Path) -> np.ndarray:
    """Read the ``(P, N)`` Weaver scores written by ``lightning-ws weaver select --out DIR``.

    Accepts ``weaver_scores.safetensors`` (tensor ``scores``) or ``weaver_scores.json`` (key ``scores``), or the
    folder ``DIR`` itself (the safetensors file is preferred).

    Raises:
        DataFileNotFoundError: no such file. DataError: no ``scores`` entry, or not a 2-d finite array.
    """
    from lightning_ws.io import load_json, load_tensors

    path = Path(path)
    if path.is_dir():
        for name in ("weaver_scores.safetensors", "weaver_scores.json"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise DataFileNotFoundError(f"Weaver score file not found: {path}. Write it with `lightning-ws weaver select "
                                    f"--data gsm8k --out DIR` and pass DIR/weaver_scores.safetensors, or leave "
                                    f"scores_path empty to compute label-free Weaver scores on the training problems.")
    if path.suffix == ".json":
        obj = load_json(path)
        if not isinstance(obj, dict) or "scores" not in obj:
            raise DataError(f"{path}: expected a JSON object with a 'scores' list of lists (P x N).")
        arr = np.asarray(obj["scores"], dtype=np.float64)
    elif path.suffix == ".safetensors":
        tensors, _ = load_tensors(path)
        if "scores" not in tensors:
            raise DataError(f"{path}: no tensor named 'scores' (found {sorted(tensors)}).")
        arr = np.asarray(tensors["scores"], dtype=np.float64)
    else:
        raise DataError(f"{path}: unknown score file type {path.suffix!r}; use .safetensors or .json.")
    if arr.ndim != 2:
        raise DataError(f"{path}: scores must be a (problems x candidates) matrix, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: scores contain NaN/inf; re-run `lightning-ws weaver select`.")
    return arr
