"""Lightning callbacks of lightning_ws."""
