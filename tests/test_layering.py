"""The package's layering, enforced by an AST scan of ``lightning_ws/`` (issue 18; CONTRIBUTING.md "Layers").

* A core package (every method package such as ``labelmodels/``, ``rnb/``, ``datacomp/`` and the ground-floor
  modules such as ``contracts.py``, ``io.py``, ``optim.py``) never imports ``lightning``, ``pytorch_lightning`` or
  ``torchmetrics``, nor our Lightning layer (``callbacks``, ``modules``, ``datamodules``, ``metrics``).
* A data module never imports a module or a callback; a module never imports a callback.
* ``contracts.py`` imports nothing of ours.

Imports inside functions count too (a lazy import is still an arrow). ``KNOWN`` lists the violations that exist on
main and are being removed by their owners; a new violation fails.
"""
from __future__ import annotations

import ast
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "lightning_ws"
LIGHTNING_LAYER = {"callbacks", "modules", "datamodules", "metrics"}
#: top-level modules and per-package CLI glue that sit above the cores and may import Lightning
GLUE = {"cli.py", "cli_support.py", "training_cli.py", "loggers.py", "predictions.py", "resume.py", "checkpoints.py", "export.py",
        "wandb_offline.py", "wandb_report.py", "wandb_training.py", "_lazy.py"}
FORBIDDEN_IN_CORE = ("lightning", "pytorch_lightning", "torchmetrics")
#: (file, imported module) pairs tolerated while their owners remove them; empty since the issue-18 branches merged
KNOWN: set[tuple[str, str]] = set()


def _imports(path: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(PKG)
    pkg = ["lightning_ws", *rel.parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _role(rel: Path) -> str:
    if rel.parts[0] in LIGHTNING_LAYER:
        return rel.parts[0]
    if rel.name in GLUE:
        return "glue"
    return "core"


def violations() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        role = _role(rel)
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            ours = mod.split(".")[1] if mod.startswith("lightning_ws.") else None
            why = None
            if role == "core" and top in FORBIDDEN_IN_CORE:
                why = "a core package imports Lightning/torchmetrics"
            elif role == "core" and ours in LIGHTNING_LAYER:
                why = "a core package imports the Lightning layer"
            elif role == "datamodules" and ours in ("modules", "callbacks"):
                why = "a data module imports a module/callback"
            elif role == "modules" and ours == "callbacks":
                why = "a module imports a callback"
            elif rel.name == "contracts.py" and top == "lightning_ws":
                why = "contracts.py imports lightning_ws"
            if why:
                found.append((str(rel), line, mod, why))
    # ``from a.b import c`` yields both ``a.b`` and ``a.b.c``: keep one finding per (file, line)
    seen, uniq = set(), []
    for f in found:
        if (f[0], f[1]) not in seen:
            seen.add((f[0], f[1]))
            uniq.append(f)
    return uniq


def test_scan_sees_imports() -> None:
    """The scanner itself works: it finds this package's own known arrows (cannot pass vacuously)."""
    mods = {m for _, m in _imports(PKG / "datamodules" / "text.py")}
    assert "lightning.pytorch" in mods and "lightning_ws.datamodules.resumable" in mods


def test_no_wrong_way_imports() -> None:
    new = [v for v in violations() if not any(v[0] == k[0] and v[2].startswith(k[1]) for k in KNOWN)]
    assert not new, "imports that run the wrong way across the layers:\n" + "\n".join(
        f"  lightning_ws/{f}:{line} imports {mod} ({why})" for f, line, mod, why in new)


def test_mixture_datamodule_satisfies_the_protocol() -> None:
    """R&B reaches a mixture data module through :class:`SupportsMixture`; the shipped one satisfies it."""
    import torch

    from lightning_ws.contracts import SupportsMixture, is_mixture_datamodule
    from lightning_ws.datamodules.rnb import TensorMixtureDataModule

    dm = TensorMixtureDataModule(torch.randn(12, 3), torch.arange(12) % 2, [0] * 4 + [1] * 8, batch_size=4)
    assert isinstance(dm, SupportsMixture) and is_mixture_datamodule(dm)
    assert dm.num_domains == 2 and dm.domain_sizes.tolist() == [4, 8]
    dm.set_mixture([0.25, 0.75])
    assert dm.mixture.tolist() == [0.25, 0.75]
    assert not is_mixture_datamodule(object()) and not is_mixture_datamodule(None)
