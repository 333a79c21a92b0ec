"""Prompt templates for program generation: ScriptoriumWS tiers and Alchemist's template, as versioned YAML.

A *template* (``lightning_ws/programs/templates/*.yaml``) holds the wording and the block order; a *task file*
(``lightning_ws/programs/tasks/*.yaml``, or any WRENCH-format folder plus a YAML of your own) holds what is specific
to a data set: class names, the item being labelled, descriptions, heuristics, example labeling functions and how
to draw labelled examples. :func:`render_prompt` combines them into the system and user messages; the rendered
prompt and the template's name and version are stored with every generated program.

ScriptoriumWS (arXiv 2502.12366) tiers are cumulative: T1 general, T2 + task description, T3 + human heuristics,
T4 + example labeling functions, T5 + labelled examples. Examples for T5 come from the *validation* split only
(never test): per class, ``random.Random(seed).sample`` of the class's ids sorted as integers, shown alternately in
``class_order``. Alchemist (arXiv 2407.11004) adds an optional prior-knowledge query whose answer is prepended to
the program prompt.

Example::

    task = load_task("youtube")
    p = render_prompt(load_template("scriptoriumws"), task, tier="T3_human_heuristics")
    p.system, p.user, p.prompt_id, p.template_version
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_ws.errors import ConfigError, DataFileNotFoundError

__all__ = ["TEMPLATE_DIR", "TASK_DIR", "PromptTemplate", "TaskSpec", "RenderedPrompt", "load_template", "load_task",
           "render_prompt", "render_prior_prompt", "class_phrase"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TASK_DIR = Path(__file__).resolve().parent / "tasks"


def _read_yaml(name_or_path: str | Path, folder: Path, what: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in folder.glob("*.yaml"))
        raise DataFileNotFoundError(f"{what} {str(name_or_path)!r} not found (looked for {path}). Use a shipped one "
                                    f"({', '.join(shipped)}) or the path of a YAML file.")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping.")
    return data, str(path)


@dataclass
class PromptTemplate:
    """A versioned prompt template (see the shipped YAML files for the fields)."""

    name: str
    version: int
    family: str
    system: str
    blocks: list[dict[str, Any]]
    joiner: str = "\n\n"
    tiers: dict[str, int] = field(default_factory=dict)
    prior_types: dict[str, str] = field(default_factory=dict)
    prior_system: str = ""
    prior_user: str = ""
    prior_intro: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ConfigError(f"template {self.name!r} has no blocks.")
        for b in self.blocks:
            if "id" not in b or "text" not in b:
                raise ConfigError(f"template {self.name!r}: every block needs 'id' and 'text', got {b!r}.")


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """Load ``scriptoriumws`` / ``alchemist`` (shipped) or a template YAML file of your own."""
    data, path = _read_yaml(name_or_path, TEMPLATE_DIR, "prompt template")
    known = {f for f in PromptTemplate.__dataclass_fields__ if f != "path"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown template fields {sorted(unknown)}; known: {sorted(known)}.")
    for req in ("name", "version", "family", "system", "blocks"):
        if req not in data:
            raise ConfigError(f"{path}: missing template field {req!r}.")
    return PromptTemplate(**data, path=path)


@dataclass
class TaskSpec:
    """What a prompt needs to know about a data set.

    Attributes:
        name: task name (``youtube``); also the WRENCH data set used for labelled examples unless ``dataset`` says.
        classes: class id -> class name.
        class_order: the order classes are named in prose (default: by id).
        items / item: the things labelled, plural phrase and singular noun (``comments on YouTube`` / ``comment``).
        task_title: e.g. ``Youtube spam classification``.
        signature / entry: the function signature shown and the entry point programs must define.
        description, heuristics, heuristics_header, example_lfs: tier blocks (empty = not available).
        examples: ``{"split": "valid", "per_class": 4, "seed": 0}`` for the labelled-examples tier.
        alchemist: overrides used by the Alchemist template (the reference's verbatim wording).
        dataset: WRENCH name or folder the examples are drawn from (default: ``name``).
    """

    name: str
    classes: dict[int, str]
    items: str
    item: str
    task_title: str
    signature: str = "def label(text: str) -> int:"
    entry: str = "label"
    class_order: list[int] | None = None
    description: str = ""
    heuristics: str = ""
    heuristics_header: str = "Labeling heuristics from domain experts:"
    example_lfs: str = ""
    examples: dict[str, Any] = field(default_factory=lambda: {"split": "valid", "per_class": 4, "seed": 0})
    alchemist: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    version: int = 1
    source: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        self.classes = {int(k): str(v) for k, v in self.classes.items()}
        if sorted(self.classes) != list(range(len(self.classes))) or len(self.classes) < 2:
            raise ConfigError(f"task {self.name!r}: classes must map 0..k-1 (k >= 2) to names, got {self.classes}.")
        if self.class_order is None:
            self.class_order = sorted(self.classes)
        if sorted(self.class_order) != sorted(self.classes):
            raise ConfigError(f"task {self.name!r}: class_order {self.class_order} must list every class id once.")
        split = self.examples.get("split", "valid")
        if split == "test":
            raise ConfigError(f"task {self.name!r}: labelled examples must never come from the test split; use "
                              f"'valid' (or 'train').")

    @property
    def num_classes(self) -> int:
        """``k``."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, for storing with a program."""
        return asdict(self)


def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load a shipped task (``youtube``, ``sms``, ``trec``) or a task YAML file of your own."""
    data, path = _read_yaml(name_or_path, TASK_DIR, "task file")
    known = set(TaskSpec.__dataclass_fields__) - {"path"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{path}: unknown task fields {sorted(unknown)}; known: {sorted(known)}.")
    try:
        return TaskSpec(**data, path=path)
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None


def class_phrase(names: list[str], last: str = "or", comma_before_last: bool = False) -> str:
    """``spam or ham``; ``a, b or c``; with ``comma_before_last``: ``spam, and ham``."""
    if len(names) == 1:
        return names[0]
    sep = ", " + last + " " if comma_before_last else " " + last + " "
    return ", ".join(names[:-1]) + sep + names[-1]


@dataclass
class RenderedPrompt:
    """A rendered prompt and where it came from (stored with every program)."""

    system: str
    user: str
    prompt_id: str
    template: str
    template_version: int
    family: str
    task: str
    example_ids: list[str] = field(default_factory=list)
    skipped_blocks: list[str] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        """OpenAI chat messages."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _draw_examples(task: TaskSpec, data: Any | None) -> tuple[str, list[str]]:
    cfg = task.examples
    per_class = int(cfg.get("per_class", 4))
    seed = int(cfg.get("seed", 0))
    split = cfg.get("split", "valid")
    if data is None:
        from lightning_ws.data import load_wrench

        data = load_wrench(task.dataset or task.name, split)
    if getattr(data, "split", split) == "test":
        raise ConfigError("labelled examples must never come from the test split.")
    chosen: dict[int, list[int]] = {}
    rng = random.Random(seed)  # one generator, classes drawn in id order (the recorded prompts' procedure)
    for c in sorted(task.class_order):
        idx = sorted((i for i in range(len(data.ids)) if int(data.labels[i]) == c), key=lambda i: int(data.ids[i])
                     if str(data.ids[i]).isdigit() else str(data.ids[i]))
        pick = rng.sample(idx, min(per_class, len(idx)))
        chosen[c] = sorted(pick, key=lambda i: int(data.ids[i]) if str(data.ids[i]).isdigit() else str(data.ids[i]))
    order = sorted(task.class_order)  # shown alternately, by class id
    lines, ids, n = [], [], 0
    for r in range(per_class):
        for c in order:
            if r < len(chosen[c]):
                i = chosen[c][r]
                n += 1
                text = str(data.texts[i])
                lines.append(f'Example {n}: {task.item}: "{text}" -> {task.classes[c]} ({c})')
                ids.append(str(data.ids[i]))
    return "\n".join(lines), ids


def _fields(task: TaskSpec, *, alchemist: bool) -> dict[str, Any]:
    over = task.alchemist if alchemist else {}
    names = [task.classes[c] for c in task.class_order]
    item = over.get("item", task.item)
    f: dict[str, Any] = {
        "task_title": over.get("task_title", task.task_title),
        "items": over.get("items", task.items),
        "item": item,
        "prior_items": over.get("prior_items", over.get("items", task.items)),
        "class_list": class_phrase(names),
        "class_list_and": class_phrase(names, "and", comma_before_last=True),
        "signature": over.get("signature", task.signature),
        "description": task.description,
        "heuristics": task.heuristics,
        "heuristics_header": task.heuristics_header,
        "example_lfs": task.example_lfs,
        "label_legend": ", ".join(f"{task.classes[c].upper()} = {c}" for c in task.class_order),
        "prior_question": over.get("prior_question", ""),
    }
    if "instruction_lines" in over:
        f["instruction_lines"] = over["instruction_lines"]
    else:
        lines = [f"If the {item} is {task.classes[c]}, the function returns {c}." for c in task.class_order]
        lines.append(f"If the {item} cannot be determined as {class_phrase(names)}, the function returns -1.")
        f["instruction_lines"] = "\n".join(lines)
    return f


def _fill(text: str, fields: Mapping[str, Any], where: str) -> str:
    try:
        return text.format(**fields)
    except KeyError as err:
        raise ConfigError(f"{where}: unknown field {err} in the template text; available: {sorted(fields)}.") from None


def render_prompt(template: PromptTemplate, task: TaskSpec, *, tier: str | int | None = None,
                  prior: str | None = None, examples_data: Any | None = None,
                  skip_missing: bool = False) -> RenderedPrompt:
    """Render the program-synthesis prompt.

    Args:
        template: a :class:`PromptTemplate`.
        task: a :class:`TaskSpec`.
        tier: ScriptoriumWS tier name (``T3_human_heuristics``) or number; blocks of higher tiers are left out.
            Templates without tiers ignore it.
        prior: Alchemist prior knowledge to prepend (the answer of :func:`render_prior_prompt`'s query).
        examples_data: a :class:`~lightning_ws.data.WrenchSplit` to draw labelled examples from (default: the
            task's ``examples.split`` of its data set; never the test split).
        skip_missing: leave out blocks whose task field is empty (recorded in ``skipped_blocks``) instead of
            raising.

    Raises:
        ConfigError: an unknown tier, a block whose task field is empty, or a test split for examples.
    """
    alch = template.family == "alchemist"
    fields = _fields(task, alchemist=alch)
    level = 10**6
    prompt_id = template.name
    if template.tiers:
        if tier is None:
            tier = max(template.tiers, key=lambda t: template.tiers[t])
        if isinstance(tier, int) or str(tier).isdigit():
            match = [t for t, v in template.tiers.items() if v == int(tier)]
            if not match:
                raise ConfigError(f"tier {tier} is not in template {template.name!r} ({template.tiers}).")
            tier = match[0]
        if tier not in template.tiers:
            raise ConfigError(f"unknown tier {tier!r}; template {template.name!r} has {list(template.tiers)}.")
        level = template.tiers[tier]
        prompt_id = str(tier)
    elif alch:
        prompt_id = "alchemist_programs_with_prior" if prior else "alchemist_programs"
    example_ids: list[str] = []
    parts = []
    skipped: list[str] = []
    for b in template.blocks:
        if int(b.get("tier", 1)) > level:
            continue
        empty = [key for key in ("description", "heuristics", "example_lfs")
                 if "{" + key + "}" in b["text"] and not str(fields.get(key, "")).strip()]
        if empty and skip_missing:
            skipped.append(b["id"])
            continue
        if b["id"] == "data_examples":
            fields["data_examples"], example_ids = _draw_examples(task, examples_data)
        if empty:
            raise ConfigError(f"task {task.name!r} has no {empty[0]!r}, which block {b['id']!r} of tier "
                              f"{b.get('tier')} needs; fill it in the task file, use a lower tier, or pass "
                              f"skip_missing=True.")
        parts.append(_fill(b["text"], fields, f"template {template.name} block {b['id']}"))
    user = template.joiner.join(parts)
    if prior:
        if not template.prior_intro:
            raise ConfigError(f"template {template.name!r} has no prior_intro; it cannot take prior knowledge.")
        user = _fill(template.prior_intro, {"prior": prior}, template.name) + template.joiner + user
    return RenderedPrompt(system=_fill(template.system, fields, template.name), user=user, prompt_id=prompt_id,
                          template=template.name, template_version=int(template.version), family=template.family,
                          task=task.name, example_ids=example_ids, skipped_blocks=skipped)


def render_prior_prompt(template: PromptTemplate, task: TaskSpec, prior_type: str = "heuristics") -> RenderedPrompt:
    """Alchemist's prior-knowledge query (stage 1): ``prior_type`` in the template's ``prior_types``."""
    if not template.prior_user:
        raise ConfigError(f"template {template.name!r} has no prior-knowledge prompt.")
    if prior_type not in template.prior_types:
        raise ConfigError(f"unknown prior_type {prior_type!r}; choose from {sorted(template.prior_types)}.")
    fields = _fields(task, alchemist=True)
    fields["prior_type"] = template.prior_types[prior_type]
    return RenderedPrompt(system=_fill(template.prior_system, fields, template.name),
                          user=_fill(template.prior_user, fields, template.name), prompt_id="alchemist_prior_knowledge",
                          template=template.name, template_version=int(template.version), family=template.family,
                          task=task.name)
