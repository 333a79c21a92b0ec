"""LightningDataModules of lightning_ws.

Classes are imported on first use (``from lightning_ws.datamodules import TextClassificationDataModule``), so importing this package is cheap
and one method's optional dependencies never break another's.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TextClassificationDataModule": "lightning_ws.datamodules.text",
    "TokenizedTextDataset": "lightning_ws.datamodules.text",
    "EpochSeededRandomSampler": "lightning_ws.datamodules.text",
    "ResumableDataLoader": "lightning_ws.datamodules.resumable",
    "PseudoLabelDataModule": "lightning_ws.datamodules.weak_supervision",
    "LokiDigitsDataModule": "lightning_ws.datamodules.loki",
    "NoisyImageDataModule": "lightning_ws.datamodules.gradmimic",
    "MixtureDataModule": "lightning_ws.datamodules.rnb",
    "TensorMixtureDataModule": "lightning_ws.datamodules.rnb",
    "WeaverDistillDataModule": "lightning_ws.datamodules.weaver",
    "ClassSkewedImageDataModule": "lightning_ws.datamodules.images",
    "WebDatasetDataModule": "lightning_ws.datamodules.webdataset",
    "ShardSignalDataModule": "lightning_ws.datamodules.webdataset",
    "PreferenceDataModule": "lightning_ws.datamodules.preferences",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
