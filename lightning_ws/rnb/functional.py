"""Pure-torch maths of R&B (arXiv 2505.00358): per-domain final-layer gradients, the Gram matrix and mixture updates.

Nothing here imports Lightning; the callback in :mod:`lightning_ws.callbacks.rnb` is a thin wrapper around these
functions, and they can be used in a hand-written training loop.

Conventions:

* A tracked linear layer computes ``s = a W^T + b`` with ``W`` of shape ``(d_out, d_in)``. For one example the weight
  gradient of its loss is ``sum_t delta_t^T a_t`` (``delta`` = output gradient, ``t`` runs over tokens for sequence
  inputs). When ``include_bias`` is true the bias gradient ``sum_t delta_t`` is appended as an extra input column of
  ones, i.e. the tracked parameter is ``[W | b]`` of shape ``(d_out, d_in + 1)``.
* Accumulators are float32 (exact: ``(m, d_out, d_in[+1])``; sketched: ``(m, k_out, k_in)``), Gram matrices float64.

Two ways to get the per-domain sums during the ordinary backward: :func:`accumulate_domain_grads` from a captured
layer input and output gradient (hooks; one extra weight-gradient computation of the layer), or :func:`fused_linear`
(a custom autograd function whose backward derives the layer's weight gradient from the per-example products and hands
the per-domain sums to a :class:`DomainGradSink`; about no extra GEMM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_ws.errors import ConfigError

__all__ = [
    "KroneckerSketch",
    "PER_EXAMPLE_MAX_ELEMENTS",
    "FUSED_PER_EXAMPLE_MAX_ELEMENTS",
    "per_example_linear_grads",
    "token_mean_scale",
    "accumulate_domain_grads",
    "FUSED_DTYPES",
    "fused_accumulation_mode",
    "DomainGradSink",
    "FusedLinearFunction",
    "fused_linear",
    "FusedForwardHandle",
    "install_fused_forward",
    "domain_gram",
    "rnb_scores",
    "rnb_update",
    "multiplicative_update",
    "apply_prob_floor",
    "mixture_entropy",
    "validate_mixture",
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


# ----------------------------------------------------------------------------- fused accumulation
#: Input dtypes :func:`fused_linear` is used for by :class:`lightning_ws.callbacks.rnb.RnBCallback` (its per-example
#: products are summed in the input dtype; for half precision the ordinary fp32-accumulating GEMM is more accurate).
FUSED_DTYPES = (torch.float32, torch.float64)
#: Largest ``(B, d_out, d_in + 1)`` per-example tensor the fused backward materialises when the per-example scales
#: differ within a domain (``token_mean``); above it the hook path is used (see :func:`fused_accumulation_mode`).
FUSED_PER_EXAMPLE_MAX_ELEMENTS = 1 << 23


def _cpu_l2_bytes(default: int = 1 << 20, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of one core's L2 cache, read from Linux's sysfs (``default``, 1 MiB, where it is not available)."""
    import glob

    for entry in sorted(glob.glob(f"{root}/index*")):
        try:
            with open(f"{entry}/level") as f_level, open(f"{entry}/type") as f_type, open(f"{entry}/size") as f_size:
                level, kind, size = f_level.read().strip(), f_type.read().strip(), f_size.read().strip().upper()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size:
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            try:
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
            except ValueError:
                break
    return default


#: Bytes of per-example gradients per chunk of the fused backward on the CPU: half of a core's L2 cache, so that a
#: chunk and the reduction's output stay in cache (512 KB chunks were tuned on an AMD EPYC with 1 MiB L2; on an Intel
#: Xeon with 2 MiB L2, 1-1.5 MB chunks are ~7% faster in-step than 512 KB ones and the whole 4 MB tensor at once is
#: ~25% slower).
_CPU_CHUNK_BYTES = max(1 << 16, _cpu_l2_bytes() // 2)


def fused_accumulation_mode(batch: int, d_out: int, width: int, *, uniform_scale: bool,
                            force: bool = False) -> str | None:
    """Which backward :class:`DomainGradSink` should use for a layer of ``d_out x width`` (bias column included).

    * ``"per_example"`` when the ``(batch, d_out, width)`` per-example tensor has at most
      :data:`PER_EXAMPLE_MAX_ELEMENTS` elements (the threshold :func:`accumulate_domain_grads` uses);
    * ``"grouped"`` above it when every example of a domain has the same scale (``uniform_scale``: mean / sum losses);
    * with per-example scales that differ within a domain (e.g. a token mean): ``"per_example"`` up to
      :data:`FUSED_PER_EXAMPLE_MAX_ELEMENTS` (32 MB in float32: a small LM's head at batch 32 is ~4 MB; the hook path
      it replaces costs a whole extra weight-gradient GEMM), above it ``None``: callers use the hook path instead,
      unless ``force``, which returns ``"per_example"`` whatever the size.
    """
    size = batch * d_out * width
    if size <= PER_EXAMPLE_MAX_ELEMENTS:
        return "per_example"
    if uniform_scale:
        return "grouped"
    return "per_example" if force or size <= FUSED_PER_EXAMPLE_MAX_ELEMENTS else None


class DomainGradSink:
    """Receiver of :func:`fused_linear`'s backward: computes the layer's weight gradient from per-example (or
    per-domain) products and adds the per-example-scaled ones into per-domain sums as a by-product (R&B, arXiv
    2505.00358, Alg. 1 step 2, without the extra weight-gradient GEMM of :func:`accumulate_domain_grads`).

    :meth:`weight_grad` gets the layer input ``a`` and output gradient ``delta`` (``(B, T, .)``; ``T = 1`` for 2-D
    inputs) and returns the *unscaled* ``(grad_W, grad_b)``, which is what autograd itself would compute:

    * ``mode="per_example"``: one batched matmul gives ``P_i = delta_i^T a_i`` ``(B, d_out, d_in)`` (summed over
      tokens; the bias part is ``sum_t delta_it``); then one small GEMM ``[S; 1^T] @ P`` with
      ``S[d, i] = s_i [domain_i = d]`` gives both the per-domain scaled sums (added into ``sums``; the same as
      ``sums.index_add_(0, domains, P * s[:, None, None])``) and ``grad = sum_i P_i``. Works for any per-example
      scale (``token_mean``).
    * ``mode="grouped"``: rows are gathered in domain order (views, no copy, when the batch is already grouped by
      domain) and each present domain gets one GEMM ``D_d``;
      ``grad = sum_d D_d`` and ``sums[d] += alpha * D_d``. Needs the same scale for all examples (a float
      ``example_scale``, no ``valid`` mask) and one host sync for the group sizes; no per-example tensor (large layers).

    A sink is meant for one forward/backward of the layer (it holds that micro-batch's domain ids and scales).

    Args:
        sums: ``(m, d_out, d_in + include_bias)`` float accumulator (exact, not sketched), updated in place.
        counts: ``(m,)`` example counts, updated in place when the backward runs.
        domains: ``(B,)`` domain ids in ``0..m-1``.
        example_scale: ``(B,)`` per-example factor, a float for all, or ``None`` (= 1); as in
            :func:`accumulate_domain_grads`.
        valid: optional ``(B,)`` bool mask; ``False`` examples add nothing and are not counted.
        include_bias: whether ``sums`` has the bias column.
        mode: ``"per_example"`` or ``"grouped"`` (see :func:`fused_accumulation_mode`).

    Attributes:
        calls: how many backward passes this sink has served (0 = the layer's output got no gradient).

    Raises:
        ConfigError: domain ids out of range, an unknown mode, or ``"grouped"`` with non-uniform scales.
    """

    def __init__(self, sums: torch.Tensor, counts: torch.Tensor, domains: torch.Tensor, *,
                 example_scale: torch.Tensor | float | None = None, valid: torch.Tensor | None = None,
                 include_bias: bool = True, mode: str = "per_example") -> None:
        if mode not in ("per_example", "grouped"):
            raise ConfigError(f"mode must be 'per_example' or 'grouped', got {mode!r}.")
        m = sums.shape[0]
        if mode == "grouped" and (isinstance(example_scale, torch.Tensor) or valid is not None):
            raise ConfigError("the grouped fused backward needs one scale for all examples (a float example_scale "
                              "and no valid mask); use mode='per_example' for per-example scales.")
        self.sums, self.counts = sums, counts
        self.include_bias, self.mode = bool(include_bias), mode
        self.calls = 0
        self.mix: torch.Tensor | None = None
        domains = domains.reshape(-1)
        if domains.device != sums.device or domains.dtype != torch.long:
            domains = domains.to(device=sums.device, dtype=torch.long)
        keep = None if valid is None else valid.reshape(-1).to(device=sums.device)
        self.domains = domains
        self.per_domain = _checked_domain_counts(domains, m, keep)
        scale, self.alpha = _example_factors(example_scale, keep, sums.device, torch.float64)
        if mode == "per_example":
            # (m + 1, B): row d holds the factors of domain d's examples, the last row ones (autograd's gradient)
            b = domains.numel()
            if scale is None:
                weights = torch.full((b,), self.alpha, dtype=torch.float64, device=sums.device)
            else:
                weights = scale if self.alpha == 1.0 else scale * self.alpha
            mix = torch.zeros(m + 1, b, dtype=torch.float64, device=sums.device)
            mix[:m].scatter_(0, domains.view(1, b), weights.view(1, b))
            mix[m] = 1.0
            self.mix = mix

    def weight_grad(self, a: torch.Tensor, delta: torch.Tensor, *,
                    bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Accumulate this backward's per-domain sums; return the unscaled ``(grad_W, grad_b)`` of the batch loss.

        Args:
            a: layer input ``(B, T, d_in)`` (``T = 1`` for 2-D inputs).
            delta: output gradient ``(B, T, d_out)``, same dtype as ``a``.
            bias_grad: also return the bias gradient (the layer has a bias); otherwise ``grad_b`` is ``None``.
        """
        b, _, d_in = a.shape
        d_out = delta.shape[-1]
        m = self.sums.shape[0]
        if b != self.domains.numel():
            raise ConfigError(f"the tracked layer saw {b} examples but the batch has {self.domains.numel()} domain "
                              f"ids; track a layer applied once per example.")
        if tuple(self.sums.shape[1:]) != (d_out, d_in + int(self.include_bias)):
            raise ConfigError(f"accumulator has per-domain shape {tuple(self.sums.shape[1:])}, the layer gives "
                              f"{(d_out, d_in + int(self.include_bias))}; check include_bias.")
        column = bias_grad or self.include_bias  # the bias gradient (per example: delta summed over tokens)
        sums_w = self.sums[:, :, :d_in] if self.include_bias else self.sums
        self.calls += 1
        grad_b = None
        if self.mode == "per_example":
            mix = self.mix if self.mix.dtype == a.dtype and self.mix.device == a.device else \
                self.mix.to(device=a.device, dtype=a.dtype)
            # rows 0..m-1 of `both`: the scaled per-domain sums of the per-example gradients P_i = delta_i^T a_i
            # (summed over tokens); row m: their plain sum = autograd's weight gradient. P is made by batched matmuls
            # over chunks of examples and reduced at once (on the CPU a chunk stays in cache: writing the whole
            # (B, d_out, d_in) tensor to memory and reading it back costs more than the extra calls). The bias column
            # is kept out of the matmul: an odd width slows the GEMM more than the separate token sum costs.
            chunk = b if a.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // (d_out * d_in * a.element_size()))
            both = (torch.empty if b else torch.zeros)(m + 1, d_out * d_in, dtype=a.dtype, device=a.device)
            for lo in range(0, b, chunk):
                hi = min(b, lo + chunk)
                per = torch.bmm(delta[lo:hi].transpose(1, 2), a[lo:hi]).reshape(hi - lo, d_out * d_in)
                if lo == 0:
                    torch.mm(mix[:, :hi], per, out=both)
                else:
                    both.addmm_(mix[:, lo:hi], per)
            grad_w = both[m].reshape(d_out, d_in)
            sums_w.add_(both[:m].reshape(m, d_out, d_in).to(self.sums.dtype))
            if column:
                both_b = mix @ delta.sum(1)  # (m + 1, d_out)
                grad_b = both_b[m]
                if self.include_bias:
                    self.sums[:, :, d_in].add_(both_b[:m].to(self.sums.dtype))
        else:
            grad_w = torch.zeros(d_out, d_in, dtype=a.dtype, device=a.device)
            grad_b = torch.zeros(d_out, dtype=a.dtype, device=a.device) if column else None
            domains = self.domains.to(a.device)
            sizes, presorted = _host_group_sizes(domains, m, self.per_domain)  # grouped mode has no mask
            for d, rows, a_d in _domain_row_groups(a, delta, domains, sizes, presorted):
                part = rows.T @ a_d
                grad_w.add_(part)
                sums_w[d].add_(part.to(self.sums.dtype), alpha=self.alpha)
                if column:
                    part_b = rows.sum(0)
                    grad_b.add_(part_b)
                    if self.include_bias:
                        self.sums[d, :, d_in].add_(part_b.to(self.sums.dtype), alpha=self.alpha)
        self.counts.add_(self.per_domain.to(self.counts.device, self.counts.dtype))
        return grad_w, (grad_b if bias_grad else None)


class FusedLinearFunction(torch.autograd.Function):
    """``F.linear(x, W, b)`` whose backward takes the weight gradient from a :class:`DomainGradSink`.

    Forward saves ``x`` and ``W`` (as ``F.linear`` does). Backward: ``grad_x = grad_y @ W`` (only if needed) and
    ``(grad_W, grad_b) = sink.weight_grad(x, grad_y)``, i.e. the per-example products of R&B's accumulation
    (arXiv 2505.00358, Appendix E) *are* the weight gradient; autograd does not run its own weight-gradient GEMM.
    Once differentiable (no double backward). Use through :func:`fused_linear`.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, sink: DomainGradSink) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.sink = sink
        ctx.has_bias = bias is not None
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_y.matmul(weight) if ctx.needs_input_grad[0] else None
        a, delta = (x.unsqueeze(1), grad_y.unsqueeze(1)) if x.dim() == 2 else (x, grad_y)
        grad_w, grad_b = ctx.sink.weight_grad(a, delta, bias_grad=ctx.has_bias)
        return (grad_x, grad_w if ctx.needs_input_grad[1] else None,
                grad_b if ctx.has_bias and ctx.needs_input_grad[2] else None, None)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 sink: DomainGradSink) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for 2-D ``(B, d_in)`` or 3-D ``(B, T, d_in)`` inputs whose backward adds the
    per-domain sums of per-example gradients into ``sink`` and derives the weight gradient from them (exact
    accumulation at about the cost of the ordinary backward; see :class:`DomainGradSink`).

    The gradients of ``x``, ``weight`` and ``bias`` equal plain autograd's up to float summation order (per-example
    products are summed over tokens, then over examples). A weight shared with other modules (tied embeddings) still
    gets its full gradient: autograd adds this function's contribution to the others'.

    Raises:
        ConfigError: other input ranks, or dtypes that differ between ``x`` and ``weight``.
    """
    if x.dim() not in (2, 3):
        raise ConfigError(f"fused_linear needs (B, d) or (B, T, d) inputs; got shape {tuple(x.shape)}.")
    if x.dtype != weight.dtype:
        raise ConfigError(f"fused_linear: input dtype {x.dtype} differs from the weight's {weight.dtype} (autocast "
                          f"is not handled; use the hook path).")
    return FusedLinearFunction.apply(x, weight, bias, sink)


class _FusedForward:
    """Instance-level ``forward`` of a tracked ``nn.Linear``: per call, ``planner(module, x)`` returns a sink (run
    :func:`fused_linear`) or ``None`` (run ``nn.Linear.forward``). Copies (``copy.deepcopy``, pickle) drop the planner
    and behave like a plain ``nn.Linear``."""

    def __init__(self, module: torch.nn.Linear, planner: Callable[[torch.nn.Module, torch.Tensor],
                                                                  DomainGradSink | None] | None) -> None:
        self.module = module
        self.planner = planner

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Linear.forward's argument name)
        module = self.module
        sink = self.planner(module, input) if self.planner is not None else None
        if sink is None:
            return torch.nn.Linear.forward(module, input)
        return FusedLinearFunction.apply(input, module.weight, module.bias, sink)

    def __getstate__(self) -> dict[str, Any]:
        return {"module": self.module, "planner": None}


class FusedForwardHandle:
    """Returned by :func:`install_fused_forward`; :meth:`remove` restores the module's class ``forward``."""

    def __init__(self, module: torch.nn.Linear, forward: _FusedForward) -> None:
        self.module, self._forward = module, forward

    def remove(self) -> None:
        """Restore ``nn.Linear.forward`` (idempotent; leaves a ``forward`` someone else installed since alone)."""
        if self.module is not None and self.module.__dict__.get("forward") is self._forward:
            del self.module.forward
        self._forward.planner = None
        self.module = None


def install_fused_forward(module: torch.nn.Linear,
                          planner: Callable[[torch.nn.Module, torch.Tensor], DomainGradSink | None]
                          ) -> FusedForwardHandle:
    """Route ``module``'s forward through :func:`fused_linear` whenever ``planner(module, x)`` returns a sink.

    Sets an instance attribute ``forward`` (``nn.Module.__call__`` looks it up before the class method), so forward
    pre-hooks and hooks keep running around it, ``state_dict`` and parameters are untouched, and ``type(module)`` stays
    ``nn.Linear``. Undo with the returned handle's ``remove()``.

    Raises:
        ConfigError: ``module`` is not exactly an ``nn.Linear`` (a subclass may override ``forward``), or it already
            has an instance-level ``forward``.
    """
    if type(module) is not torch.nn.Linear:
        raise ConfigError(f"install_fused_forward needs an nn.Linear (exactly), got {type(module).__name__}.")
    if "forward" in module.__dict__:
        raise ConfigError("the module already has an instance-level forward (patched by another tool); use the "
                          "hook path.")
    fwd = _FusedForward(module, planner)
    module.forward = fwd
    return FusedForwardHandle(module, fwd)


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
