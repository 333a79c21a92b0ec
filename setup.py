"""Only ships ``lightning_ws-peft.pth`` into site-packages; all metadata lives in pyproject.toml.

The start-up file lets plain ``peft`` load MoRe adapters without importing ``lightning_ws`` first (see
``lightning_ws/_peft_hook.py``). It goes into the root of regular wheels (``build_py``) and of editable wheels
(``pip install -e .``, ``editable_wheel``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = Path(__file__).resolve().parent / "lightning_ws-peft.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also copies the start-up file to the root of ``build_lib`` (the wheel's root)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(Path(self.build_lib) / PTH.name))
        return outputs


cmdclass = {"build_py": BuildPyWithPth}

try:
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheelWithPth(editable_wheel):
        """``editable_wheel`` that also puts the start-up file at the root of the editable wheel."""

        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            shutil.copyfile(PTH, Path(unpacked_wheel) / PTH.name)
            return result

    cmdclass["editable_wheel"] = EditableWheelWithPth
except ImportError:  # setuptools < 64: no PEP 660 editable wheels
    pass

setup(cmdclass=cmdclass)
