"""Every ``lightning-ws ...`` command in docs/*.md is a command that exists, with options that exist.

Like tests/test_readme.py for the README: training commands resolve their whole config (``--print_config``, so class
paths, config files and option names are checked), the other commands' ``--help`` must list every option used.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _doc_commands() -> list[tuple[str, list[str]]]:
    out = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(encoding="utf-8"), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:
                    continue
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value prefixes
                if words and words[0] == "lightning-ws":
                    out.append((doc.name, words[1:]))
    return out


COMMANDS = _doc_commands()


def test_docs_have_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("doc,argv", COMMANDS, ids=[f"{d}:{' '.join(a)[:50]}" for d, a in COMMANDS])
def test_doc_command_parses(doc, argv, monkeypatch, capsys):
    from lightning_ws.cli import COMMANDS as REGISTERED
    from lightning_ws.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    if argv[0] in ("fit", "validate", "test", "predict"):
        args: list[str] = []
        for a in argv:  # drop placeholders (`<id>`) with their option
            if "<" in a:
                if args and args[-1].startswith("--") and "=" not in args[-1]:
                    args.pop()
                continue
            args.append(a)
        assert main([*args, "--print_config"]) == 0, f"{doc}: {capsys.readouterr().err[-2000:]}"
        return
    assert argv[0] in REGISTERED, f"{doc} names an unknown command: lightning-ws {' '.join(argv)}"
    sub = [argv[1]] if len(argv) > 1 and not argv[1].startswith("-") and not argv[1].startswith("<") else []
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *sub, "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert option in help_text, f"{doc}: {option} of `lightning-ws {' '.join(argv)}` is not an option"
