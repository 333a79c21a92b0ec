"""The README's plain-Python example (own Trainer, no CLI) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after <!-- test: {marker} -->"
    return match.group(1)


def test_readme_own_trainer_example(capsys):
    code = _block("own-trainer")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    acc = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= acc <= 1.0
    assert namespace["trainer"].global_step == 10


def test_readme_cores_example(capsys):
    exec(compile(_block("cores"), str(README), "exec"), {})  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "keyword_my" in out  # the LF table names the shipped labeling functions
