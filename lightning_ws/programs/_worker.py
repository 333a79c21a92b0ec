"""Sandbox worker: runs untrusted programs in a locked-down child process (stdlib only; never imported by the parent).

Started by :class:`lightning_ws.programs.sandbox.ProgramSandbox` as ``python -I _worker.py <config json>``. Setup,
in this order, before any untrusted code runs:

1. the protocol pipes move to private descriptors; fds 0/1/2 become ``/dev/null`` (a program's prints go nowhere);
2. the environment is emptied, the working directory is the scratch folder, the allow-listed modules are imported;
3. resource limits: CPU seconds, address space, file size, open files, processes, no core dumps;
4. when started as root: drop to ``nobody`` (65534) so process-count limits and file permissions apply;
5. ``no_new_privs``; Landlock (reads only in the Python installation and scratch, writes and file creation only
   in scratch, no TCP bind/connect, no signals or abstract sockets outside the worker) where the kernel has it;
6. a seccomp filter that refuses socket creation, process creation, exec, signals to other processes, ptrace,
   mounts, namespaces, rlimit changes, io_uring, module loading and similar calls with ``EPERM`` (x86_64/aarch64).

Each layer reports whether it took effect; the parent warns about the missing ones. Messages from the parent are
trusted (pickle); everything sent back is treated by the parent as untrusted bytes (a JSON header and a raw array).
"""

import json
import os
import pickle
import signal
import struct
import sys
import time

_FRAME = struct.Struct("<II")
_HEADER_CAP = 1 << 20


class _Timeout(BaseException):
    """Raised inside a program call that ran past the per-call wall-clock limit."""


class _State:
    calls = 0
    last_calls = -1
    stuck = 0
    ticks_per_call = 4
    busy = False


_STATE = _State()


def _tick(signum, frame):  # noqa: ARG001 - signal handler signature
    st = _STATE
    if not st.busy:
        return
    if st.calls == st.last_calls:
        st.stuck += 1
        if st.stuck >= st.ticks_per_call:
            st.stuck = 0
            raise _Timeout()
    else:
        st.last_calls = st.calls
        st.stuck = 0


# --------------------------------------------------------------------------------------------------------------------
# I/O


def _read_exact(fd, n):
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _send(fd, header, payload=b""):
    h = json.dumps(header).encode("utf-8")
    if len(h) > _HEADER_CAP:
        h = json.dumps({"type": "error", "detail": "header too large"}).encode()
        payload = b""
    data = _FRAME.pack(len(h), len(payload)) + h + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv(fd):
    (n,) = struct.unpack("<Q", _read_exact(fd, 8))
    return pickle.loads(_read_exact(fd, n))


def _short(text, cap=400):
    try:
        s = str(text)
    except BaseException:  # noqa: BLE001 - hostile __str__
        return "<unprintable>"
    return s if len(s) <= cap else s[:cap] + f"... [{len(s) - cap} more chars]"


def _describe(err):
    try:
        name = type(err).__name__
        if not isinstance(name, str):
            name = "<exception>"
    except BaseException:  # noqa: BLE001
        name = "<exception>"
    return name + ": " + _short(err)


# --------------------------------------------------------------------------------------------------------------------
# Layers


def _apply_rlimits(cfg, layers):
    try:
        import resource
    except ImportError:
        layers["rlimits"] = "unavailable"
        return
    done = []

    def lim(name, value):
        code = getattr(resource, name, None)
        if code is None or value is None:
            return
        try:
            resource.setrlimit(code, (value, value))
            done.append(name)
        except (ValueError, OSError):
            try:  # cannot raise the hard limit: lower the soft one only
                soft, hard = resource.getrlimit(code)
                resource.setrlimit(code, (min(value, hard) if hard >= 0 else value, hard))
                done.append(name)
            except (ValueError, OSError):
                pass

    lim("RLIMIT_CORE", 0)
    lim("RLIMIT_CPU", int(cfg["cpu_seconds"]))
    lim("RLIMIT_AS", int(cfg["memory_bytes"]))
    lim("RLIMIT_FSIZE", int(cfg["file_bytes"]))
    lim("RLIMIT_NOFILE", int(cfg["max_open_files"]))
    lim("RLIMIT_NPROC", int(cfg["max_processes"]))
    layers["rlimits"] = ",".join(done)


def _drop_privileges(layers, wanted):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        layers["privdrop"] = "not root"
        return
    if not wanted:  # root only inside a user namespace (unprivileged on the host), or under bwrap
        layers["privdrop"] = "namespace root"
        return
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        layers["privdrop"] = "nobody"
    except OSError as err:
        layers["privdrop"] = "failed: " + _short(err, 80)


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


_LL_FS = {  # Landlock filesystem rights, bit -> first ABI with it
    "EXECUTE": (0, 1), "WRITE_FILE": (1, 1), "READ_FILE": (2, 1), "READ_DIR": (3, 1), "REMOVE_DIR": (4, 1),
    "REMOVE_FILE": (5, 1), "MAKE_CHAR": (6, 1), "MAKE_DIR": (7, 1), "MAKE_REG": (8, 1), "MAKE_SOCK": (9, 1),
    "MAKE_FIFO": (10, 1), "MAKE_BLOCK": (11, 1), "MAKE_SYM": (12, 1), "REFER": (13, 2), "TRUNCATE": (14, 3),
    "IOCTL_DEV": (15, 5),
}
_LL_NR = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}


def _apply_landlock(cfg, layers):
    import platform

    machine = platform.machine()
    if machine not in _LL_NR:
        layers["landlock"] = "unsupported arch " + machine
        return
    create, add, restrict = _LL_NR[machine]
    try:
        ctypes, libc = _libc()
    except OSError as err:
        layers["landlock"] = "no libc: " + _short(err, 80)
        return
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(create), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        layers["landlock"] = "kernel without Landlock"
        return
    handled = 0
    for _name, (bit, since) in _LL_FS.items():
        if abi >= since:
            handled |= 1 << bit
    net = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets | signals
    attr = struct.pack("<QQQ", handled, net, scoped)
    size = 24 if abi >= 6 else 16
    buf = ctypes.create_string_buffer(attr[:size], size)
    fd = libc.syscall(ctypes.c_long(create), buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        layers["landlock"] = "create_ruleset failed errno %d" % ctypes.get_errno()
        return
    read_rights = (1 << 2) | (1 << 3)
    write_rights = handled & ~(1 << 0)  # everything except execute
    rules = [(cfg["scratch"], write_rights)]
    for path in cfg["read_paths"]:
        rules.append((path, read_rights))
    added = 0
    for path, rights in rules:
        try:
            pfd = os.open(path, os.O_PATH | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        if not os.path.isdir(path):
            rights &= (1 << 1) | (1 << 2) | (1 << 14)  # file rules take file rights only
        rule = struct.pack("<Qi", rights & handled, pfd)
        rbuf = ctypes.create_string_buffer(rule, len(rule))
        if libc.syscall(ctypes.c_long(add), ctypes.c_int(fd), ctypes.c_int(1), rbuf, ctypes.c_uint32(0)) == 0:
            added += 1
        os.close(pfd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        layers["landlock"] = "no_new_privs failed"
        os.close(fd)
        return
    if libc.syscall(ctypes.c_long(restrict), ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
        layers["landlock"] = "restrict_self failed errno %d" % ctypes.get_errno()
        os.close(fd)
        return
    os.close(fd)
    layers["landlock"] = "abi %d (%d rules%s%s)" % (abi, added, ", net" if net else "", ", scoped" if scoped else "")


# Syscalls refused with EPERM, by architecture.
_DENY = {
    "x86_64": {
        "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
        "clone": 56, "fork": 57, "vfork": 58, "clone3": 435, "execve": 59, "execveat": 322,
        "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
        "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "setrlimit": 160, "prlimit64": 302, "setpgid": 109, "setsid": 112,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "reboot": 169, "sethostname": 170, "setdomainname": 171, "swapon": 167,
        "swapoff": 168, "acct": 163, "quotactl": 179, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "keyctl": 250, "add_key": 248, "request_key": 249, "mknod": 133, "mknodat": 259, "iopl": 172,
        "ioperm": 173, "personality": 135, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "fanotify_init": 300, "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114,
        "setresuid": 117, "setresgid": 119, "setgroups": 116, "settimeofday": 164, "clock_settime": 227,
    },
    "aarch64": {
        "socket": 198, "connect": 203, "accept": 202, "bind": 200, "listen": 201, "socketpair": 199,
        "accept4": 242, "clone": 220, "clone3": 435, "execve": 221, "execveat": 281, "kill": 129, "tkill": 130,
        "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "pidfd_open": 434,
        "pidfd_send_signal": 424, "pidfd_getfd": 438, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "setrlimit": 164, "prlimit64": 261, "setpgid": 154,
        "setsid": 157, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "reboot": 142, "sethostname": 161, "setdomainname": 162, "swapon": 224,
        "swapoff": 225, "acct": 89, "quotactl": 60, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "keyctl": 219, "add_key": 217, "request_key": 218, "mknodat": 33, "personality": 92,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "fanotify_init": 262, "setuid": 146, "setgid": 144,
        "setreuid": 145, "setregid": 143, "setresuid": 147, "setresgid": 149, "setgroups": 159,
        "settimeofday": 170, "clock_settime": 112,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _apply_seccomp(layers):
    import platform

    machine = platform.machine()
    if machine not in _DENY:
        layers["seccomp"] = "unsupported arch " + machine
        return
    try:
        ctypes, libc = _libc()
    except OSError as err:
        layers["seccomp"] = "no libc: " + _short(err, 80)
        return
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    kill, allow, eperm = 0x80000000, 0x7FFF0000, 0x00050000 | 1
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH[machine]), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    if machine == "x86_64":
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 ABI calls
    for nr in sorted(set(_DENY[machine].values())):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    raw = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    fbuf = ctypes.create_string_buffer(raw, len(raw))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.cast(fbuf, ctypes.c_void_p))
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        layers["seccomp"] = "no_new_privs failed"
        return
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        layers["seccomp"] = "prctl failed errno %d" % ctypes.get_errno()
        return
    layers["seccomp"] = "%d syscalls denied" % len(set(_DENY[machine].values()))


# --------------------------------------------------------------------------------------------------------------------
# Python-level guard (a speed bump; the layers above are the containment)

_BLOCKED_BUILTINS = ("open", "eval", "exec", "compile", "input", "breakpoint", "help", "exit", "quit", "globals",
                     "locals", "vars", "memoryview", "__import__", "__loader__", "__spec__", "__build_class__")


def _safe_builtins(allowed, module_cache):
    import builtins as _b

    ns = dict(vars(_b))
    for name in _BLOCKED_BUILTINS:
        ns.pop(name, None)
    ns["__build_class__"] = _b.__build_class__  # class statements
    real_getattr, real_setattr, real_delattr, real_hasattr = getattr, setattr, delattr, hasattr

    def _check(name):
        if isinstance(name, str) and name.startswith("__"):
            raise AttributeError("access to dunder attribute %r is not allowed in the sandbox" % name)

    def g(obj, name, *default):
        _check(name)
        return real_getattr(obj, name, *default)

    def s(obj, name, value):
        _check(name)
        return real_setattr(obj, name, value)

    def d(obj, name):
        _check(name)
        return real_delattr(obj, name)

    def h(obj, name):
        _check(name)
        return real_hasattr(obj, name)

    def imp(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 - __import__ signature
        top = str(name).split(".")[0]
        if level != 0 or top not in allowed:
            raise ImportError("import of %r is not allowed in the sandbox (allowed: %s)" % (name, sorted(allowed)))
        real = __import__(name, None, None, fromlist, 0)
        if fromlist or "." not in name:
            mod = real
        else:
            mod = sys.modules[top]
        key = mod.__name__
        if key not in module_cache:  # a per-program copy: assigning module attributes stays in this program
            import types

            copy = types.ModuleType(key)
            copy.__dict__.update(mod.__dict__)
            module_cache[key] = copy
        return module_cache[key]

    def _print(*args, **kwargs):  # output is discarded anyway; skip the formatting cost
        return None

    ns.update(getattr=g, setattr=s, delattr=d, hasattr=h, __import__=imp, print=_print)
    return ns


def _fingerprint(allowed):
    """ids of every attribute of the allowed modules and of their classes: detects monkeypatching."""
    fp = {}
    for name in sorted(allowed):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            fp[(name, attr)] = id(val)
            if isinstance(val, type) and getattr(val, "__module__", None) == name:
                for a2, v2 in list(vars(val).items()):
                    fp[(name, attr, a2)] = id(v2)
    import builtins as _b

    for attr, val in list(vars(_b).items()):
        fp[("builtins", attr)] = id(val)
    return fp


# --------------------------------------------------------------------------------------------------------------------
# Running programs


def _load(source, entry, guard, allowed, call_timeout):
    module_cache = {}
    ns = {"__name__": "lws_program"}
    if guard:
        ns["__builtins__"] = _safe_builtins(allowed, module_cache)
    code = compile(source, "<program>", "exec")
    _STATE.busy = True
    try:
        exec(code, ns)  # noqa: S102 - the sandbox's job
    finally:
        _STATE.busy = False
    fn = ns.get(entry)
    if not callable(fn):
        raise LookupError("the program defines no callable %r" % entry)
    return fn


def _run(fn, rows, kind, k, max_timeouts):
    from array import array

    out = array("h") if kind == "class" else array("d")
    n_exc = n_invalid = n_timeout = 0
    first_error = None
    nan = float("nan")
    bad = -1 if kind == "class" else nan
    st = _STATE
    st.busy = True
    disabled = False
    try:
        for args in rows:
            if disabled:
                out.append(bad)
                continue
            st.calls += 1
            try:
                v = fn(*args)
                t = type(v)
                if kind == "class":
                    if t is int and -1 <= v < k:
                        out.append(v)
                    elif v is None:
                        out.append(-1)
                    else:
                        n_invalid += 1
                        out.append(-1)
                else:
                    if (t is float or t is int) and v == v and v not in (float("inf"), float("-inf")):
                        out.append(float(v))
                    elif v is None:
                        out.append(nan)
                    else:
                        n_invalid += 1
                        out.append(nan)
            except _Timeout:
                n_timeout += 1
                out.append(bad)
                if first_error is None:
                    first_error = "timeout: a call ran past the per-call limit"
                if n_timeout >= max_timeouts:
                    disabled = True
            except BaseException as err:  # noqa: BLE001 - a program error is an abstain, whatever it is
                n_exc += 1
                out.append(bad)
                if first_error is None:
                    try:
                        first_error = _describe(err)
                    except BaseException:  # noqa: BLE001
                        first_error = "<exception>"
                del err
    finally:
        st.busy = False
    while len(out) < len(rows):  # a _Timeout escaped the loop bookkeeping
        out.append(bad)
    return out, {"n_exceptions": n_exc, "n_invalid": n_invalid, "n_timeouts": n_timeout,
                 "first_error": first_error, "disabled": disabled}


def main():
    cfg = json.loads(sys.argv[1])
    rfd, wfd = os.dup(0), os.dup(1)
    try:
        _setup_and_serve(cfg, rfd, wfd)
    except BaseException as err:  # noqa: BLE001 - tell the parent why the worker could not start
        import traceback

        try:
            _send(wfd, {"type": "fatal", "detail": _short(_describe(err) + " | " + traceback.format_exc(), 1500)})
        except BaseException:  # noqa: BLE001
            pass
        raise SystemExit(1) from None


def _setup_and_serve(cfg, rfd, wfd):
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    scratch = cfg["scratch"]
    os.chdir(scratch)
    os.environ.clear()
    os.environ.update({"HOME": scratch, "TMPDIR": scratch, "LC_ALL": "C.UTF-8"})
    allowed = frozenset(cfg["allowed_imports"])
    for name in sorted(allowed):
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001 - a missing optional module is simply not importable later
            pass
    import array  # noqa: F401 - everything the worker needs is imported before privileges are dropped
    import ctypes  # noqa: F401
    import platform  # noqa: F401
    import resource  # noqa: F401
    import tempfile
    import types  # noqa: F401

    tempfile.tempdir = scratch
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    layers = {}
    _apply_rlimits(cfg, layers)
    _drop_privileges(layers, cfg.get("drop_privileges", True))
    if cfg.get("landlock", True):
        _apply_landlock(cfg, layers)
    else:
        layers["landlock"] = "disabled by config"
    if cfg.get("seccomp", True):
        _apply_seccomp(layers)
    else:
        layers["seccomp"] = "disabled by config"
    call_timeout = float(cfg["call_timeout"])
    tick = max(call_timeout / 4.0, 0.005)
    _STATE.ticks_per_call = 4
    signal.signal(signal.SIGALRM, _tick)
    signal.setitimer(signal.ITIMER_REAL, tick, tick)
    guard = bool(cfg.get("python_guard", True))
    baseline = _fingerprint(allowed)
    _send(wfd, {"type": "hello", "pid": os.getpid(), "layers": layers})
    programs = {}
    cpu_cap = float(cfg["cpu_seconds"]) * 0.8
    while True:
        try:
            msg = _recv(rfd)
        except (EOFError, OSError):
            return
        if msg.get("type") == "stop":
            return
        rows, kind, k = msg["rows"], msg["kind"], int(msg["num_classes"])
        for pid, phash, source, entry in msg["programs"]:
            t0 = time.perf_counter()
            fn = programs.get(phash)
            load_error = None
            if fn is None:
                try:
                    fn = _load(source, entry, guard, allowed, call_timeout)
                    programs[phash] = fn
                except BaseException as err:  # noqa: BLE001
                    load_error = "load failed: " + _describe(err)
            if load_error is not None:
                from array import array

                bad = -1 if kind == "class" else float("nan")
                out = array("h" if kind == "class" else "d", [bad] * len(rows))
                info = {"n_exceptions": 0, "n_invalid": 0, "n_timeouts": 0, "first_error": load_error,
                        "disabled": True}
            else:
                out, info = _run(fn, rows, kind, k, int(cfg["max_timeouts"]))
            if _fingerprint(allowed) != baseline:
                info["first_error"] = "the program modified shared modules or builtins; the worker is recycled"
                info["tampered"] = True
                info["disabled"] = True
                out = type(out)(out.typecode, [(-1 if kind == "class" else float("nan"))] * len(rows))
            info.update(type="result", task=msg["task"], program=pid, n=len(rows),
                        seconds=round(time.perf_counter() - t0, 6))
            _send(wfd, info, out.tobytes())
            if info.get("tampered"):
                return
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF)
        _send(wfd, {"type": "done", "task": msg["task"], "cpu": used.ru_utime + used.ru_stime,
                    "recycle": used.ru_utime + used.ru_stime > cpu_cap})


if __name__ == "__main__":
    main()
