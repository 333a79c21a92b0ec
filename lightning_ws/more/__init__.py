"""MoRe: Monarch Rectangular adapters (Tan et al., "MoRe Fine-Tuning with 10x Fewer Parameters", arXiv 2408.17383).

Lightning-free core: the Monarch maths (:mod:`~lightning_ws.more.functional`), the :class:`MoReLinear` layer,
injection into any model's ``nn.Linear`` layers with adapter-only safetensors checkpoints and merging
(:mod:`~lightning_ws.more.inject`), an opt-in PEFT integration (:mod:`~lightning_ws.more.peft_shim`, imported lazily so
this package does not need PEFT) and a resumable (K, r, lr) sweep driver (:mod:`~lightning_ws.more.search`).
"""

from lightning_ws.more.functional import (
    MonarchShape,
    monarch_apply,
    monarch_delta_weight,
    monarch_dense_reference,
    monarch_num_params,
    monarch_shape,
)
from lightning_ws.more.inject import (
    MoReConfig,
    MoReParameterReport,
    MoReTrace,
    default_example_inputs,
    find_target_modules,
    inject_more,
    load_more_adapter,
    load_more_state_dict,
    merge_and_unload,
    merge_more,
    more_layers,
    more_state_dict,
    parameter_report,
    save_more_adapter,
    unmerge_more,
    verify_more_adapters,
)
from lightning_ws.more.layer import IncompleteMixingWarning, MoReLinear
from lightning_ws.more.search import SearchResult, grid, run_search

__all__ = [
    "IncompleteMixingWarning",
    "MoReConfig",
    "MoReLinear",
    "MoReParameterReport",
    "MoReTrace",
    "MonarchShape",
    "SearchResult",
    "default_example_inputs",
    "find_target_modules",
    "grid",
    "inject_more",
    "load_more_adapter",
    "load_more_state_dict",
    "merge_and_unload",
    "merge_more",
    "monarch_apply",
    "monarch_delta_weight",
    "monarch_dense_reference",
    "monarch_num_params",
    "monarch_shape",
    "more_layers",
    "more_state_dict",
    "parameter_report",
    "run_search",
    "save_more_adapter",
    "unmerge_more",
    "verify_more_adapters",
]
