"""Let plain ``peft`` load MoRe adapters once ``lightning_ws`` is installed (no ``import lightning_ws...`` needed).

MoRe adapters are saved with ``"peft_type": "MORE"`` (:mod:`lightning_ws.more.peft_shim`). PEFT looks that string up
in its registries and, unless the shim registered it, fails with a bare ``KeyError: 'MORE'``. PEFT has no plugin entry
point (its ``register_peft_method`` accepts only members of its closed ``PeftType`` enum), so ``lightning_ws`` ships a
one-line ``lightning_ws-peft.pth`` into ``site-packages`` (written by ``setup.py`` into regular and editable wheels) that
calls :func:`install` at interpreter start-up. :func:`install` only puts a tiny finder on ``sys.meta_path``; nothing is
imported until the program itself imports ``peft``. Right after ``peft`` has finished importing, the finder imports
:mod:`lightning_ws.more.peft_shim`, which registers ``"MORE"``, so ``PeftModel.from_pretrained(base, folder)`` and
``PeftConfig.from_pretrained(folder)`` work with plain ``peft``.

If the shim cannot be imported (an untested PEFT version, a broken install), ``"MORE"`` is registered as a stub whose
use raises :class:`~lightning_ws.errors.ConfigError` naming the reason and the fix, instead of the bare ``KeyError``.
Importing ``peft`` itself never fails because of this hook. Set ``LIGHTNING_WS_NO_PEFT_HOOK=1`` to switch it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

__all__ = ["ENV_OFF", "PTH_NAME", "install", "register"]

#: Environment variable that switches the hook off.
ENV_OFF = "LIGHTNING_WS_NO_PEFT_HOOK"
#: Name of the start-up file shipped into site-packages.
PTH_NAME = "lightning_ws-peft.pth"


def register() -> None:
    """Register MoRe with the (already imported) ``peft``; on failure register a stub with a clear error."""
    try:
        import lightning_ws.more.peft_shim  # noqa: F401  (registers "MORE" on import)
    except Exception as err:  # noqa: BLE001 - importing peft must not fail because of us
        _register_unavailable(err)


def _register_unavailable(err: BaseException) -> None:
    try:
        from peft import mapping
    except Exception:  # noqa: BLE001
        return
    if "MORE" in mapping.PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    reason = f"{type(err).__name__}: {err}"

    def fail(*_: Any, **__: Any) -> None:
        from lightning_ws.errors import ConfigError

        raise ConfigError(
            "this PEFT adapter has peft_type 'MORE' (a MoRe adapter saved by lightning_ws), but lightning_ws could not "
            f"register MoRe with this peft ({reason}). Fix that (pip install 'lightning-ws' with a supported "
            "peft, see lightning_ws.more.peft_shim.SUPPORTED_PEFT), then `import lightning_ws.more.peft_shim` before "
            "loading; or load the adapter without PEFT: lightning_ws.export --format adapter / "
            "lightning_ws.more.load_more_adapter.")

    stub = type("MoReUnavailable", (), {"__init__": fail, "from_pretrained": classmethod(fail),
                                        "from_peft_type": classmethod(fail)})
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING["MORE"] = stub


class _AfterPeftLoader(importlib.abc.Loader):
    """Wraps ``peft``'s loader: execute ``peft``, then :func:`register`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader  # peft sees its own loader (resources, get_data)
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        register()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PeftFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that acts once, on the first import of ``peft``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "peft":
            return None
        _uninstall()
        if os.environ.get(ENV_OFF):
            return None
        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _AfterPeftLoader(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PeftFinder)]


def install() -> None:
    """Arrange for MoRe to be registered when ``peft`` is imported (now, if it already is). Idempotent, cheap."""
    if os.environ.get(ENV_OFF):
        return
    if "peft" in sys.modules:
        register()
        return
    if not any(isinstance(f, _PeftFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PeftFinder())
