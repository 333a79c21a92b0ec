"""Parameter markets (Train 'n Trade, arXiv 2312.04740): the Lightning-free core.

* :mod:`lightning_ws.market.store`: offers (safetensors + JSON manifest) and ledgers in a folder or at an fsspec URL;
* :mod:`lightning_ws.market.pricing`: gain from trade, valuation, posted-price and Nash-split pricing;
* :mod:`lightning_ws.market.align`: weight matching (permutation alignment) for feed-forward MLP/conv networks.

The Lightning callback is :class:`lightning_ws.callbacks.market.ParameterMarketCallback`.
"""

from lightning_ws.market.align import (AlignmentNotApplicable, PermutationSpec, apply_permutation, function_preserved,
                                       sequential_permutation_spec, weight_matching)
from lightning_ws.market.pricing import PRICING_RULES, PricingRule, Quote, best_alpha, default_alpha_grid, relative_gain
from lightning_ws.market.store import (MarketStore, Offer, OfferManifest, OwnershipError, StoreIntegrityWarning,
                                       key_shape_fingerprint, new_run_id)

__all__ = [
    "AlignmentNotApplicable", "PermutationSpec", "apply_permutation", "function_preserved",
    "sequential_permutation_spec", "weight_matching", "PRICING_RULES", "PricingRule", "Quote", "best_alpha",
    "default_alpha_grid", "relative_gain", "MarketStore", "Offer", "OfferManifest", "OwnershipError",
    "StoreIntegrityWarning", "key_shape_fingerprint", "new_run_id",
]
