"""LightningModules of lightning_ws.

Classes are imported on first use (``from lightning_ws.modules import TextClassifier``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TextClassifier": "lightning_ws.modules.text_classifier",
    "LokiClassifier": "lightning_ws.modules.loki",
    "GradMimicClassifier": "lightning_ws.modules.gradmimic",
    "PeftSequenceClassifier": "lightning_ws.modules.more",
    "WeaverCrossEncoder": "lightning_ws.modules.weaver",
    "ImageClassifier": "lightning_ws.modules.image_classifier",
    "CLIPModule": "lightning_ws.modules.clip",
    "FilterSignalModule": "lightning_ws.modules.clip",
    "RewardModel": "lightning_ws.modules.reward_model",
    "PairwiseAccuracy": "lightning_ws.modules.reward_model",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
