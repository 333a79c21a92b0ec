"""Program store: one ``.py`` file per program plus a JSON metadata file, content-addressed.

Layout (``root/<task>/<prompt_id>/``)::

    <id>.py     the Alchemist file layout (arXiv 2407.11004): the rendered prompt as a docstring, token and cost
                comments, then the program's code -- readable, and runnable by a human who wants to
    <id>.json   metadata: task, family, prompt id, template + version, model, sample index, the full rendered
                system + user prompt, the raw response, token usage, cost, static-check result, hashes

``<id>`` is the first 16 hex digits of the program hash (sha256 of entry point and code), so the same code is stored
once whatever prompt produced it (the metadata of the first copy is kept; later copies are counted in
``duplicates``). Files are written atomically and an existing file is never overwritten with different content.
The JSON file is authoritative; :func:`parse_program_file` recovers prompt, costs and code from the ``.py`` file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_ws.errors import ConfigError, DataError, DataFileNotFoundError
from lightning_ws.io import atomic_write_text
from lightning_ws.programs.sandbox import program_hash

__all__ = ["Program", "ProgramStore", "parse_program_file", "format_program_file"]


@dataclass
class Program:
    """A generated (or hand-written) program and its provenance.

    Attributes:
        source: the code (what runs in the sandbox).
        entry: the function the code defines (``label``, ``judging_function``).
        task, family, prompt_id, sample: where it came from (``youtube``, ``scriptoriumws``, ``T3_human_heuristics``,
            sample index ``k``).
        model: the model that wrote it.
        system_prompt, prompt: the rendered messages.
        template, template_version: the prompt template and its version.
        response: the raw response text.
        usage: ``{"prompt_tokens", "completion_tokens"}`` (empty when unknown, e.g. recorded responses).
        cost_usd: cost of the call(s) that produced it (``None`` when unknown).
        checks: the static-check result (``{"ok": bool, "problems": [...], "imports": [...]}``).
        extra: anything else (prior-knowledge prompt, client name, ...).
        name: a display name (defaults to the id).
    """

    source: str
    entry: str = "label"
    task: str = ""
    family: str = ""
    prompt_id: str = ""
    sample: int = 0
    model: str = ""
    system_prompt: str = ""
    prompt: str = ""
    template: str = ""
    template_version: int | None = None
    response: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    created: str = ""
    duplicates: int = 0

    @property
    def hash(self) -> str:
        """sha256 of entry point and code."""
        return program_hash(self.source, self.entry)

    @property
    def id(self) -> str:
        """Store id: first 16 hex digits of :attr:`hash`."""
        return self.hash[:16]

    @property
    def valid(self) -> bool:
        """Whether the static checks passed."""
        return bool(self.checks.get("ok", False))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hash"] = self.hash
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Program:
        known = set(cls.__dataclass_fields__)
        prog = cls(**{k: v for k, v in d.items() if k in known})
        if d.get("hash") and d["hash"] != prog.hash:
            raise DataError(f"program {d.get('id')}: stored hash does not match its code (the file was edited); "
                            f"re-add the edited program instead of changing it in place.")
        return prog


_DOC_ESC = ('"""', '\\"\\"\\"')


def format_program_file(p: Program) -> str:
    """The ``.py`` file: prompt docstring, cost comments, code."""
    prompt = f"[system]\n{p.system_prompt}\n[user]\n{p.prompt}".replace("\\", "\\\\").replace(*_DOC_ESC)
    usage = p.usage or {}
    lines = [f'"""{prompt}\n"""', f"# program: {p.id}  task: {p.task}  prompt: {p.prompt_id}  sample: {p.sample}",
             f"# model: {p.model}  template: {p.template} v{p.template_version}",
             f"# $[prompt_tokens={usage.get('prompt_tokens', '')}] $[completion_tokens="
             f"{usage.get('completion_tokens', '')}] $[cost_usd={'' if p.cost_usd is None else p.cost_usd}]",
             "# --- code ---", p.source.rstrip("\n") + "\n"]
    return "\n".join(lines)


def parse_program_file(text: str) -> dict[str, Any]:
    """Recover ``system_prompt``, ``prompt``, ``usage``, ``cost_usd`` and ``source`` from a ``.py`` program file."""
    m = re.match(r'"""(.*?)\n"""\n', text, re.S)
    if not m:
        raise DataError("not a program file: it must start with the prompt docstring.")
    prompt = m.group(1).replace(_DOC_ESC[1], _DOC_ESC[0]).replace("\\\\", "\\")
    system, _, user = prompt.partition("\n[user]\n")
    system = system.removeprefix("[system]\n")
    head, sep, code = text[m.end():].partition("# --- code ---\n")
    if not sep:
        raise DataError("not a program file: no '# --- code ---' marker.")

    def num(key: str) -> float | None:
        mm = re.search(r"\$\[" + key + r"=([^\]]*)\]", head)
        return float(mm.group(1)) if mm and mm.group(1) else None

    usage = {k: int(v) for k in ("prompt_tokens", "completion_tokens") if (v := num(k)) is not None}
    return {"system_prompt": system, "prompt": user, "usage": usage, "cost_usd": num("cost_usd"), "source": code}


class ProgramStore:
    """A folder of programs (see the module docstring).

    Args:
        root: the store folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"program store {self.root} exists and is not a folder.")

    def _dir(self, p: Program) -> Path:
        safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", s or "_") for s in (p.task, p.prompt_id)]
        return self.root.joinpath(*safe)

    def add(self, program: Program) -> Program:
        """Store a program; returns the stored one (an existing identical program has its ``duplicates`` raised)."""
        existing = self.find(program.hash)
        if existing is not None:
            existing.duplicates += 1
            atomic_write_text(self._meta_path(existing), json.dumps(existing.to_dict(), indent=1,
                                                                    ensure_ascii=False))
            return existing
        if not program.created:
            program.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if not program.name:
            program.name = f"{program.task}/{program.prompt_id}/{program.sample}" if program.task else program.id
        folder = self._dir(program)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{program.id}.py", format_program_file(program))
        atomic_write_text(folder / f"{program.id}.json", json.dumps(program.to_dict(), indent=1, ensure_ascii=False))
        return program

    def _meta_path(self, p: Program) -> Path:
        return self._dir(p) / f"{p.id}.json"

    def _files(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from sorted(self.root.rglob("*.json"))

    def __iter__(self) -> Iterator[Program]:
        for f in self._files():
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(f"{f}: unreadable program metadata ({err}).") from None
            if isinstance(d, dict) and "source" in d:
                yield Program.from_dict(d)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def find(self, id_or_hash: str) -> Program | None:
        """The program with this id / hash (prefix), or ``None``."""
        key = id_or_hash[:16]
        for f in self._files():
            if f.stem.startswith(key):
                p = Program.from_dict(json.loads(f.read_text(encoding="utf-8")))
                if p.hash.startswith(id_or_hash):
                    return p
        return None

    def get(self, id_or_hash: str) -> Program:
        """Like :meth:`find` but raises when absent."""
        p = self.find(id_or_hash)
        if p is None:
            raise DataFileNotFoundError(f"no program {id_or_hash!r} in {self.root}; `lightning-ws programs list "
                                        f"--store {self.root}` shows the ids.")
        return p

    def select(self, *, task: str | None = None, prompt_id: str | None = None, family: str | None = None,
               valid_only: bool = True) -> list[Program]:
        """Programs matching every given filter, in a stable order (task, prompt id, sample, id)."""
        out = [p for p in self
               if (task is None or p.task == task) and (prompt_id is None or p.prompt_id == prompt_id)
               and (family is None or p.family == family) and (p.valid or not valid_only)]
        return sorted(out, key=lambda p: (p.task, p.prompt_id, p.sample, p.id))
