"""Pure-torch maths of MoRe (Monarch Rectangular) adapters, arXiv 2408.17383.

The update of one adapted linear layer ``W0 (d_out x d_in)`` is a rectangular Monarch matrix

    dW = crop_{d_out x d_in}( Q . blockdiag(B_1..B_K) . P . blockdiag(A_1..A_K) )

with ``A`` of shape ``(K, r, p)`` (input side), ``B`` of shape ``(K, q, r)`` (output side), ``P`` the stride permutation
that reads the block-major ``K*r`` hidden vector as an ``r x K`` row-major matrix and hands column ``l`` to output
block ``l``, and ``Q`` the output interleave ``y[c*K + l] = z_l[c]``. Inputs are zero-padded to ``K*p`` and outputs
cropped to ``d_out``. Everything here is Lightning-free and computes the update with two batched matmuls; no dense
matrix is materialised in :func:`monarch_apply`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_ws.errors import ConfigError

__all__ = [
    "MonarchShape",
    "monarch_shape",
    "monarch_apply",
    "monarch_delta_weight",
    "monarch_dense_reference",
    "monarch_num_params",
]


@dataclass(frozen=True)
class MonarchShape:
    """Block geometry of one MoRe adapter (arXiv 2408.17383, reference code's ``MonarchLinear``).

    Attributes:
        d_in: input features of the adapted layer.
        d_out: output features of the adapted layer.
        nblocks: number of blocks ``K``.
        blk_r: rank of every block ``r``.
        in_blksz: input block size ``p = ceil(d_in / K)`` (or the user's ``blk_sz``).
        out_blksz: output block size ``q = ceil(p * d_out / d_in)`` (blocks rescaled by the aspect ratio).
    """

    d_in: int
    d_out: int
    nblocks: int
    blk_r: int
    in_blksz: int
    out_blksz: int

    @property
    def a_shape(self) -> tuple[int, int, int]:
        """Shape ``(K, r, p)`` of the input-side factor ``A``."""
        return (self.nblocks, self.blk_r, self.in_blksz)

    @property
    def b_shape(self) -> tuple[int, int, int]:
        """Shape ``(K, q, r)`` of the output-side factor ``B``."""
        return (self.nblocks, self.out_blksz, self.blk_r)

    @property
    def num_params(self) -> int:
        """Exact number of factor entries ``r * (K*p + K*q)``."""
        return self.blk_r * self.nblocks * (self.in_blksz + self.out_blksz)

    @property
    def max_rank(self) -> int:
        """Upper bound of ``rank(dW)``: ``min(K*r, d_in, d_out)``."""
        return min(self.nblocks * self.blk_r, self.d_in, self.d_out)

    @property
    def complete_mixing(self) -> bool:
        """Whether every output group depends on every input block (``r >= K``)."""
        return self.blk_r >= self.nblocks


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}. Pass e.g. {name}=4.")
    return value


def monarch_shape(d_in: int, d_out: int, nblocks: int = 4, blk_r: int = 4, blk_sz: int | None = None) -> MonarchShape:
    """Compute the block geometry of a MoRe adapter (arXiv 2408.17383).

    ``p = ceil(d_in / K)``; when ``blk_sz`` is given, ``p = blk_sz`` and ``K`` is recomputed as ``ceil(d_in / p)``
    (the reference code's rule). The output block size is ``q = ceil(p * d_out / d_in)`` so that ``K * q >= d_out``.

    Args:
        d_in: input features (> 0).
        d_out: output features (> 0).
        nblocks: number of blocks ``K`` (default 4, the paper's robust default). Ignored when ``blk_sz`` is given.
        blk_r: block rank ``r`` (default 4).
        blk_sz: optional input block size; overrides ``nblocks``.

    Returns:
        The :class:`MonarchShape`.

    Raises:
        ConfigError: on non-positive sizes or ``nblocks > d_in`` (empty blocks).
    """
    d_in = _positive_int(d_in, "d_in")
    d_out = _positive_int(d_out, "d_out")
    blk_r = _positive_int(blk_r, "blk_r")
    if blk_sz is not None:
        p = _positive_int(blk_sz, "blk_sz")
        if p > d_in:
            raise ConfigError(f"blk_sz={p} exceeds the layer's input size d_in={d_in}; pass blk_sz <= {d_in}.")
        k = math.ceil(d_in / p)
    else:
        k = _positive_int(nblocks, "nblocks")
        if k > d_in:
            raise ConfigError(f"nblocks={k} exceeds the layer's input size d_in={d_in}; pass nblocks <= {d_in}.")
        p = math.ceil(d_in / k)
    q = math.ceil(p * d_out / d_in)
    return MonarchShape(d_in=d_in, d_out=d_out, nblocks=k, blk_r=blk_r, in_blksz=p, out_blksz=q)


def monarch_num_params(d_in: int, d_out: int, nblocks: int = 4, blk_r: int = 4, blk_sz: int | None = None) -> int:
    """Exact trainable-factor count ``r * (K*p + K*q)`` of one MoRe adapter (arXiv 2408.17383, Sec. 7 of our spec).

    Args:
        d_in: input features.
        d_out: output features.
        nblocks: ``K``.
        blk_r: ``r``.
        blk_sz: optional input block size (overrides ``nblocks``).

    Returns:
        The integer count (biases and heads excluded).
    """
    return monarch_shape(d_in, d_out, nblocks, blk_r, blk_sz).num_params


def monarch_apply(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d_out: int) -> torch.Tensor:
    """Apply the Monarch update ``x @ dW.T`` with two batched matmuls (arXiv 2408.17383).

    Runs in the dtype of ``x`` and the factors (the caller casts; under ``torch.autocast`` the ``bmm`` follows the
    autocast dtype, unlike the reference code, which always casts to bf16 under autocast).

    Args:
        x: input of shape ``(..., d_in)`` with ``d_in <= K * p``.
        a: factor ``A``, shape ``(K, r, p)``.
        b: factor ``B``, shape ``(K, q, r)``.
        d_out: number of outputs to keep (``<= K * q``).

    Returns:
        ``(..., d_out)`` tensor.

    Raises:
        ConfigError: on inconsistent shapes.
    """
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
        raise ConfigError(f"Monarch factors must be A (K, r, p) and B (K, q, r); got A {tuple(a.shape)}, "
                          f"B {tuple(b.shape)}.")
    k, r, p = a.shape
    q = b.shape[1]
    d_in = x.shape[-1]
    if d_in > k * p or d_out > k * q:
        raise ConfigError(f"input size {d_in} / output size {d_out} do not fit the Monarch blocks "
                          f"(K*p = {k * p}, K*q = {k * q}); rebuild the adapter for this layer.")
    lead = x.shape[:-1]
    xs = x.reshape(-1, d_in)
    s = xs.shape[0]
    if d_in < k * p:
        xs = torch.nn.functional.pad(xs, (0, k * p - d_in))
    # stage 1: (K, S, p) @ (K, p, r) -> (K, S, r)
    h = torch.bmm(xs.view(s, k, p).transpose(0, 1), a.transpose(1, 2))
    # stride permutation P: block l of stage 2 gets u_l[a] = h[a*K + l] (h block-major, length K*r)
    if k > 1:
        h = h.transpose(0, 1).reshape(s, r, k).permute(2, 0, 1)
    # stage 2: (K, S, r) @ (K, r, q) -> (K, S, q)
    z = torch.bmm(h, b.transpose(1, 2))
    # output interleave Q: y[c*K + l] = z_l[c]
    y = z.permute(1, 2, 0).reshape(s, q * k) if k > 1 else z.reshape(s, q)
    if d_out < k * q:
        y = y[:, :d_out]
    return y.reshape(*lead, d_out)


def monarch_delta_weight(a: torch.Tensor, b: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """Materialise ``dW`` (``d_out x d_in``) by applying the update to the identity (for merging and tests).

    Args:
        a: factor ``A`` ``(K, r, p)``.
        b: factor ``B`` ``(K, q, r)``.
        d_in: input features.
        d_out: output features.

    Returns:
        ``(d_out, d_in)`` tensor in the factors' dtype.
    """
    eye = torch.eye(d_in, dtype=a.dtype, device=a.device)
    return monarch_apply(eye, a, b, d_out).transpose(0, 1).contiguous()


def monarch_dense_reference(a: torch.Tensor, b: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """Slow dense reference ``crop(Q . blockdiag(B) . P . blockdiag(A))`` built from explicit permutation matrices.

    Used to test :func:`monarch_apply`; it shares no code with it.

    Args:
        a: factor ``A`` ``(K, r, p)``.
        b: factor ``B`` ``(K, q, r)``.
        d_in: input features.
        d_out: output features.

    Returns:
        ``(d_out, d_in)`` tensor.
    """
    k, r, p = a.shape
    q = b.shape[1]
    dt, dev = a.dtype, a.device
    bd_a = torch.block_diag(*a.unbind(0))  # (K r, K p)
    bd_b = torch.block_diag(*b.unbind(0))  # (K q, K r)
    perm_p = torch.zeros(k * r, k * r, dtype=dt, device=dev)  # u = P h, u[l*r + a] = h[a*K + l]
    for l_ in range(k):
        for j in range(r):
            perm_p[l_ * r + j, j * k + l_] = 1
    perm_q = torch.zeros(k * q, k * q, dtype=dt, device=dev)  # y = Q z, y[c*K + l] = z[l*q + c]
    for l_ in range(k):
        for c in range(q):
            perm_q[c * k + l_, l_ * q + c] = 1
    full = perm_q @ bd_b @ perm_p @ bd_a
    return full[:d_out, :d_in]
