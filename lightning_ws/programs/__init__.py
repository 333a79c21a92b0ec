"""LLM-written labeling programs (ScriptoriumWS arXiv 2502.12366, Alchemist arXiv 2407.11004), Lightning-free core.

* :mod:`~lightning_ws.programs.prompts`: versioned YAML prompt templates (ScriptoriumWS tiers, Alchemist) and task
  files; :func:`render_prompt`.
* :mod:`~lightning_ws.programs.clients`: OpenAI-compatible, local ``transformers`` and replay clients, with a
  content-addressed response cache, token/cost accounting, retries and a concurrency limit.
* :mod:`~lightning_ws.programs.generate`: code extraction, static checks, :class:`ProgramGenerator`.
* :mod:`~lightning_ws.programs.store`: :class:`ProgramStore` (one ``.py`` + one JSON per program).
* :mod:`~lightning_ws.programs.sandbox`: :class:`ProgramSandbox`, the only place generated code runs.
* :mod:`~lightning_ws.programs.apply`: programs -> label matrix (cached), de-duplication, dev filtering,
  human / generated / joint / cascade combination.
* :mod:`~lightning_ws.programs.concepts`: Alchemist's concept-score route (MiniLM or CLIP similarities).

The Lightning side is :class:`lightning_ws.datamodules.programs.ProgramLabelDataModule`; the command line is
``lightning-ws programs``. Names are imported on first use.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PromptTemplate": "lightning_ws.programs.prompts",
    "TaskSpec": "lightning_ws.programs.prompts",
    "RenderedPrompt": "lightning_ws.programs.prompts",
    "load_template": "lightning_ws.programs.prompts",
    "load_task": "lightning_ws.programs.prompts",
    "render_prompt": "lightning_ws.programs.prompts",
    "render_prior_prompt": "lightning_ws.programs.prompts",
    "Completion": "lightning_ws.programs.clients",
    "PriceTable": "lightning_ws.programs.clients",
    "ResponseCache": "lightning_ws.programs.clients",
    "ChatClient": "lightning_ws.programs.clients",
    "OpenAIChatClient": "lightning_ws.programs.clients",
    "TransformersClient": "lightning_ws.programs.clients",
    "ReplayClient": "lightning_ws.programs.clients",
    "make_client": "lightning_ws.programs.clients",
    "extract_code": "lightning_ws.programs.generate",
    "check_program": "lightning_ws.programs.generate",
    "ProgramGenerator": "lightning_ws.programs.generate",
    "recorded_programs": "lightning_ws.programs.generate",
    "Program": "lightning_ws.programs.store",
    "ProgramStore": "lightning_ws.programs.store",
    "ProgramSandbox": "lightning_ws.programs.sandbox",
    "SandboxConfig": "lightning_ws.programs.sandbox",
    "SandboxResult": "lightning_ws.programs.sandbox",
    "SandboxError": "lightning_ws.programs.sandbox",
    "apply_programs": "lightning_ws.programs.apply",
    "dedup_programs": "lightning_ws.programs.apply",
    "filter_programs": "lightning_ws.programs.apply",
    "combine_sources": "lightning_ws.programs.apply",
    "label_metrics": "lightning_ws.programs.apply",
    "ConceptScorer": "lightning_ws.programs.concepts",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
