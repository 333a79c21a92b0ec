"""From LLM responses to checked programs: code extraction, static checks, and :class:`ProgramGenerator`.

* :func:`extract_code` takes the code out of a response: fenced blocks (```` ```python ````, ```` ```py ````, bare
  fences, an unclosed fence at a truncated end), several blocks (the first that defines the entry point; else all
  Python blocks joined, for helpers split across blocks), or no fence (the whole answer if it parses, else the
  longest parsable run of lines starting at an ``import``/``def``). The reference takes only the first fenced
  block, or the whole completion (Alchemist ``modes/base_mode.py``), and runs whatever it got.
* :func:`check_program` is static: the code parses, defines the entry point at module level callable with the
  required number of positional arguments, imports only allow-listed modules, and uses no dunder attributes,
  ``__builtins__``/``__import__`` or ``eval``/``exec``/``compile``/``open``/``globals``... A program that fails is
  stored (marked invalid, with the problems) but never applied by default. The checks are a filter for honest
  mistakes; containment of hostile code is the sandbox's job.
* :class:`ProgramGenerator` renders prompts, calls a client (n samples per prompt), extracts and checks the code,
  and adds each program to a :class:`~lightning_ws.programs.store.ProgramStore` with its prompt, model, tokens
  and cost; Alchemist mode first asks for prior knowledge and prepends the answer.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_ws.programs.prompts import PromptTemplate, TaskSpec, render_prior_prompt, render_prompt
from lightning_ws.programs.sandbox import DEFAULT_ALLOWED_IMPORTS
from lightning_ws.programs.store import Program, ProgramStore

__all__ = ["extract_code", "check_program", "CheckResult", "ProgramGenerator", "GenerationReport",
           "RECORDED_PROMPT_IDS", "recorded_programs"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_LANGS = {"", "python", "py", "python3", "py3"}
_BANNED_CALLS = {"eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "input",
                 "breakpoint", "memoryview", "getattr", "setattr", "delattr"}
_MAX_SOURCE = 100_000


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def _defines(code: str, entry: str) -> bool:
    return re.search(r"^def\s+" + re.escape(entry) + r"\s*\(", code, re.M) is not None


def _bound_names(code: str) -> set[str]:
    tree = ast.parse(code)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


def _free_names(code: str) -> set[str]:
    import builtins

    used = {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - _bound_names(code) - set(dir(builtins))


def extract_code(response: str, entry: str = "label") -> str | None:
    """The program in an LLM response, or ``None`` when there is none (see the module docstring)."""
    if not response or not response.strip():
        return None
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    py = [b for lang, b in blocks if lang in _PY_LANGS]
    if py:
        for i, b in enumerate(py):
            if _defines(b, entry) and _parses(b):
                free = _free_names(b)
                helpers = [o for o in py[:i] + py[i + 1:] if _parses(o) and free & _bound_names(o)]
                if helpers:  # helpers (imports, constants, functions) written in other blocks
                    joined = "\n\n".join(x.strip("\n") for x in py if x is b or any(x is h for h in helpers))
                    if _parses(joined):
                        return joined + "\n"
                return b.strip("\n") + "\n"
        joined = "\n\n".join(b.strip("\n") for b in py)
        if _defines(joined, entry) and _parses(joined):
            return joined + "\n"
        for b in py:  # a defining block that does not parse: return it; the checks will say why
            if _defines(b, entry):
                return b.strip("\n") + "\n"
        return py[0].strip("\n") + "\n"
    if _parses(response) and _defines(response, entry):
        return response.strip("\n") + "\n"
    lines = response.splitlines()
    starts = [i for i, ln in enumerate(lines) if re.match(r"(import |from \S+ import |def |[A-Z_]+ = )", ln)]
    for s in starts:
        for e in range(len(lines), s, -1):
            code = "\n".join(lines[s:e])
            if _defines(code, entry) and _parses(code):
                return code.strip("\n") + "\n"
    return None


@dataclass
class CheckResult:
    """Static-check outcome: ``ok``, the ``problems`` found, and the modules imported."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "imports": list(self.imports)}


def _arity_ok(fn: ast.FunctionDef, n_args: int) -> bool:
    a = fn.args
    positional = list(a.posonlyargs) + list(a.args)
    required = len(positional) - len(a.defaults)
    if a.vararg is not None:
        return required <= n_args
    required_kw = [k for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    return required <= n_args <= len(positional) and not required_kw


def check_program(source: str | None, entry: str = "label", *, n_args: int = 1,
                  allowed_imports: Sequence[str] = DEFAULT_ALLOWED_IMPORTS) -> CheckResult:
    """Static checks (see the module docstring); never runs the code."""
    if source is None or not source.strip():
        return CheckResult(False, ["no code found in the response"])
    if len(source) > _MAX_SOURCE:
        return CheckResult(False, [f"code is {len(source)} characters (limit {_MAX_SOURCE})"])
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as err:
        return CheckResult(False, [f"does not parse: {type(err).__name__}: {err}"])
    problems: list[str] = []
    imports: list[str] = []
    allowed = set(allowed_imports)
    fns = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry]
    if not fns:
        problems.append(f"defines no module-level function {entry!r}")
    elif isinstance(fns[-1], ast.AsyncFunctionDef):
        problems.append(f"{entry!r} is async")
    elif not _arity_ok(fns[-1], n_args):
        problems.append(f"{entry!r} cannot be called with {n_args} positional argument(s)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                imports.append(a.name)
                if a.name.split(".")[0] not in allowed:
                    problems.append(f"imports {a.name!r} (not in the allow-list)")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            imports.append(mod)
            if node.level or mod.split(".")[0] not in allowed:
                problems.append(f"imports from {'.' * node.level + mod!r} (not in the allow-list)")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr.endswith("__"):
            problems.append(f"uses the dunder attribute {node.attr!r} (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id != "__name__":
            problems.append(f"uses the name {node.id!r} (line {node.lineno})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BANNED_CALLS:
            problems.append(f"calls {node.func.id}() (line {node.lineno})")
    seen: set[str] = set()
    uniq = [p for p in problems if not (p in seen or seen.add(p))]
    return CheckResult(not uniq, uniq, sorted(set(imports)))


@dataclass
class GenerationReport:
    """What one :meth:`ProgramGenerator.generate` call did."""

    programs: list[Program] = field(default_factory=list)
    responses: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    prior_knowledge: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"responses": self.responses, "valid": self.valid, "invalid": self.invalid,
                "duplicates": self.duplicates, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}


class ProgramGenerator:
    """Ask a code LLM for labeling programs and store them (ScriptoriumWS arXiv 2502.12366, Alchemist 2407.11004).

    Args:
        client: a chat client from :mod:`lightning_ws.programs.clients` (OpenAI-compatible, transformers, replay).
        store: where programs go.
        allowed_imports: the import allow-list of the static checks (the sandbox's list by default).
        temperature, max_tokens: sampling settings (Alchemist: temperature 1.0 in its ScriptoriumWS mode, 0.7 for
            the two-stage modes; ``max_tokens=1000``).
    """

    def __init__(self, client: Any, store: ProgramStore, *, allowed_imports: Sequence[str] = DEFAULT_ALLOWED_IMPORTS,
                 temperature: float = 1.0, max_tokens: int = 1000) -> None:
        self.client = client
        self.store = store
        self.allowed_imports = tuple(allowed_imports)
        self.temperature = temperature
        self.max_tokens = max_tokens

    def generate(self, template: PromptTemplate, task: TaskSpec, *, tier: str | int | None = None, n: int = 6,
                 prior_type: str | None = None, n_args: int = 1) -> GenerationReport:
        """Generate ``n`` programs for one prompt (one tier, or one Alchemist mode) and store them.

        Args:
            template: ``load_template("scriptoriumws")`` or ``load_template("alchemist")``.
            task: the task spec.
            tier: ScriptoriumWS tier (ignored by Alchemist).
            n: samples for the prompt.
            prior_type: Alchemist only: ask for this prior knowledge first (``heuristics``, ``keywords``,
                ``description``, ``examples``) and prepend the answer; ``None`` = no prior stage.
            n_args: positional arguments the entry point must take.
        """
        report = GenerationReport()
        prior = None
        prior_meta: dict[str, Any] = {}
        if prior_type is not None:
            pp = render_prior_prompt(template, task, prior_type)
            pres = self.client.complete(pp.messages(), n=1, temperature=0.7 if template.family == "alchemist"
                                        else self.temperature, max_tokens=self.max_tokens, prompt_id=pp.prompt_id,
                                        task=task.name)
            prior = pres.texts[0] if pres.texts else ""
            report.prior_knowledge = prior
            self._account(report, pres)
            prior_meta = {"prior_prompt": pp.to_dict(), "prior_knowledge": prior, "prior_type": prior_type,
                          "prior_usage": pres.usage, "prior_cost_usd": pres.cost_usd}
        rp = render_prompt(template, task, tier=tier, prior=prior)
        temp = 0.7 if prior is not None else self.temperature
        res = self.client.complete(rp.messages(), n=n, temperature=temp, max_tokens=self.max_tokens,
                                   prompt_id=rp.prompt_id, task=task.name)
        self._account(report, res)
        per = len(res.texts) or 1
        for k, text in enumerate(res.texts):
            code = extract_code(text, task.entry)
            chk = check_program(code, task.entry, n_args=n_args, allowed_imports=self.allowed_imports)
            usage = {key: int(v / per) for key, v in res.usage.items()} if res.usage else {}
            cost = None if res.cost_usd is None else res.cost_usd / per
            if prior_meta and cost is not None and prior_meta.get("prior_cost_usd") is not None:
                cost += prior_meta["prior_cost_usd"] / per
            prog = Program(source=code or "", entry=task.entry, task=task.name, family=template.family,
                           prompt_id=rp.prompt_id, sample=k, model=res.model, system_prompt=rp.system,
                           prompt=rp.user, template=rp.template, template_version=rp.template_version, response=text,
                           usage=usage, cost_usd=cost, checks=chk.to_dict(),
                           extra={"example_ids": rp.example_ids, "client": type(self.client).__name__,
                                  "temperature": temp, **prior_meta})
            stored = self.store.add(prog)
            report.responses += 1
            if stored is not prog and stored.hash == prog.hash and stored.duplicates:
                report.duplicates += 1
            report.programs.append(stored)
            if chk.ok:
                report.valid += 1
            else:
                report.invalid += 1
        return report

    @staticmethod
    def _account(report: GenerationReport, res: Any) -> None:
        report.prompt_tokens += int(res.usage.get("prompt_tokens", 0)) if res.usage else 0
        report.completion_tokens += int(res.usage.get("completion_tokens", 0)) if res.usage else 0
        report.cost_usd += float(res.cost_usd or 0.0)


#: The prompt ids of the shipped recorded responses, in reporting order.
RECORDED_PROMPT_IDS = ("T1_general", "T2_task_description", "T3_human_heuristics", "T4_example_lfs",
                       "T5_data_examples", "alchemist_programs", "alchemist_programs_with_prior")


def recorded_programs(task: str, prompt_ids: Sequence[str] | None = None, *, root: Any = None,
                      store: ProgramStore | None = None) -> list[Program]:
    """The programs of the shipped recorded responses (``lightning_ws/data/programs``), replayed through
    :class:`ProgramGenerator` exactly as a live run would go: rendered prompt, extraction, static checks.

    Args:
        task: ``youtube`` or ``sms`` (or a task of a recorded folder ``root``).
        prompt_ids: which prompts (default: all of :data:`RECORDED_PROMPT_IDS`).
        root: a recorded folder in the same layout (default: the shipped one).
        store: where to store them (default: a temporary store, removed afterwards).

    Returns:
        The programs (valid or not; check ``Program.valid``), in prompt then sample order.
    """
    import logging
    import tempfile

    from lightning_ws.programs.clients import ReplayClient
    from lightning_ws.programs.prompts import load_task, load_template

    ids = list(prompt_ids or RECORDED_PROMPT_IDS)
    spec = load_task(task)
    client = ReplayClient(root)
    counts = {k[1]: len(list((client.prompts[k]["_dir"] / "responses" / k[1]).glob("*.json")))
              for k in client.prompts if k[0] == task}
    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="lws-recorded-")
        store = ProgramStore(tmp.name)
    gen = ProgramGenerator(client, store)
    out: list[Program] = []
    quiet = logging.getLogger("lightning_ws.programs.clients")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the youtube T5 prompt differs from the recording in example order only
    try:
        for pid in ids:
            if pid not in counts:
                from lightning_ws.errors import DataError

                raise DataError(f"no recorded responses for {task}/{pid}; recorded: {sorted(counts)}.")
            if pid.startswith("T"):
                rep = gen.generate(load_template("scriptoriumws"), spec, tier=pid, n=counts[pid])
            elif pid == "alchemist_programs":
                rep = gen.generate(load_template("alchemist"), spec, n=counts[pid])
            elif pid == "alchemist_programs_with_prior":
                rep = gen.generate(load_template("alchemist"), spec, n=counts[pid], prior_type="heuristics")
            else:
                continue
            out.extend(rep.programs)
    finally:
        quiet.setLevel(level)
        if tmp is not None:
            tmp.cleanup()
    return out
