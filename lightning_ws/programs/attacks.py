"""The sandbox attack suite: hostile programs and the checks that they were contained.

Each attack is a labeling-function program that tries to do something a program must never do: touch files
outside its scratch folder, reach the network, start processes, exhaust memory or time, break the worker, tamper
with state shared with other programs, or attack the parent process. :func:`run_attack_suite` runs all of them in
one :class:`~lightning_ws.programs.sandbox.ProgramSandbox` run next to honest programs and checks, outside the
sandbox, that no side effect happened, that every attacker's rows abstain, that the honest programs' outputs are
still right, and that the run finished. The attacks do not rely on the Python guard failing or succeeding: most
reach ``os`` through ``().__class__.__base__.__subclasses__()``, so the OS layers are what is tested.

Used by ``tests/test_programs_sandbox.py`` and ``benchmarks/bench_programs.py``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ATTACKS", "HONEST", "Attack", "run_attack_suite"]

# Reaches the os module's globals from any program, with or without the Python guard.
_ESCAPE = '''
def _os():
    for c in ().__class__.__base__.__subclasses__():
        if c.__name__ == "_wrap_close":
            return c.__init__.__globals__
    raise RuntimeError("no escape")

def _mod(name):
    return _os()["sys"].modules[name]
'''


@dataclass(frozen=True)
class Attack:
    """One hostile program. ``body`` may use ``{target}``, ``{secret}``, ``{port}``, ``{marker}`` placeholders;
    ``check`` says what containment means beyond "no side effect observed outside the sandbox": ``"abstain"``
    (every row abstains), ``"never"`` (the output ``never``, the program's success signal, never appears) or
    ``"side"`` (only the side-effect check: the program's return value carries no meaning)."""

    name: str
    what: str
    body: str
    never: int | None = None
    check: str = "abstain"


ATTACKS: tuple[Attack, ...] = (
    Attack("write_outside_scratch", "create a file outside the scratch folder", '''
def label(t):
    g = _os()
    fd = g["open"]({target!r}, g["O_WRONLY"] | g["O_CREAT"], 0o666)
    g["write"](fd, b"pwned")
    return 1
''', check="side"),
    Attack("write_via_chdir", "chdir out of scratch, then write a relative path", '''
def label(t):
    g = _os()
    g["chdir"]({target_dir!r})
    fd = g["open"]("pwned_chdir", g["O_WRONLY"] | g["O_CREAT"], 0o666)
    return 1
''', check="side"),
    Attack("write_via_symlink", "symlink from scratch to a path outside, write through it", '''
def label(t):
    g = _os()
    try:
        g["symlink"]({target!r} + "_sym", "link")
    except OSError:
        pass
    fd = g["open"]("link", g["O_WRONLY"] | g["O_CREAT"], 0o666)
    g["write"](fd, b"pwned")
    return 1
''', check="side"),
    Attack("read_outside_scratch", "read a secret file outside scratch (1 = read it)", '''
def label(t):
    g = _os()
    fd = g["open"]({secret!r}, g["O_RDONLY"])
    return 1 if b"TOPSECRET" in g["read"](fd, 100) else 0
''', never=1, check="never"),
    Attack("read_environment", "read a secret environment variable of the parent (1 = found)", '''
def label(t):
    g = _os()
    return 1 if "TOPSECRET" in str(g["environ"].get("LWS_ATTACK_SECRET")) + str(dict(g["environ"])) else 0
''', never=1, check="never"),
    Attack("socket_connect", "open a TCP connection to a server on 127.0.0.1", '''
def label(t):
    try:
        s = _os()["__builtins__"]["__import__"]("socket").socket()
        s.connect(("127.0.0.1", {port}))
        return 1
    except Exception:
        pass
    ct = _mod("ctypes")
    libc = ct.CDLL(None)
    fd = libc.socket(2, 1, 0)
    if fd < 0:
        raise OSError("socket refused")
    addr = ct.create_string_buffer(b"\\x02\\x00" + ({port}).to_bytes(2, "big") + bytes([127, 0, 0, 1]) + bytes(8), 16)
    if libc.connect(fd, addr, 16) != 0:
        raise OSError("connect refused")
    return 1
'''),
    Attack("spawn_process", "os.system / posix_spawn a shell command", '''
def label(t):
    g = _os()
    g["system"]("touch " + {marker!r})
    try:
        g["posix_spawn"]("/bin/sh", ["sh", "-c", "touch " + {marker!r}], {{}})
    except OSError:
        pass
    return 1
''', check="side"),
    Attack("ctypes_system", "libc system() through ctypes", '''
def label(t):
    _mod("ctypes").CDLL(None).system(({marker!r} + "_ct").join(["touch ", ""]).encode())
    return 1
''', check="side"),
    Attack("fork_bomb", "fork in a loop", '''
def label(t):
    g = _os()
    while True:
        g["fork"]()
'''),
    Attack("kill_parent", "SIGKILL the parent and every process it can see", '''
def label(t):
    g = _os()
    try:
        g["kill"](g["getppid"](), 9)
    finally:
        g["kill"](-1, 9)
    return 1
''', check="side"),
    Attack("raise_rlimits", "lift the CPU and memory limits (1 = lifted)", '''
def label(t):
    r = _mod("resource")
    r.setrlimit(r.RLIMIT_AS, (-1, -1))
    r.setrlimit(r.RLIMIT_CPU, (-1, -1))
    return 1
''', never=1, check="never"),
    Attack("memory_bomb", "allocate memory without bound", '''
def label(t):
    x = []
    while True:
        x.append(bytearray(200_000_000))
'''),
    Attack("big_file_in_scratch", "write 64 MiB into scratch, past the file-size limit (1 = written)", '''
def label(t):
    g = _os()
    fd = g["open"]("big.bin", g["O_WRONLY"] | g["O_CREAT"], 0o666)
    n = 0
    for _ in range(64):
        n += g["write"](fd, bytes(1 << 20))
    return 1 if n >= 64 << 20 else 0
''', never=1, check="never"),
    Attack("infinite_loop", "loop forever in every call", '''
def label(t):
    while True:
        pass
'''),
    Attack("swallow_timeouts", "loop forever and catch the timeout exception", '''
def label(t):
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
'''),
    Attack("sleep_forever", "block in time.sleep", '''
def label(t):
    _mod("time").sleep(10 ** 6)
    return 1
'''),
    Attack("catastrophic_regex", "exponential regex backtracking in C", '''
import re
def label(t):
    return 1 if re.match(r"(a+)+$", "a" * 40 + "b") else 0
'''),
    Attack("module_level_hang", "hang while the program is loaded", '''
while True:
    pass
def label(t):
    return 1
'''),
    Attack("unbounded_recursion", "recurse without end", '''
def f(n):
    return f(n + 1)
def label(t):
    return f(0)
'''),
    Attack("c_stack_overflow", "lift the recursion limit and overflow the C stack", '''
def f(n):
    return f(n + 1)
def label(t):
    _mod("sys").setrecursionlimit(10 ** 8)
    return f(0)
'''),
    Attack("monkeypatch_builtins", "replace len() for every later program", '''
def label(t):
    _os()["__builtins__"]["len"] = lambda x: 0
    __builtins__["len"] = lambda x: 0
    return -1
'''),
    Attack("monkeypatch_modules", "replace re.search and Counter.most_common for every later program", '''
import re
import collections
def label(t):
    _mod("re").search = lambda *a, **k: None
    re.search = lambda *a, **k: None
    _mod("collections").Counter.most_common = lambda self, n=None: []
    return -1
'''),
    Attack("dunder_import_os", "__import__('os').system(...)", '''
def label(t):
    __import__("os").system("touch " + {marker!r} + "_imp")
    return 1
''', check="side"),
    Attack("getattr_chain", "reach object.__subclasses__ through getattr with built strings", '''
def label(t):
    base = getattr(getattr((), "__cl" + "ass__"), "__ba" + "se__")
    for c in getattr(base, "__subcl" + "asses__")():
        if c.__name__ == "_wrap_close":
            getattr(c.__init__, "__glo" + "bals__")["system"]("touch " + {marker!r} + "_ga")
    return 1
''', check="side"),
    Attack("subclasses_popen", "find subprocess.Popen among object.__subclasses__()", '''
def label(t):
    for c in ().__class__.__base__.__subclasses__():
        if c.__name__ == "Popen":
            c(["touch", {marker!r} + "_popen"])
    _os()["__builtins__"]["__import__"]("subprocess").run(["touch", {marker!r} + "_sp"])
    return 1
''', check="side"),
    Attack("print_flood", "print hundreds of megabytes", '''
def label(t):
    for _ in range(3):
        print("x" * 100_000_000)
    _os()["write"](1, b"y" * 10_000_000)
    _os()["write"](2, b"z" * 10_000_000)
    return -1
'''),
    Attack("corrupt_protocol", "write garbage into every open descriptor (the result pipe)", '''
def label(t):
    g = _os()
    for fd in range(3, 64):
        try:
            g["write"](fd, b"\\xff" * 100_000)
        except OSError:
            pass
    return -1
'''),
    Attack("hostile_returns", "return values that are not class ids", '''
class Evil:
    def __index__(self):
        raise SystemExit(3)
    def __eq__(self, other):
        return True
    def __int__(self):
        return 1
def label(t):
    return [True, "1", 1.0, 10 ** 100, Evil(), 7, -5][len(t) % 7]
'''),
    Attack("huge_exception", "raise an exception with a 100 MB message", '''
def label(t):
    raise ValueError("x" * 100_000_000)
'''),
    Attack("exit_worker", "os._exit / SystemExit from inside a call", '''
def label(t):
    if len(t) % 2:
        raise SystemExit(0)
    _os()["_exit"](0)
'''),
)

#: Honest programs run beside the attackers; their outputs must stay exact.
HONEST: tuple[tuple[str, Any], ...] = (
    ("honest_len", "def label(t):\n    return 1 if len(t) > 3 else 0\n"),
    ("honest_re_counter", "import re\nfrom collections import Counter\n\ndef label(t):\n"
     "    if re.search('free', t):\n        return 1\n"
     "    top = Counter(t).most_common(1)\n    return 0 if top and top[0][1] >= 1 else -1\n"),
)


def _honest_expected(texts: list[str]) -> np.ndarray:
    a = [1 if len(t) > 3 else 0 for t in texts]
    b = [1 if "free" in t else 0 for t in texts]
    return np.asarray([a, b]).T


class _Listener:
    """A TCP server on 127.0.0.1 that counts accepted connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def run_attack_suite(workdir: str | os.PathLike | None = None, *, texts: list[str] | None = None,
                     **sandbox_kwargs: Any) -> dict[str, Any]:
    """Run every attack in one sandbox run beside the honest programs and check containment outside the sandbox.

    Args:
        workdir: a folder for targets, secrets and markers (outside the sandbox's scratch); a temp dir by default.
        texts: rows to label (default: six short texts, one batch).
        **sandbox_kwargs: :class:`~lightning_ws.programs.sandbox.SandboxConfig` fields (timeouts, layers off...).

    Returns:
        ``{"attacks": [{"name", "what", "contained", "why"}...], "tried", "contained", "honest_ok", "completed",
        "layers", "seconds", "errors"}``.
    """
    from lightning_ws.programs.sandbox import ProgramSandbox

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="lws-attack-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)
    secret = work / "secret.txt"
    secret.write_text("TOPSECRET")
    os.chmod(secret, 0o644)
    target_dir = work / "targets"
    target_dir.mkdir(exist_ok=True)
    os.chmod(target_dir, 0o777)
    target = str(target_dir / "pwned.txt")
    marker = str(target_dir / "spawned")
    texts = texts or ["free money now", "hi", "a free song", "nice video", "ok", "subscribe to my channel"]
    listener = _Listener()
    old_env = os.environ.get("LWS_ATTACK_SECRET")
    os.environ["LWS_ATTACK_SECRET"] = "TOPSECRET"
    fmt = {"target": target, "target_dir": str(target_dir), "secret": str(secret), "port": listener.port,
           "marker": marker}
    programs = [{"name": a.name, "source": _ESCAPE + a.body.format(**fmt)} for a in ATTACKS]
    programs += [{"name": n, "source": s} for n, s in HONEST]
    defaults = {"call_timeout": 0.3, "batch_timeout": 3.0, "workers": 2, "max_failures": 1,
                "memory_bytes": 512 << 20}
    defaults.update(sandbox_kwargs)
    t0 = time.perf_counter()
    completed = False
    res = None
    try:
        with ProgramSandbox(**defaults) as sb:
            res = sb.run(programs, texts, num_classes=2)
            completed = True
            layers = dict(sb.layers)
    finally:
        time.sleep(0.3)  # let a late connection attempt arrive
        listener.close()
        if old_env is None:
            os.environ.pop("LWS_ATTACK_SECRET", None)
        else:
            os.environ["LWS_ATTACK_SECRET"] = old_env
    seconds = time.perf_counter() - t0
    assert res is not None
    outside = sorted(p.name for p in target_dir.iterdir())
    side = {
        "write_outside_scratch": not Path(target).exists(),
        "write_via_chdir": not (target_dir / "pwned_chdir").exists(),
        "write_via_symlink": not Path(target + "_sym").exists(),
        "socket_connect": listener.accepted == 0,
        "spawn_process": not Path(marker).exists(),
        "ctypes_system": not Path(marker + "_ct").exists(),
        "dunder_import_os": not Path(marker + "_imp").exists(),
        "getattr_chain": not Path(marker + "_ga").exists(),
        "subclasses_popen": not Path(marker + "_popen").exists() and not Path(marker + "_sp").exists(),
        "kill_parent": True,  # we are still running
    }
    out = []
    for j, a in enumerate(ATTACKS):
        col = res.values[:, j]
        ok_side = side.get(a.name, True)
        if a.check == "abstain":
            ok_out = bool((col == -1).all())
        elif a.check == "never":
            ok_out = bool((col != a.never).all())
        else:
            ok_out = True
        why = [] if ok_side else ["side effect observed"]
        if not ok_out:
            why.append(f"outputs {col.tolist()}")
        out.append({"name": a.name, "what": a.what, "contained": ok_side and ok_out, "why": "; ".join(why),
                    "errors": sorted({e["kind"] for e in res.errors if e["program"] == j})})
    honest = res.values[:, len(ATTACKS):]
    honest_ok = bool(np.array_equal(honest, _honest_expected(texts)))
    big_err = max((len(e["detail"]) for e in res.errors), default=0)
    if own:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {"attacks": out, "tried": len(out), "contained": sum(a["contained"] for a in out),
            "honest_ok": honest_ok, "completed": completed, "layers": layers, "seconds": seconds,
            "errors": len(res.errors), "longest_error_detail": big_err, "files_outside_scratch": outside}
