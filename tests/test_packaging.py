"""Packaging: every third-party import is declared, extras in pyproject match lightning_ws.extras, and a missing
optional package ends in an error that names its extra."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from lightning_ws.errors import ConfigError
from lightning_ws.extras import EXTRAS, MissingExtraError, require

REPO = Path(__file__).resolve().parents[1]


def test_every_import_is_declared(capsys):
    spec = importlib.util.spec_from_file_location("check_deps", REPO / "scripts" / "check_deps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main() == 0, capsys.readouterr().out


def test_extras_match_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    assert set(EXTRAS) | {"all"} <= {e for e in extras if e not in ("dev", "bench", "bench-cifar10n")}
    for name in EXTRAS:
        assert name in extras["all"][0], f"[all] does not include [{name}]"


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # an import of it now fails like a missing package
    with pytest.raises(MissingExtraError, match=r"pip install 'lightning-ws\[datacomp\]'") as info:
        require("open_clip", "datacomp", "CLIP")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ImportError)
    with pytest.raises(ValueError, match="unknown extra"):
        require("open_clip", "nope")
