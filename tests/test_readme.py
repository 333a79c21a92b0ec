"""The README's plain-Python example (own Trainer, no CLI) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


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


def _readme_commands() -> list[list[str]]:
    """Every ``lightning-ws ...`` line of the README's bash blocks, as argv (comments and env assignments dropped)."""
    import shlex

    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words and words[0] == "lightning-ws":
                out.append(words[1:])
    return out


COMMANDS_IN_README = _readme_commands()
# Commands run in full here (cheap); the others are checked as far as they can be without training for minutes:
# training commands resolve their whole config (--print_config), other commands parse their options (--help).
RUN_IN_FULL = {("labelmodel", "youtube"), ("labelmodel", "youtube", "--wandb"), ("--help",)}


def test_readme_has_commands():
    assert len(COMMANDS_IN_README) >= 8
    assert ["fit", "-c", "configs/quickstart.yaml", "--ckpt_path", "last"] \
        in COMMANDS_IN_README


@pytest.mark.parametrize("argv", COMMANDS_IN_README, ids=[" ".join(a)[:60] for a in COMMANDS_IN_README])
def test_readme_command_runs(argv, monkeypatch, capsys):
    from lightning_ws.cli import COMMANDS, main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    if tuple(argv) in RUN_IN_FULL:
        assert main(argv) == 0, capsys.readouterr().err[-2000:]
        return
    if argv[0] in ("fit", "validate", "test", "predict"):
        args = [a for a in argv if "<" not in a]
        if "--ckpt_path" in args and args.index("--ckpt_path") == len(args) - 1:
            args = args[:-1]
        assert main([*args, "--print_config"]) == 0, capsys.readouterr().err[-2000:]
        return
    assert argv[0] in COMMANDS, f"README names an unknown command: {argv}"
    sub = [argv[1]] if len(argv) > 1 and not argv[1].startswith("-") and argv[0] in ("weaver", "rnb") else []
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *sub, "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert option in help_text, f"{option} of `lightning-ws {' '.join(argv)}` is not an option"
