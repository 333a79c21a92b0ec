"""LightningModules of lightning_ws."""

from lightning_ws.modules.text_classifier import TextClassifier

__all__ = ["TextClassifier"]
