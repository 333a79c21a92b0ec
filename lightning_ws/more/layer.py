"""``MoReLinear``: a frozen ``nn.Linear`` plus a rectangular Monarch update (arXiv 2408.17383)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from lightning_ws.errors import ConfigError
from lightning_ws.more.functional import MonarchShape, monarch_apply, monarch_delta_weight, monarch_shape

__all__ = ["MoReLinear", "IncompleteMixingWarning", "init_monarch_factors_"]


class IncompleteMixingWarning(UserWarning):
    """Raised (as a warning) when ``blk_r < nblocks``: some output groups do not see every input block."""


def init_monarch_factors_(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None) -> None:
    """Initialise MoRe factors in place: ``A`` per-block Kaiming-uniform ``U(-1/sqrt(p), 1/sqrt(p))``, ``B = 0``.

    This is ``nn.Linear``'s default init applied per block (fan_in = ``p``), as in the reference code of
    arXiv 2408.17383; the update is therefore exactly zero at step 0.

    Args:
        a: ``(K, r, p)`` factor.
        b: ``(K, q, r)`` factor.
        generator: random generator for ``A`` (``None`` only when the caller has already seeded one; library code in
            lightning_ws always passes a seeded generator).
    """
    bound = 1.0 / math.sqrt(a.shape[-1])
    with torch.no_grad():
        tmp = torch.empty(a.shape, dtype=torch.float32, device="cpu")
        tmp.uniform_(-bound, bound, generator=generator)
        a.copy_(tmp.to(a.dtype))
        b.zero_()


class MoReLinear(nn.Module):
    """A frozen linear layer with an additive MoRe (Monarch Rectangular) update, arXiv 2408.17383.

    ``y = base(x) + scaling * dropout(dW x)`` where ``dW`` is the rectangular Monarch matrix of
    :mod:`lightning_ws.more.functional`, computed with two batched matmuls (never densely in the forward pass).

    Defaults and choices the paper leaves open (or where we deviate from the reference code):

    * ``B = 0`` and per-block Kaiming-uniform ``A`` (reference init), so the update is 0 at init.
    * Dropout is applied to the adapter **output** (reference behaviour; LoRA drops the input instead).
    * ``scaling = 1.0`` ("no alpha"); change it only for experiments.
    * ``train_bias=False``: the base bias stays frozen. The reference code trains the adapted layers' biases; pass
      ``train_bias=True`` to reproduce its trainable-parameter counts.
    * The adapter math follows the input/autocast dtype (the reference casts to bf16 under any autocast).
    * Train/eval switches **never** merge (the reference merges on ``eval()`` and unmerges on ``train()``, which
      accumulates rounding drift in bf16/fp16). Merging happens only via :meth:`merge`.
    * :meth:`unmerge` restores the saved original weight, so merge + unmerge is bit-exact (the reference subtracts).

    Args:
        base: the ``nn.Linear`` to adapt (its weight is frozen; it is kept, not copied).
        nblocks: number of blocks ``K`` (default 4).
        blk_r: block rank ``r`` (default 4). A warning (:class:`IncompleteMixingWarning`) is issued when ``r < K``.
        dropout: dropout rate on the adapter output (default 0.0).
        blk_sz: optional input block size; overrides ``nblocks`` (``K = ceil(d_in / blk_sz)``).
        scaling: factor on the update (default 1.0 = the paper's "no alpha").
        train_bias: make the base bias trainable (default False).
        generator: seeded ``torch.Generator`` for the init of ``A``; ``None`` uses a generator seeded with 0.
        dtype: dtype of the factors (default: float32 when the base weight is half precision, else the base's).

    Raises:
        ConfigError: when ``base`` is not an ``nn.Linear`` or a size/rate is invalid.

    Example:
        >>> layer = MoReLinear(nn.Linear(16, 8), nblocks=2, blk_r=2)
        >>> layer(torch.randn(3, 16)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        base: nn.Linear,
        nblocks: int = 4,
        blk_r: int = 4,
        dropout: float = 0.0,
        blk_sz: int | None = None,
        *,
        scaling: float = 1.0,
        train_bias: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"MoReLinear adapts nn.Linear layers only, got {type(base).__name__}.")
        if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}.")
        if not (isinstance(scaling, (int, float)) and math.isfinite(float(scaling))):
            raise ConfigError(f"scaling must be a finite number, got {scaling!r}.")
        self.shape: MonarchShape = monarch_shape(base.in_features, base.out_features, nblocks, blk_r, blk_sz)
        if not self.shape.complete_mixing:
            warnings.warn(
                f"MoRe blk_r={self.shape.blk_r} < nblocks={self.shape.nblocks}: incomplete mixing, each output group "
                f"sees only {self.shape.blk_r} of {self.shape.nblocks} input blocks (r=1 is a permuted block-diagonal "
                "update). Use blk_r >= nblocks for full Monarch mixing.",
                IncompleteMixingWarning,
                stacklevel=2,
            )
        self.base_layer = base
        self.scaling = float(scaling)
        self.train_bias = bool(train_bias)
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        w = base.weight
        if dtype is None:
            dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.more_A = nn.Parameter(torch.empty(self.shape.a_shape, dtype=dtype, device=w.device))
        self.more_B = nn.Parameter(torch.empty(self.shape.b_shape, dtype=dtype, device=w.device))
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        init_monarch_factors_(self.more_A, self.more_B, generator)
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(self.train_bias)
        self._merged = False
        self._orig_weight: torch.Tensor | None = None
        # Set by lightning_ws.more.inject.verify_more_adapters: a dict counting forward calls and `.weight` reads during
        # one traced forward (None otherwise), and whether that forward called this layer (None: not verified yet).
        self._trace: dict[str, int] | None = None
        self.verified: bool | None = None

    @property
    def in_features(self) -> int:
        """Input features of the base layer."""
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        """Output features of the base layer."""
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's (frozen) weight, so code that reads ``.weight`` of a linear keeps working.

        Code that reads the weight instead of calling the layer (``F.linear(x, lin.weight)``,
        ``F.multi_head_attention_forward(..., q_proj_weight=...)``, fused q/k/v concatenation) bypasses the adapter;
        :func:`lightning_ws.more.inject.verify_more_adapters` detects and names such layers.
        """
        if self._trace is not None:
            self._trace["weight_reads"] += 1
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias

    @property
    def merged(self) -> bool:
        """Whether the update is currently folded into the base weight."""
        return self._merged

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``scaling * dropout(dW x)`` (no base term), in the factors' (or autocast) dtype."""
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != self.more_A.dtype:
            x = x.to(self.more_A.dtype)
        out = monarch_apply(x, self.more_A, self.more_B, self.shape.d_out)
        out = self.dropout(out)
        return out * self.scaling if self.scaling != 1.0 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the Monarch update (skipped while merged)."""
        if self._trace is not None:
            self._trace["calls"] += 1
        result = self.base_layer(x)
        if self._merged:
            return result
        return result + self.adapter_forward(x).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense ``(d_out, d_in)`` update ``scaling * dW`` in the factors' dtype (dropout off)."""
        dw = monarch_delta_weight(self.more_A, self.more_B, self.shape.d_in, self.shape.d_out)
        return dw * self.scaling if self.scaling != 1.0 else dw

    @torch.no_grad()
    def merge(self, keep_original: bool = True) -> None:
        """Fold the update into the base weight (``W <- W0 + dW``), e.g. for export or fast inference.

        Args:
            keep_original: keep a copy of ``W0`` so :meth:`unmerge` restores it bit-exactly (costs one weight copy).

        Raises:
            RuntimeError: when already merged.
        """
        if self._merged:
            raise RuntimeError("MoReLinear is already merged; call unmerge() first.")
        w = self.base_layer.weight
        self._orig_weight = w.detach().clone() if keep_original else None
        w.copy_((w.to(self.more_A.dtype) + self.delta_weight()).to(w.dtype))
        self._merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: restore the saved ``W0`` (bit-exact), or subtract ``dW`` if no copy was kept.

        Raises:
            RuntimeError: when not merged.
        """
        if not self._merged:
            raise RuntimeError("MoReLinear is not merged; nothing to unmerge.")
        w = self.base_layer.weight
        if self._orig_weight is not None:
            w.copy_(self._orig_weight)
        else:
            w.copy_((w.to(self.more_A.dtype) - self.delta_weight()).to(w.dtype))
        self._orig_weight = None
        self._merged = False

    def merged_linear(self) -> nn.Linear:
        """Return the base ``nn.Linear`` with the update folded in (merges first if needed); for export."""
        if not self._merged:
            self.merge(keep_original=False)
        self._orig_weight = None
        base = self.base_layer
        base.weight.requires_grad_(False)
        return base

    def extra_repr(self) -> str:
        s = self.shape
        return (f"d_in={s.d_in}, d_out={s.d_out}, nblocks={s.nblocks}, blk_r={s.blk_r}, p={s.in_blksz}, "
                f"q={s.out_blksz}, scaling={self.scaling}, train_bias={self.train_bias}, merged={self._merged}")
