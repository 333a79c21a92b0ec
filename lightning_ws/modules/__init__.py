"""Lightning modules of lightning_ws."""
