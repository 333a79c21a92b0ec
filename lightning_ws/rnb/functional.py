"""Compatibility re-export of R&B's Lightning-free maths (arXiv 2505.00358), now split by concern:

* :mod:`lightning_ws.rnb.mixture`: the Gram matrix, the Balance / multiplicative updates, floors, checks;
* :mod:`lightning_ws.rnb.accumulate`: per-domain sums from a layer's input and output gradient (hooks), the Kronecker
  sketch, token-mean scales;
* :mod:`lightning_ws.rnb.fused`: the fused backward (:func:`fused_linear`, :class:`DomainGradSink`) and the
  instance-level ``forward`` that routes a tracked layer through it.

Import from those modules in new code. Size limits are module attributes of ``accumulate`` / ``fused`` (patch them
there, not here).
"""

from __future__ import annotations

from lightning_ws.rnb.accumulate import (  # noqa: F401 (re-exports, private helpers included for old imports)
    PER_EXAMPLE_MAX_ELEMENTS,
    KroneckerSketch,
    _checked_domain_counts,
    _domain_row_groups,
    _example_factors,
    _flatten_rows,
    _host_group_sizes,
    accumulate_domain_grads,
    per_example_linear_grads,
    token_mean_scale,
)
from lightning_ws.rnb.fused import (  # noqa: F401
    FUSED_DTYPES,
    FUSED_PER_EXAMPLE_MAX_ELEMENTS,
    DomainGradSink,
    FusedForwardHandle,
    FusedLinearFunction,
    _cpu_l2_bytes,
    cpu_chunk_bytes,
    fused_accumulation_mode,
    fused_linear,
    install_fused_forward,
)
from lightning_ws.rnb.mixture import (  # noqa: F401
    _masked_replace,
    _present_scores,
    apply_prob_floor,
    domain_gram,
    gram_stats,
    initial_mixture,
    mixture_entropy,
    multiplicative_update,
    rnb_scores,
    rnb_update,
    validate_mixture,
)

__all__ = [
    "KroneckerSketch",
    "PER_EXAMPLE_MAX_ELEMENTS",
    "FUSED_PER_EXAMPLE_MAX_ELEMENTS",
    "per_example_linear_grads",
    "token_mean_scale",
    "accumulate_domain_grads",
    "FUSED_DTYPES",
    "cpu_chunk_bytes",
    "fused_accumulation_mode",
    "DomainGradSink",
    "FusedLinearFunction",
    "fused_linear",
    "FusedForwardHandle",
    "install_fused_forward",
    "domain_gram",
    "gram_stats",
    "initial_mixture",
    "rnb_scores",
    "rnb_update",
    "multiplicative_update",
    "apply_prob_floor",
    "mixture_entropy",
    "validate_mixture",
]
