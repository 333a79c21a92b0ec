"""The shared Lightning tests, driven by ``tests/shared_registry.py`` (CONTRIBUTING.md, "Tests").

Discovery is exhaustive: every class exported by :mod:`lightning_ws.callbacks` (a ``Callback``) and
:mod:`lightning_ws.modules` (a ``LightningModule``) must have a registry entry naming how each shared check reaches it;
a new class without one fails here. Generic checks run in this file (fast tier by default, DDP in the slow tier);
covered checks must point at a test that exists; gaps are visible xfails.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from tests import shared_registry as reg

REPO = Path(__file__).resolve().parents[1]


def _exported(package: str, base: type) -> list[str]:
    pkg = importlib.import_module(package)
    return sorted(n for n in pkg.__all__ if isinstance(getattr(pkg, n), type) and issubclass(getattr(pkg, n), base))


EXPORTED = {"callback": _exported("lightning_ws.callbacks", pl.Callback),
            "module": _exported("lightning_ws.modules", pl.LightningModule)}
REGISTRY = {"callback": reg.CALLBACKS, "module": reg.MODULES}
CASES = [(kind, name, check) for kind in ("callback", "module") for name in sorted(REGISTRY[kind])
         for check in reg.CHECKS]


def _id(case: tuple[str, str, str]) -> str:
    return f"{case[1]}-{case[2]}"


def test_every_exported_class_has_a_registry_entry():
    """A callback or module exported without an entry would skip the shared tests: refuse it."""
    assert EXPORTED["callback"] and EXPORTED["module"]
    for kind in ("callback", "module"):
        missing = sorted(set(EXPORTED[kind]) - set(REGISTRY[kind]))
        assert not missing, (f"exported {kind}s without an entry in tests/shared_registry.py: {missing}. Add one "
                             f"(resume, ddp, accumulation, config), see CONTRIBUTING.md.")
        stale = sorted(set(REGISTRY[kind]) - set(EXPORTED[kind]))
        assert not stale, f"registry entries for {kind}s that are not exported: {stale}"


def _test_exists(node: str) -> bool:
    path, _, name = node.partition("::")
    file = REPO / path
    if not file.is_file():
        return False
    tree = ast.parse(file.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def _class_paths(tree) -> set[str]:
    found = set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "class_path" and isinstance(value, str):
                found.add(value)
            found |= _class_paths(value)
    elif isinstance(tree, list):
        for value in tree:
            found |= _class_paths(value)
    return found


def _resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _params():
    out = []
    for case in CASES:
        kind, name, check = case
        spec = getattr(REGISTRY[kind][name], check)
        marks = []
        if isinstance(spec, reg.Gap):
            marks.append(pytest.mark.xfail(reason=spec.reason, strict=True))
        if isinstance(spec, reg.Generic) and (spec.slow or check == "ddp"):
            marks += [pytest.mark.slow, pytest.mark.ddp]
        out.append(pytest.param(*case, id=_id(case), marks=marks))
    return out


@pytest.mark.parametrize(("kind", "name", "check"), _params())
def test_shared_check(kind, name, check, tmp_path):
    spec = getattr(REGISTRY[kind][name], check)
    package = "lightning_ws.callbacks" if kind == "callback" else "lightning_ws.modules"
    cls = getattr(importlib.import_module(package), name)
    if isinstance(spec, reg.Gap):
        pytest.fail(f"{name}: no shared {check} test yet ({spec.reason})")
    elif isinstance(spec, reg.NotApplicable):
        assert spec.reason.strip(), "a not-applicable check must say why"
    elif isinstance(spec, reg.Covered):
        assert _test_exists(spec.test), f"{name}/{check}: {spec.test} does not exist"
    elif isinstance(spec, reg.Config):
        assert _test_exists(spec.run_by), f"{name}/{check}: {spec.run_by} does not exist"
        config = REPO / spec.path
        assert config.is_file(), f"{spec.path} does not exist"
        used = {p for p in _class_paths(yaml.safe_load(config.read_text())) if p.startswith("lightning_ws.")}
        assert any(_resolve(p) is cls for p in used), f"{spec.path} does not use {name} (class paths: {sorted(used)})"
    elif check == "resume":
        _generic_resume(spec.factory, tmp_path)
    elif check == "ddp":
        _generic_ddp(spec.factory, tmp_path, spec.ddp_strategy)
    else:  # pragma: no cover - the registry only declares generic resume and ddp today
        pytest.fail(f"no generic {check} runner; declare it Covered or add a runner here")


def _factory(spec: str):
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)


def _generic_resume(factory: str, tmp_path: Path) -> None:
    """Interrupted + resumed == uninterrupted, bit for bit, under accumulate_grad_batches=2."""
    from tests.helpers.resume import assert_resume_equivalent

    assert_resume_equivalent(_factory(factory), total_steps=6, interrupt_step=3, tmp_path=tmp_path,
                             accumulate_grad_batches=2)


def _generic_ddp(factory: str, tmp_path: Path, strategy: str = "ddp") -> None:
    """Two gloo processes with batch 8 each end where one process with batch 16 ends (same rows per optimizer step,
    batches in dataset order, accumulate_grad_batches=2), and the two ranks hold identical parameters."""
    import torch

    from tests.helpers.ddp import run_fit

    trainer = {"max_steps": 4, "accumulate_grad_batches": 2, "use_distributed_sampler": False}
    one = run_fit(factory, tmp_path, devices=1, factory_kwargs={"batch_size": 16}, trainer_kwargs=trainer)[0]
    ranks = run_fit(factory, tmp_path, devices=2, factory_kwargs={"batch_size": 8},
                    trainer_kwargs={**trainer, "strategy": strategy})
    assert [r["global_step"] for r in ranks] == [4, 4] and one["global_step"] == 4
    for key, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][key], value, atol=0, rtol=0, msg=f"ranks disagree on {key}")
    assert set(one["params"]) == set(ranks[0]["params"])
    moved = False
    for key, value in one["params"].items():
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["params"][key], value, atol=1e-5, rtol=1e-4,
                                       msg=f"2 processes != 1 process on {key}")
    init = _factory(factory)(batch_size=16)[0].state_dict()  # the factories seed their initialisation
    for key, value in init.items():
        moved |= value.is_floating_point() and not torch.equal(value, one["params"][key])
    assert moved, "no parameter moved: the check would pass vacuously"
