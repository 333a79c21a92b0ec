"""Lightning datamodules of lightning_ws."""
