"""R&B: Regroup + Balance data mixing (Ge et al., arXiv 2505.00358), Lightning-free core.

* :class:`SemanticRegrouper` / :class:`RegroupResult`: k-means domains from embeddings, ``p_eval``, persisted without
  pickle.
* :class:`DomainMixtureSampler`: seeded domain-then-example sampler with a shared-memory, mutable mixture.
* :mod:`lightning_ws.rnb.accumulate`: per-domain final-layer gradient accumulation from hooks (exact or Kronecker
  sketch); :mod:`lightning_ws.rnb.fused`: the same sums fused into the layer's own backward (:func:`fused_linear`);
  :mod:`lightning_ws.rnb.mixture`: the Gram matrix and the R&B / multiplicative mixture updates
  (:mod:`lightning_ws.rnb.functional` re-exports all three).

The Lightning pieces live in :mod:`lightning_ws.callbacks.rnb` (``RnBCallback``) and
:mod:`lightning_ws.datamodules.rnb` (``MixtureDataModule``).
"""

from lightning_ws.rnb.accumulate import (
    KroneckerSketch,
    accumulate_domain_grads,
    per_example_linear_grads,
    token_mean_scale,
)
from lightning_ws.rnb.fused import DomainGradSink, fused_accumulation_mode, fused_linear, install_fused_forward
from lightning_ws.rnb.mixture import (
    apply_prob_floor,
    domain_gram,
    mixture_entropy,
    multiplicative_update,
    rnb_scores,
    rnb_update,
    validate_mixture,
)
from lightning_ws.rnb.regroup import (
    MiniLMEmbedder,
    RegroupResult,
    SemanticRegrouper,
    TfidfSvdEmbedder,
    assign_to_centroids,
    embed,
    kmeans_fit,
)
from lightning_ws.rnb.sampler import DomainMixtureSampler

__all__ = [
    "DomainGradSink",
    "DomainMixtureSampler",
    "KroneckerSketch",
    "MiniLMEmbedder",
    "RegroupResult",
    "SemanticRegrouper",
    "TfidfSvdEmbedder",
    "accumulate_domain_grads",
    "apply_prob_floor",
    "assign_to_centroids",
    "domain_gram",
    "embed",
    "fused_accumulation_mode",
    "fused_linear",
    "install_fused_forward",
    "kmeans_fit",
    "mixture_entropy",
    "multiplicative_update",
    "per_example_linear_grads",
    "token_mean_scale",
    "rnb_scores",
    "rnb_update",
    "validate_mixture",
]
