"""Hand-written judge programs (not LLM-generated): one ``judging_function(query, response) -> float`` per file,
two variants for each of PAJAMA's ten rubrics. Load them with :func:`lightning_ws.pajama.handwritten_judges`."""
