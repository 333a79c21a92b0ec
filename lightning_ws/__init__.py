"""lightning_ws: PyTorch Lightning extensions for data-centric machine learning.

Subpackages:

* :mod:`lightning_ws.callbacks`, :mod:`lightning_ws.modules`, :mod:`lightning_ws.datamodules`,
  :mod:`lightning_ws.metrics`: thin Lightning classes;
* :mod:`lightning_ws.data`: the real data sets shipped with the package and their typed loaders;
* one Lightning-free core package per method (named after the method), plain torch/numpy.

Importing :mod:`lightning_ws` is cheap: it does not import Lightning, transformers or W&B.
"""

from lightning_ws.errors import LightningWSError

__version__ = "0.1.0"

__all__ = ["LightningWSError", "__version__"]
