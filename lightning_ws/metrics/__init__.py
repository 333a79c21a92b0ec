"""torchmetrics Metrics of lightning_ws.

Classes are imported on first use (``from lightning_ws.metrics import ExpectedSquaredDistance``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ExpectedSquaredDistance": "lightning_ws.metrics.loki",
    "FullSpaceAccuracy": "lightning_ws.metrics.loki",
    "SeenUnseenBreakdown": "lightning_ws.metrics.loki",
    "SelectionAccuracy": "lightning_ws.metrics.weaver",
    "PassAtK": "lightning_ws.metrics.weaver",
    "MajorityAtK": "lightning_ws.metrics.weaver",
    "ScoreAUROC": "lightning_ws.metrics.weaver",
    "TieRate": "lightning_ws.metrics.weaver",
    "ZeroShotAccuracy": "lightning_ws.metrics.clip",
    "RetrievalRecallAtK": "lightning_ws.metrics.clip",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
