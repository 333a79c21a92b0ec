"""Lightning callbacks of lightning_ws.

Classes are imported on first use (``from lightning_ws.callbacks import GradMimicCallback``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "GradMimicCallback": "lightning_ws.callbacks.gradmimic",
    "reduce_per_sample_loss": "lightning_ws.callbacks.gradmimic",
    "RnBCallback": "lightning_ws.callbacks.rnb",
    "ParameterMarketCallback": "lightning_ws.callbacks.market",
    "SignalCacheWriter": "lightning_ws.callbacks.datacomp",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
