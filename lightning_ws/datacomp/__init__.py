"""DataComp-style data curation (Lightning-free core): shards, a noisy pool with known truth, filter signals and
filter LFs, and the weak-supervision filter ensemble (arXiv 2401.12225, on the DataComp layout of arXiv 2304.14108).

Modules: :mod:`~lightning_ws.datacomp.shards` (webdataset shard I/O and streaming), :mod:`~.pool` (the noisy pool
builder), :mod:`~.filters` (signals, LFs, per-shard caches), :mod:`~.ensemble` (label model -> P(keep) -> uids,
filtered shards), :mod:`~.signals` (the batch-level signal pass used by Lightning ``predict``).
"""
