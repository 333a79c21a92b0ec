"""Lightning metrics of lightning_ws."""
