"""Per-domain sums of per-example final-layer gradients from a layer's input and output gradient (R&B,
arXiv 2505.00358, Alg. 1 step 2 and Appendix E): the hook path, the Kronecker sketch and the token-mean scales.

Lightning-free. Conventions: a tracked linear layer computes ``s = a W^T + b`` with ``W`` of shape ``(d_out, d_in)``;
for one example the weight gradient of its loss is ``sum_t delta_t^T a_t`` (``delta`` = output gradient, ``t`` over
tokens). With ``include_bias`` the bias gradient ``sum_t delta_t`` is an extra input column of ones (the tracked
parameter is ``[W | b]``, ``(d_out, d_in + 1)``). Accumulators are float32 (exact ``(m, d_out, d_in[+1])``; sketched
``(m, k_out, k_in)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_ws.errors import ConfigError

__all__ = [
    "KroneckerSketch",
    "PER_EXAMPLE_MAX_ELEMENTS",
    "per_example_linear_grads",
    "token_mean_scale",
    "accumulate_domain_grads",
    "DomainAccumulator",
    "example_scale",
]


def _flatten_rows(a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Return ``(a2, d2, tokens_per_example)`` with rows ``(B*T, d)`` for 2-D or 3-D inputs."""
    if a.dim() != delta.dim() or a.shape[:-1] != delta.shape[:-1]:
        raise ConfigError(
            f"layer input {tuple(a.shape)} and output gradient {tuple(delta.shape)} must share all but the last "
            f"dimension; track an nn.Linear that is applied once per forward pass."
        )
    if a.dim() == 2:
        return a, delta, 1
    if a.dim() == 3:
        b, t = a.shape[:2]
        return a.reshape(b * t, -1), delta.reshape(b * t, -1), t
    raise ConfigError(f"tracked layer inputs must be (B, d) or (B, T, d); got shape {tuple(a.shape)}.")


def per_example_linear_grads(
    a: torch.Tensor, delta: torch.Tensor, *, include_bias: bool = True, example_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example gradients of a linear layer from its input and output gradient (Goodfellow, arXiv 1510.01799).

    Used by R&B (arXiv 2505.00358, Appendix E) to get per-example final-layer gradients from the ordinary backward pass,
    without a second backward. Materialises ``(B, d_out, d_in[+1])``: meant for tests and small layers; the callback uses
    :func:`accumulate_domain_grads`, which never builds the per-example tensor.

    Args:
        a: layer input, ``(B, d_in)`` or ``(B, T, d_in)``.
        delta: gradient of the (batch) loss w.r.t. the layer output, ``(B, d_out)`` or ``(B, T, d_out)``.
        include_bias: append the bias gradient as a last input column (default ``True``).
        example_scale: optional ``(B,)`` factor per example (e.g. ``B`` to undo a batch mean).

    Returns:
        ``(B, d_out, d_in + include_bias)`` tensor; sequence inputs are summed over tokens.
    """
    if a.dim() == 2:
        a, delta = a.unsqueeze(1), delta.unsqueeze(1)
    _flatten_rows(a, delta)
    if include_bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    if example_scale is not None:
        delta = delta * example_scale.to(delta.dtype).view(-1, 1, 1)
    return torch.einsum("bto,bti->boi", delta, a)


class KroneckerSketch:
    """Kronecker-structured random projection of linear-layer gradients (a ``lightning_ws`` proposal, not in the paper).

    A gradient ``g = delta^T a`` (``d_out x d_in``) is sketched as ``P_out g P_in^T = (delta P_out^T)^T (a P_in^T)``
    (``k_out x k_in``), so the sketch of a sum of outer products is computed from the projected factors without forming
    ``g``. With independent Gaussian ``P`` entries ``N(0, 1/k)``, inner products of sketches are unbiased estimates of
    the inner products of the gradients (in the spirit of LoGra, arXiv 2405.13954, and LESS, arXiv 2402.04333); the
    relative error shrinks like ``1/sqrt(k_out * k_in)``. Used by R&B (arXiv 2505.00358) for large heads.

    Args:
        d_out: output size of the tracked layer.
        d_in: input size (including the bias column when it is tracked).
        k_out: sketch size on the output side (``<= d_out`` gives no saving beyond ``d_out``; it is clipped to ``d_out``
            with an identity projection when ``k_out >= d_out``).
        k_in: sketch size on the input side (same clipping rule).
        seed: seed of the projection; the same seed gives the same projection on every rank.
    """

    def __init__(self, d_out: int, d_in: int, k_out: int, k_in: int, *, seed: int = 0) -> None:
        for name, val in (("d_out", d_out), ("d_in", d_in), ("k_out", k_out), ("k_in", k_in)):
            if int(val) < 1:
                raise ConfigError(f"KroneckerSketch: {name} must be >= 1, got {val}.")
        gen = torch.Generator().manual_seed(int(seed))
        self.d_out, self.d_in = int(d_out), int(d_in)
        self.p_out = self._make(d_out, k_out, gen)
        self.p_in = self._make(d_in, k_in, gen)
        self.k_out, self.k_in = self.p_out.shape[0], self.p_in.shape[0]

    @staticmethod
    def _make(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
        if k >= d:
            return torch.eye(d)
        return torch.randn(k, d, generator=gen) / math.sqrt(k)

    def to(self, device: torch.device | str) -> KroneckerSketch:
        """Move the projections to ``device`` (in place); returns ``self``."""
        self.p_out = self.p_out.to(device)
        self.p_in = self.p_in.to(device)
        return self

    def project(self, a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project input rows ``(..., d_in)`` and output-gradient rows ``(..., d_out)`` to ``k_in`` / ``k_out``."""
        if a.shape[-1] != self.d_in or delta.shape[-1] != self.d_out:
            raise ConfigError(
                f"sketch built for d_in={self.d_in}, d_out={self.d_out}; got inputs of width {a.shape[-1]} and "
                f"output gradients of width {delta.shape[-1]}."
            )
        return a @ self.p_in.to(a.dtype).T, delta @ self.p_out.to(delta.dtype).T

    def project_factors(self, a: torch.Tensor, delta: torch.Tensor, *,
                        bias_column: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`project`, optionally for inputs *without* the bias column of ones (``a`` of width ``d_in - 1``).

        ``[a | 1] P_in^T = a P_in[:, :-1]^T + P_in[:, -1]``, so the column is never materialised.
        """
        if not bias_column:
            return self.project(a, delta)
        if a.shape[-1] != self.d_in - 1 or delta.shape[-1] != self.d_out:
            raise ConfigError(
                f"sketch built for d_in={self.d_in} (bias column included), d_out={self.d_out}; got inputs of width "
                f"{a.shape[-1]} (+1 bias) and output gradients of width {delta.shape[-1]}."
            )
        p_in = self.p_in.to(a.dtype)
        a_p = torch.addmm(p_in[:, -1], a.reshape(-1, a.shape[-1]), p_in[:, :-1].T).reshape(*a.shape[:-1], -1)
        return a_p, delta @ self.p_out.to(delta.dtype).T

    def sketch_matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Sketch full gradients ``(..., d_out, d_in)`` -> ``(..., k_out, k_in)`` (reference path for tests)."""
        return self.p_out.to(g.dtype) @ g @ self.p_in.to(g.dtype).T


#: Above this many elements of the per-example gradient tensor ``(B, d_out, d_in)`` the accumulation groups rows by
#: domain instead (one host sync for the group sizes, one GEMM per present domain, no per-example tensor).
PER_EXAMPLE_MAX_ELEMENTS = 1 << 20


def _checked_domain_counts(domains: torch.Tensor, m: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-domain example counts of ``(B,)`` long ``domains`` (float64 counts of the ``keep`` examples when a mask is
    given); the same op checks the ids. Raises ConfigError for ids outside ``0..m-1``."""
    try:
        per_domain = torch.bincount(domains, minlength=m) if keep is None else \
            torch.bincount(domains, weights=keep.to(torch.float64), minlength=m)
    except RuntimeError:
        per_domain = None  # negative ids
    if per_domain is None or per_domain.numel() > m:  # too large an id gives a longer result
        raise ConfigError(f"domain ids must lie in 0..{m - 1}; got {int(domains.min())}..{int(domains.max())}. "
                          f"Set num_domains to the number of domains of the data module.")
    return per_domain


def token_mean_scale(targets: torch.Tensor, ignore_index: int = -100,
                     factor: float = 1.0) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """Per-example factors that turn the gradient of a token-mean batch loss into each example's own token-mean loss
    gradient (the per-example normalisation R&B, arXiv 2505.00358, leaves open: every example weighs the same,
    whatever its number of target tokens).

    With ``n_i`` target tokens in example ``i`` (entries of ``targets`` not equal to ``ignore_index``) and
    ``N = sum_i n_i``, the factor is ``factor * N / n_i``. Returns ``(example_scale, valid)`` for
    :func:`accumulate_domain_grads` / :class:`DomainGradSink`: a float64 ``(B,)`` scale (0 where ``n_i = 0``) and the
    bool mask ``n_i > 0`` (``None`` when every example has a target); or, when every example has the same ``n > 0``
    targets (packed LM batches), the one float ``factor * B`` and ``None`` (which lets the fused path use its grouped
    mode). Reads the smallest and largest ``n`` and their sum on the host (a device sync for accelerator tensors).

    Args:
        targets: ``(B, T)`` integer targets.
        ignore_index: the value marking non-target positions.
        factor: extra multiplier (e.g. ``accumulate_grad_batches``, by which Lightning divides the loss).

    Raises:
        ConfigError: ``targets`` is not 2-D.
    """
    if targets.dim() != 2:
        raise ConfigError(f"token_mean targets must be (B, T), got shape {tuple(targets.shape)}.")
    factor = float(factor)
    n = (targets != ignore_index).sum(1, dtype=torch.float64)
    if not n.numel():
        return n, n > 0
    lo, hi, total = torch.stack((*torch.aminmax(n), n.sum())).tolist()  # one host read
    if lo > 0:  # few ops in the common case: this runs inside every training step
        return (factor * n.numel(), None) if lo == hi else (n.reciprocal_().mul_(factor * total), None)
    valid = n > 0
    return n.clamp_min_(1.0).reciprocal_().mul_(factor * total).mul_(valid), valid


def _example_factors(example_scale: torch.Tensor | float | None, keep: torch.Tensor | None,
                     device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor | None, float]:
    """``(scale, alpha)``: a ``(B,)`` per-example factor (``None`` when it is one number for all examples, and no
    ``keep`` mask zeroes some of them) and a scalar multiplier, from ``example_scale`` and the ``keep`` mask."""
    scale: torch.Tensor | None = None
    alpha = 1.0
    if isinstance(example_scale, torch.Tensor):
        scale = example_scale.reshape(-1)
        if scale.device != device or scale.dtype != dtype:
            scale = scale.to(device=device, dtype=dtype)
    elif example_scale is not None:
        alpha = float(example_scale)
    if keep is not None:
        scale = keep.to(dtype) if scale is None else scale * keep
    return scale, alpha


def _host_group_sizes(domains: torch.Tensor, m: int,
                      sizes: torch.Tensor | None = None) -> tuple[list[int], bool]:
    """Examples per domain of ``(B,)`` long ``domains`` (ids already checked; ``sizes``: their unweighted ``(m,)``
    bincount where the caller already has it) and whether the ids are in non-decreasing order (batches from
    :class:`~lightning_ws.rnb.sampler.DomainMixtureSampler` are), with one host read."""
    if sizes is None:
        sizes = torch.bincount(domains, minlength=m)
    vals = torch.cat((sizes.to(device=domains.device, dtype=domains.dtype), domains)).tolist()
    ids = vals[m:]
    return vals[:m], all(x <= y for x, y in zip(ids, ids[1:]))


def _domain_row_groups(a: torch.Tensor, delta: torch.Tensor, domains: torch.Tensor, sizes: list[int],
                       presorted: bool = False):
    """Yield ``(d, delta_d, a_d)`` for every present domain: the ``(n_d T, .)`` rows of its examples from ``(B, T, .)``
    inputs (``sizes``: examples per domain). Rows are gathered once in domain order, unless ``presorted`` (the batch is
    already grouped by domain): then the groups are views, no copy (measured in-step on a small LM head: the gather
    costs as much as 3/4 of the layer's weight-gradient GEMM)."""
    t = a.shape[1]
    if not presorted:
        order = torch.argsort(domains, stable=True)
        a, delta = a.index_select(0, order), delta.index_select(0, order)
    lo = 0
    for d, n in enumerate(sizes):
        n = int(n)
        if n:
            hi = lo + n
            yield d, delta[lo:hi].reshape(n * t, delta.shape[-1]), a[lo:hi].reshape(n * t, a.shape[-1])
            lo = hi


def accumulate_domain_grads(
    sums: torch.Tensor,
    counts: torch.Tensor,
    a: torch.Tensor,
    delta: torch.Tensor,
    domains: torch.Tensor,
    *,
    example_scale: torch.Tensor | float | None = None,
    include_bias: bool = True,
    sketch: KroneckerSketch | None = None,
    valid: torch.Tensor | None = None,
    strategy: str = "auto",
) -> None:
    """Add per-example final-layer gradients into per-domain sums, in place: ``sums[d] += sum_{i in d} g_i``.

    Implements step 2 of R&B's round (arXiv 2505.00358, Algorithm 1): ``s_i += sum_{x in B cap D_i} grad_W l(theta; x)``
    and ``n_i += |B cap D_i|``, from the layer input ``a`` and output gradient ``delta`` of the ordinary backward pass
    (no second backward). Two equivalent strategies, both one pass without Python work per example:

    * ``"per_example"``: one batched matmul gives the ``(B, d_out, d_in)`` per-example gradients (summed over tokens),
      then a single ``index_add_`` adds them into their domains. No host synchronisation; used when that tensor has at
      most :data:`PER_EXAMPLE_MAX_ELEMENTS` elements (classifier heads, sketched accumulators).
    * ``"grouped"``: rows are gathered once in domain order (no copy when the batch is already grouped by domain, as
      :class:`~lightning_ws.rnb.sampler.DomainMixtureSampler` delivers it) and each present domain gets one GEMM into
      its accumulator (total cost: one weight-gradient computation of the layer, as the paper's Appendix E states); the
      group sizes need one host sync. Used for large layers (LM heads), where the per-example tensor would not fit.

    The per-example scale and the bias column are folded into the (narrower) input side, so ``delta`` is only read.

    Args:
        sums: ``(m, d_out, d_in[+1])`` (exact) or ``(m, k_out, k_in)`` (sketched) float accumulator, updated in place.
        counts: ``(m,)`` accumulator of example counts, updated in place.
        a: layer input ``(B, d_in)`` or ``(B, T, d_in)``.
        delta: output gradient ``(B, d_out)`` or ``(B, T, d_out)``.
        domains: ``(B,)`` integer domain id per example, in ``0..m-1``.
        example_scale: ``(B,)`` factor turning the batch-loss gradient into the example's own loss gradient
            (``B`` for a batch-mean loss; ``N_tokens / n_i`` for a token-mean loss), or one float for all. ``None`` = 1.
        include_bias: append the bias column (must match the accumulator width).
        sketch: a :class:`KroneckerSketch`, or ``None`` for exact accumulation.
        valid: optional ``(B,)`` bool mask; examples with ``False`` add nothing and are not counted (e.g. sequences
            without any target token).
        strategy: ``"auto"`` (default), ``"per_example"`` or ``"grouped"`` (same result; see above).

    Raises:
        ConfigError: shape mismatch, a domain id outside ``0..m-1`` or an unknown strategy.
    """
    if strategy not in ("auto", "per_example", "grouped"):
        raise ConfigError(f"strategy must be 'auto', 'per_example' or 'grouped', got {strategy!r}.")
    m = sums.shape[0]
    if a.dim() != delta.dim() or a.shape[:-1] != delta.shape[:-1]:
        raise ConfigError(
            f"layer input {tuple(a.shape)} and output gradient {tuple(delta.shape)} must share all but the last "
            f"dimension; track an nn.Linear that is applied once per forward pass."
        )
    if a.dim() == 2:
        a, delta = a.unsqueeze(1), delta.unsqueeze(1)
    elif a.dim() != 3:
        raise ConfigError(f"tracked layer inputs must be (B, d) or (B, T, d); got shape {tuple(a.shape)}.")
    b = a.shape[0]
    domains = domains.reshape(-1)
    if domains.numel() != b:
        raise ConfigError(f"batch has {domains.numel()} domain ids but the tracked layer saw {b} examples.")
    if b == 0:
        return
    if domains.device != a.device or domains.dtype != torch.long:
        domains = domains.to(device=a.device, dtype=torch.long)
    keep = None if valid is None else valid.reshape(-1).to(device=a.device)
    per_domain = _checked_domain_counts(domains, m, keep)
    work = torch.float64 if sums.dtype == torch.float64 else torch.float32  # fp32 at least, fp64 if asked
    if a.requires_grad or a.dtype != work:
        a = a.detach().to(work)
    if delta.requires_grad or delta.dtype != work:
        delta = delta.detach().to(work)
    scale, alpha = _example_factors(example_scale, keep, a.device, work)
    if sketch is not None:
        a, delta = sketch.project_factors(a, delta, bias_column=include_bias)
    elif include_bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    d_out, d_in = delta.shape[-1], a.shape[-1]
    if sums.shape[1:] != (d_out, d_in):
        raise ConfigError(f"accumulator has per-domain shape {tuple(sums.shape[1:])}, the batch gives "
                          f"{(d_out, d_in)}; check include_bias / sketch sizes.")
    per_example = strategy == "per_example" or (strategy == "auto" and b * d_out * d_in <= PER_EXAMPLE_MAX_ELEMENTS)
    if scale is not None:
        a = a * scale.view(b, 1, 1)
    if per_example:
        per = torch.bmm(delta.transpose(1, 2), a)  # (B, d_out, d_in): per-example gradients summed over tokens
        sums.index_add_(0, domains, per.to(sums.dtype), alpha=alpha)
    else:
        # per_domain counts the masked examples only; the row groups need every example
        sizes, presorted = _host_group_sizes(domains, m, per_domain if keep is None else None)
        for d, delta_d, a_d in _domain_row_groups(a, delta, domains, sizes, presorted):
            sums[d].add_((delta_d.T @ a_d).to(sums.dtype), alpha=alpha)
    counts.add_(per_domain if per_domain.device == counts.device else per_domain.to(counts.device))


class DomainAccumulator:
    """One R&B round's per-domain gradient sums ``(m, d_out, d_in[+1])`` (float32; sketched: ``(m, k_out, k_in)``)
    and example counts ``(m,)`` (float64), with per-optimizer-step buffers when several processes contribute (they
    are all-reduced once per step by :meth:`merge_step`, so every rank holds the same round totals).

    Args:
        m: number of domains.
        d_out, d_in: the tracked parameter's shape (``d_in`` includes the bias column when it is tracked).
        sketch_dim: ``None`` (exact) or ``(k_out, k_in)`` of a :class:`KroneckerSketch` seeded with ``seed``.
        distributed: keep per-step buffers for :meth:`merge_step`.
    """

    def __init__(self, m: int, d_out: int, d_in: int, *, sketch_dim: list[int] | None = None, seed: int = 0,
                 distributed: bool = False) -> None:
        self.sketch = None if sketch_dim is None else KroneckerSketch(d_out, d_in, *sketch_dim, seed=seed)
        shape = (m, d_out, d_in) if self.sketch is None else (m, self.sketch.k_out, self.sketch.k_in)
        self.sums = torch.zeros(shape, dtype=torch.float32)
        self.counts = torch.zeros(m, dtype=torch.float64)
        self.distributed = bool(distributed)
        self.step_sums = torch.zeros_like(self.sums) if distributed else None
        self.step_counts = torch.zeros_like(self.counts) if distributed else None

    def buffers(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(sums, counts)`` to add into (the step buffers under DDP), moved to ``device`` once."""
        if self.sums.device != device:  # first micro-batch on an accelerator
            self.sums, self.counts = self.sums.to(device), self.counts.to(device)
            if self.distributed:
                self.step_sums, self.step_counts = self.step_sums.to(device), self.step_counts.to(device)
            if self.sketch is not None:
                self.sketch.to(device)
        return (self.step_sums, self.step_counts) if self.distributed else (self.sums, self.counts)

    def merge_step(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Add this step's buffers, reduced (summed) over processes by ``reduce``, into the round totals."""
        if not self.distributed:
            return
        step_sums, step_counts = reduce(self.step_sums), reduce(self.step_counts)
        self.sums = self.sums.to(step_sums.device).add_(step_sums)
        self.counts = self.counts.to(step_counts.device).add_(step_counts)
        self.step_sums.zero_()
        self.step_counts.zero_()

    def reset(self) -> None:
        """Start a new round."""
        self.sums.zero_()
        self.counts.zero_()

    def load(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Restore checkpointed totals; the shapes must match (same layer, ``include_bias`` and ``sketch_dim``)."""
        if tuple(sums.shape) != tuple(self.sums.shape):
            raise ConfigError(f"checkpoint accumulators {tuple(sums.shape)} do not match {tuple(self.sums.shape)}; "
                              f"same layer and sketch_dim are needed to resume.")
        self.sums = sums.clone().to(torch.float32)
        self.counts = counts.clone().to(torch.float64)


def example_scale(loss_reduction: str, shape: tuple[int, ...], factor: float, targets: torch.Tensor | None = None,
                  ignore_index: int = -100) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """Per-example factor turning the gradient of the batch loss into each example's own loss gradient, and the
    ``valid`` mask (see :func:`token_mean_scale`), for a tracked layer whose input has ``shape``.

    ``"mean"``: ``B * factor`` (undoes the batch mean); ``"sum"``: ``factor``; ``"token_mean"``: ``factor * N / n_i``
    from the ``(B, T)`` ``targets``, which must align with the layer's ``(B, T, d)`` input. ``factor`` is
    ``accumulate_grad_batches`` (Lightning divides the loss by it) over the AMP loss scale, if any.
    """
    if loss_reduction == "mean":
        return float(shape[0]) * factor, None
    if loss_reduction == "sum":
        return factor, None
    targets = torch.as_tensor(targets)
    if targets.dim() != 2 or targets.shape[0] != shape[0] or len(shape) != 3 or targets.shape[1] != shape[1]:
        raise ConfigError(f"token_mean: targets {tuple(targets.shape)} must be (B, T) aligned with the tracked layer "
                          f"input {tuple(shape)}.")
    # equal target counts (packed LM batches) give one float, which lets the fused path use its grouped mode
    return token_mean_scale(targets, ignore_index, factor)
