"""Print the contract/layering numbers of issue 18: batch-key string literals, ``getattr(dm, ...)`` probes of the data
module, and imports that run the wrong way across the Lightning layer.

    python scripts/contracts_report.py            # summary
    python scripts/contracts_report.py --list     # every occurrence

Definitions (AST scan of ``lightning_ws/``, ``contracts.py`` itself excluded):

* *batch-key literal*: in the Lightning layer (``callbacks/``, ``modules/``, ``datamodules/``, ``metrics/``,
  ``predictions.py``) a string constant equal to one of ``lightning_ws.contracts``'s key values used as a subscript
  (``batch["x"]``), a dict-literal key (``{"x": ...}``) or the first argument of ``.get``/``.pop``/``.setdefault``.
* *dm probe*: ``getattr(dm, ...)`` / ``hasattr(dm, ...)`` whose first argument is a name or attribute ending in ``dm``
  or ``datamodule``.
* *wrong-way arrow*: what ``tests/test_layering.py`` refuses (a core package importing ``lightning``/
  ``torchmetrics`` or our Lightning layer, a data module importing a module/callback, a module importing a callback),
  including the known cases that test still tolerates.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lightning_ws"
sys.path.insert(0, str(ROOT))

from lightning_ws import contracts  # noqa: E402
from tests.test_layering import violations  # noqa: E402  (one definition of the layers: the test's)

STEP_KEYS = {contracts.LOSS, contracts.PER_SAMPLE_LOSS}
BATCH_KEYS = {getattr(contracts, n) for n in contracts.__all__ if isinstance(getattr(contracts, n), str)} - STEP_KEYS
LIGHTNING_LAYER = ("callbacks", "modules", "datamodules", "metrics", "predictions.py")


def _layer(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


def _is_dm(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith("dm") or name.endswith("datamodule")


def scan(path: Path):
    rel = path.relative_to(PKG)
    tree = ast.parse(path.read_text(), filename=str(path))
    keys, probes = [], []
    in_layer = _layer(rel) in LIGHTNING_LAYER
    for node in ast.walk(tree):
        cands = []
        if isinstance(node, ast.Subscript):
            cands.append(node.slice)
        elif isinstance(node, ast.Dict):
            cands += [k for k in node.keys if k is not None]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            cands.append(node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and node.args and _is_dm(node.args[0]):
            probes.append((node.lineno, ast.unparse(node)))
        for c in cands:
            if in_layer and isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in BATCH_KEYS:
                keys.append((c.lineno, repr(c.value)))
    return rel, keys, probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every occurrence")
    args = ap.parse_args()
    files = sorted(p for p in PKG.rglob("*.py") if p.name != "contracts.py")
    n_keys, n_probes, n_bad = Counter(), Counter(), Counter()
    details = []
    for p in files:
        rel, keys, probes = scan(p)
        n_keys[str(rel)] += len(keys)
        n_probes[str(rel)] += len(probes)
        details += [("batch-key", rel, ln, s) for ln, s in keys]
        details += [("dm-probe", rel, ln, s) for ln, s in probes]
    for rel, ln, mod, why in violations():
        n_bad[rel] += 1
        details.append(("wrong-way", rel, ln, f"{mod}  ({why})"))
    def fmt(c: Counter) -> str:
        return f"{sum(c.values())} in {sum(1 for v in c.values() if v)} files"
    print(f"batch-key string literals (Lightning layer): {fmt(n_keys)}")
    print(f"getattr/hasattr(dm, ...) probes:             {fmt(n_probes)}")
    print(f"wrong-way imports:                           {fmt(n_bad)}")
    if args.list:
        for kind, rel, ln, s in details:
            print(f"  {kind:9s} {rel}:{ln}  {s}")


if __name__ == "__main__":
    main()
