"""LightningDataModules of lightning_ws."""

from lightning_ws.datamodules.text import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
