"""PAJAMA: LLM-written judge programs, their aggregation, bias checks and a distilled reward model
(Huang, Vishwakarma, Sala, arXiv 2506.10403), Lightning-free core.

* :mod:`~lightning_ws.pajama.data`: preference pairs (shipped ``hh_rlhf``, ``pandalm_test``, ``llmbar``), splits.
* :mod:`~lightning_ws.pajama.scoring`: the hand-written judge programs, scoring pairs in the sandbox.
* :mod:`~lightning_ws.pajama.synth`: :class:`ProgramSynthesizer` (rubric x variant prompts through any client).
* :mod:`~lightning_ws.pajama.aggregate` / :mod:`~lightning_ws.pajama.pipeline`: normalisation, thresholds,
  selection, swap-symmetric aggregation; :class:`ProgramJudgePipeline`, :class:`ProgramJudge`.
* :mod:`~lightning_ws.pajama.bias`: :class:`BiasEvaluator`; :mod:`~lightning_ws.pajama.llm_judge`: :class:`LLMJudge`.
* :mod:`~lightning_ws.pajama.distill`: Bradley-Terry loss, pairwise accuracy, program labels for distillation.
* :mod:`~lightning_ws.pajama.report`: :func:`compare_judges` (what the benchmark and the CLI print).

Lightning side: :class:`lightning_ws.modules.RewardModel`, :class:`lightning_ws.datamodules.PreferenceDataModule`;
command line: ``lightning-ws pajama``. Names are imported on first use.
"""

from lightning_ws._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PreferencePairs": "lightning_ws.pajama.data",
    "load_preferences": "lightning_ws.pajama.data",
    "split_by_id": "lightning_ws.pajama.data",
    "RUBRICS": "lightning_ws.pajama.scoring",
    "handwritten_judges": "lightning_ws.pajama.scoring",
    "score_pairs": "lightning_ws.pajama.scoring",
    "PairScores": "lightning_ws.pajama.scoring",
    "ProgramSynthesizer": "lightning_ws.pajama.synth",
    "render_judge_prompt": "lightning_ws.pajama.synth",
    "RobustNormalizer": "lightning_ws.pajama.aggregate",
    "ThresholdTuner": "lightning_ws.pajama.aggregate",
    "PairwiseAggregator": "lightning_ws.pajama.aggregate",
    "select_programs": "lightning_ws.pajama.aggregate",
    "pairwise_votes": "lightning_ws.pajama.aggregate",
    "pairwise_metrics": "lightning_ws.pajama.aggregate",
    "JudgeConfig": "lightning_ws.pajama.pipeline",
    "REFERENCE_CONFIG": "lightning_ws.pajama.pipeline",
    "ProgramJudgePipeline": "lightning_ws.pajama.pipeline",
    "ProgramJudge": "lightning_ws.pajama.pipeline",
    "BiasEvaluator": "lightning_ws.pajama.bias",
    "PERTURBATIONS": "lightning_ws.pajama.bias",
    "length_judge": "lightning_ws.pajama.bias",
    "bias_table_rows": "lightning_ws.pajama.bias",
    "LLMJudge": "lightning_ws.pajama.llm_judge",
    "bradley_terry_loss": "lightning_ws.pajama.distill",
    "program_labels": "lightning_ws.pajama.distill",
    "compare_judges": "lightning_ws.pajama.report",
    "format_rows": "lightning_ws.pajama.report",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
