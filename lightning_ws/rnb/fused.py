"""R&B's fused accumulation (arXiv 2505.00358, Appendix E without the extra GEMM): an autograd function whose backward
derives a linear layer's weight gradient from the per-example products and hands their per-domain sums to a
:class:`DomainGradSink`, and the instance-level ``forward`` that routes a tracked ``nn.Linear`` through it.

Lightning-free. Nothing is computed at import: the CPU chunk size (half a core's L2 cache, read from sysfs) is read
once, at the first fused backward on the CPU (:func:`cpu_chunk_bytes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from lightning_ws.errors import ConfigError
from lightning_ws.rnb import accumulate as _acc
from lightning_ws.rnb.accumulate import _checked_domain_counts, _domain_row_groups, _example_factors, _host_group_sizes

__all__ = [
    "FUSED_DTYPES",
    "FUSED_PER_EXAMPLE_MAX_ELEMENTS",
    "cpu_chunk_bytes",
    "fused_accumulation_mode",
    "DomainGradSink",
    "FusedLinearFunction",
    "fused_linear",
    "FusedForwardHandle",
    "install_fused_forward",
    "fused_blocker",
    "fused_call_blocker",
]

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


@functools.cache
def cpu_chunk_bytes() -> int:
    """Bytes of per-example gradients per chunk of the fused backward on the CPU: half of a core's L2 cache, so that a
    chunk and the reduction's output stay in cache (512 KB chunks were tuned on an AMD EPYC with 1 MiB L2; on an Intel
    Xeon with 2 MiB L2, 1-1.5 MB chunks are ~7% faster in-step than 512 KB ones and the whole 4 MB tensor at once is
    ~25% slower). Read from sysfs at the first call, cached."""
    return max(1 << 16, _cpu_l2_bytes() // 2)


def fused_accumulation_mode(batch: int, d_out: int, width: int, *, uniform_scale: bool,
                            force: bool = False) -> str | None:
    """Which backward :class:`DomainGradSink` should use for a layer of ``d_out x width`` (bias column included).

    * ``"per_example"`` when the ``(batch, d_out, width)`` per-example tensor has at most
      :data:`~lightning_ws.rnb.accumulate.PER_EXAMPLE_MAX_ELEMENTS` elements (the threshold :func:`accumulate_domain_grads` uses);
    * ``"grouped"`` above it when every example of a domain has the same scale (``uniform_scale``: mean / sum losses);
    * with per-example scales that differ within a domain (e.g. a token mean): ``"per_example"`` up to
      :data:`FUSED_PER_EXAMPLE_MAX_ELEMENTS` (32 MB in float32: a small LM's head at batch 32 is ~4 MB; the hook path
      it replaces costs a whole extra weight-gradient GEMM), above it ``None``: callers use the hook path instead,
      unless ``force``, which returns ``"per_example"`` whatever the size.
    """
    size = batch * d_out * width
    if size <= _acc.PER_EXAMPLE_MAX_ELEMENTS:
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
            chunk = b if a.device.type != "cpu" else max(1, cpu_chunk_bytes() // (d_out * d_in * a.element_size()))
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


def fused_blocker(module: torch.nn.Module, name: str) -> str | None:
    """Why ``module`` cannot be routed through :func:`install_fused_forward` (``None``: it can)."""
    if type(module) is not torch.nn.Linear:
        return f"layer {name!r} is a {type(module).__name__}, not exactly nn.Linear"
    if "forward" in module.__dict__:
        return f"layer {name!r} already has an instance-level forward"
    return None


def fused_call_blocker(x: torch.Tensor, weight: torch.Tensor, *, scaler_active: bool) -> str | None:
    """Why one call of the tracked layer on ``x`` must use the hook path instead (``None``: fused is valid)."""
    if scaler_active:
        return "AMP loss scaling is active (the overflow skip needs the output gradient)"
    if torch.is_autocast_enabled(x.device.type):
        return "autocast is active (the fused backward does not cast)"
    if x.dim() not in (2, 3):
        return f"the layer input has shape {tuple(x.shape)} (fused needs (B, d) or (B, T, d))"
    if x.dtype not in FUSED_DTYPES or weight.dtype != x.dtype:
        return f"input/weight dtypes {x.dtype}/{weight.dtype} (fused needs float32 or float64)"
    return None
