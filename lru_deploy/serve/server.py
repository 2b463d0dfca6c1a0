"""`lru-deploy serve`: the tritonserver that PyPI's nvidia-pytriton wheel bundles, on 127.0.0.1, in the foreground.

    with TritonServer("triton/lru", http_port=8000, grpc_port=8001) as server:   # returns once ready
        ...                                                                    # stopped on leaving

The wheel ships `tritonserver` with the Python backend only, and not in a layout the server can load: the
backend folder is assembled in a temporary folder (`libtriton_python.so`, `triton_python_backend_utils.py` and
the stub built for this Python, `python_backend_stubs/X.Y/triton_python_backend_stub`), and the server runs
with LD_LIBRARY_PATH at `nvidia_pytriton.libs`. The stub runs the first `python3` on PATH, so this
environment's bin folder goes first: this environment must hold lru-deploy and numpy < 2 (with numpy 2 the
stub's responses come back empty, silently).

Only the repository's Python-backend models are loaded (explicit model control); the others (Triton's
onnxruntime and TensorRT backends) are named in the log as skipped. Stopping sends SIGTERM to the server's
own pid, waits, then ends any stub process that outlived it by its own pid (checked against its start time
so a reused pid is left alone) and unlinks the shared-memory regions those stubs were given.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import ServeError
from . import config as tc

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVER_FLAGS = ("--allow-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
                "--model-control-mode=explicit", "--strict-readiness=true")
# Lines every CPU-only start prints, about what was turned off on purpose (no GPU, no pinned memory pool); shown
# with --verbose only.
EXPECTED_NOISE = ("CudaDriverHelper has not been initialized", "failed to allocate pinned system memory")
ENV_HINT = ("use an environment with nvidia-pytriton, numpy<2 and lru-deploy: `make triton-env` makes "
            ".venv/triton (then .venv/triton/bin/lru-deploy serve ...), or pip install nvidia-pytriton 'numpy<2'")


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of the nvidia-pytriton wheel that the server needs."""

    server: Path  # tritonserver
    libs: Path  # nvidia_pytriton.libs
    backend_lib: Path  # libtriton_python.so
    backend_utils: Path  # triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    python_bin: Path  # the bin folder whose python3 the stub runs


def find_install() -> TritonInstall:
    """The tritonserver of this environment's nvidia-pytriton, with the checks the stub needs (numpy < 2)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(f"nvidia-pytriton (which bundles tritonserver) is not installed in this environment "
                         f"({sys.prefix})", ENV_HINT)
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = root / "python_backend_stubs"
    inst = TritonInstall(server=root / "bin" / "tritonserver", libs=pkg.parent / "nvidia_pytriton.libs",
                         backend_lib=root / "backends" / "python" / "libtriton_python.so",
                         backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
                         stub=stubs / version / "triton_python_backend_stub", python_bin=Path(sys.executable).parent)
    missing = [str(p) for p in (inst.server, inst.libs, inst.backend_lib, inst.backend_utils) if not p.exists()]
    problems = [f"missing from the nvidia-pytriton install: {p}" for p in missing]
    if not inst.stub.is_file():
        have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        problems.append(f"no Python backend stub for Python {version} (the wheel has {', '.join(have) or 'none'})")
    import numpy
    if int(numpy.__version__.split(".")[0]) >= 2:
        problems.append(f"numpy {numpy.__version__} here: the Python backend's stub needs numpy < 2 (with numpy 2 "
                        f"its responses come back empty)")
    if problems:
        raise ServeError("cannot run the bundled Triton server from this environment:", ENV_HINT, problems)
    return inst


def repository_models(repo: Path) -> dict[str, str]:
    """model name -> backend, for every model folder of `repo` (each config.pbtxt checked by Triton's schema)."""
    if not repo.is_dir():
        raise ServeError(f"{repo} is not a folder", "pass the folder that `lru-deploy triton` wrote")
    models = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        message = tc.parse_config(cfg.read_text(), str(cfg))
        models[cfg.parent.name] = tc.config_backend(message)
    if not models:
        raise ServeError(f"{repo} holds no model (no */config.pbtxt)", "pass the folder that `lru-deploy triton` wrote")
    return models


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as servers bind: connections of a server
    that just stopped (TIME_WAIT) do not count as the port being in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class _Proc:
    pid: int
    started: str  # /proc/PID/stat field 22: tells a reused pid apart
    shm: Optional[str]  # the shared-memory region a stub was given


def _stat(pid: int) -> Optional[tuple[int, str]]:
    """(parent pid, start time) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19]


def _children(pid: int) -> list[_Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _stat(int(entry.name))
        if st is None or st[0] != pid:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        shm = argv[2].decode() if len(argv) > 2 and argv[2].startswith(b"triton_python_backend_shm") else None
        found.append(_Proc(int(entry.name), st[1], shm))
    return found


def _alive(p: _Proc) -> bool:
    st = _stat(p.pid)
    return st is not None and st[1] == p.started


class TritonServer:
    """The bundled tritonserver on 127.0.0.1 serving the Python-backend models of a repository."""

    def __init__(self, repo, http_port: int = 8000, grpc_port: int = 8001, *, startup_timeout: float = 300.0,
                 exit_timeout: int = 10, verbose: bool = False):
        self.repo = Path(repo).resolve()
        self.http_port, self.grpc_port = int(http_port), int(grpc_port)
        self.startup_timeout, self.exit_timeout, self.verbose = startup_timeout, exit_timeout, verbose
        self.proc: Optional[subprocess.Popen] = None
        self.stubs: dict[int, _Proc] = {}
        self.tmp: Optional[Path] = None
        self.loaded: list[str] = []
        self.startup_s: Optional[float] = None
        self._tail: collections.deque = collections.deque(maxlen=40)
        self._reader: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"{HOST}:{self.http_port}"

    def start(self, stop: Optional[threading.Event] = None) -> "TritonServer":
        """Start and wait until the server and its models are ready (or `stop` is set). Raises ServeError."""
        inst = find_install()
        models = repository_models(self.repo)
        self.loaded = [m for m, b in models.items() if b == "python"]
        skipped = {m: b for m, b in models.items() if b != "python"}
        if not self.loaded:
            raise ServeError(f"{self.repo} has no Python-backend model, the only kind the bundled server runs",
                             "serve it with NVIDIA's container (the repository's README.md says how)")
        busy = [f"{what} port {p} on {HOST} is in use" for what, p in (("HTTP", self.http_port),
                                                                       ("gRPC", self.grpc_port)) if not port_free(p)]
        if self.http_port == self.grpc_port:
            busy.append(f"--http-port and --grpc-port are both {self.http_port}")
        if busy:
            raise ServeError("cannot start the Triton server:", "pick free ports with --http-port and --grpc-port",
                             busy)
        for m, b in skipped.items():
            log.info("skipping model %s: the bundled server has no %s backend (NVIDIA's container has it)", m, b)
        self.tmp = Path(tempfile.mkdtemp(prefix="lru-deploy-triton-"))
        backend = self.tmp / "backends" / "python"
        backend.mkdir(parents=True)
        for src in (inst.backend_lib, inst.backend_utils, inst.stub):
            shutil.copy2(src, backend / src.name)
        env = dict(os.environ)
        import sysconfig
        libdirs = [str(inst.libs)] + [d for d in (sysconfig.get_config_var("LIBDIR"),) if d]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.pathsep.join([str(inst.python_bin), env.get("PATH", "")])
        cmd = [str(inst.server), f"--model-repository={self.repo}", f"--backend-directory={self.tmp / 'backends'}",
               *SERVER_FLAGS, *[f"--load-model={m}" for m in self.loaded],
               f"--http-address={HOST}", f"--http-port={self.http_port}",
               f"--grpc-address={HOST}", f"--grpc-port={self.grpc_port}",
               f"--exit-timeout-secs={self.exit_timeout}", f"--log-info={'true' if self.verbose else 'false'}"]
        t0 = time.perf_counter()
        log.debug("starting %s", " ".join(cmd))
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            self._cleanup_files()
            raise ServeError(f"cannot run {inst.server}: {e.strerror or e}", ENV_HINT) from None
        self._reader = threading.Thread(target=self._pump, name="tritonserver-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(stop)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        self._record_stubs()
        return self

    def _pump(self) -> None:
        """Forward the server's output to stderr, keeping its last lines for error messages."""
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._tail.append(line)
            if self.verbose or not any(n in line for n in EXPECTED_NOISE):
                sys.stderr.write(line + "\n")
        self.proc.stdout.close()

    def _wait_ready(self, stop: Optional[threading.Event]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in self.loaded]
        while True:
            if stop is not None and stop.is_set():
                return
            rc = self.proc.poll()
            if rc is not None:
                if self._reader is not None:
                    self._reader.join(timeout=2)
                errors = [ln if len(ln) <= 300 else ln[:300] + " ..." for ln in self._tail
                          if (ln[:1] == "E" or "error" in ln.lower()) and not any(n in ln for n in EXPECTED_NOISE)]
                raise ServeError(f"tritonserver exited with code {rc} while starting on {self.repo}:",
                                 "its messages are above: a model that failed to load says why", errors[-4:])
            if all(_http_ok(f"http://{self.url}{p}") for p in paths):
                return
            if time.monotonic() > deadline:
                raise ServeError(f"the Triton server on {self.url} was not ready after {self.startup_timeout:g} s",
                                 "its messages are above; a slow model load may need a larger startup timeout")
            time.sleep(0.1)

    def _record_stubs(self) -> None:
        if self.proc is not None:
            for p in _children(self.proc.pid):
                self.stubs[p.pid] = p

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> Optional[int]:
        """SIGTERM to the server, then to any stub that outlived it; frees their shared memory. Returns the exit
        code of the server (None if it never started)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self._record_stubs()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=self.exit_timeout + 10)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver (pid %d) did not stop within %d s of SIGTERM; killing it",
                                self.proc.pid, self.exit_timeout + 10)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            rc = self.proc.returncode
            if self._reader is not None:
                self._reader.join(timeout=5)
        self._end_stubs()
        self._cleanup_files()
        return rc

    def _end_stubs(self) -> None:
        left = [p for p in self.stubs.values() if _alive(p)]
        for p in left:
            log.warning("stub process %d outlived the server; ending it", p.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in left:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
        for p in self.stubs.values():
            if p.shm:
                shm = Path("/dev/shm") / p.shm
                try:
                    shm.unlink()
                    log.info("freed the shared memory %s that a stub left", shm)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        log.warning("cannot free the shared memory %s: %s", shm, e.strerror or e)

    def _cleanup_files(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_forever(repo, http_port: int = 8000, grpc_port: int = 8001, *, verbose: bool = False) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM; a clean stop returns 0."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(repo, http_port, grpc_port, verbose=verbose)
    try:
        server.start(stop)
        if not stop.is_set():
            log.info("Triton serving %s on http://%s and grpc %s:%d (models %s; ready in %.1f s); Ctrl-C stops it",
                     server.repo, server.url, HOST, server.grpc_port, ", ".join(server.loaded), server.startup_s)
        while not stop.is_set() and server.alive:
            time.sleep(0.2)  # not stop.wait(): the handler's stop.set() must never wait on a lock held here
        if not stop.is_set():
            raise ServeError(f"tritonserver stopped on its own (exit code {server.proc.returncode})",
                             "its messages are above")
        log.info("stopping the Triton server")
    finally:
        rc = server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("Triton server stopped (exit code %s)", rc)
    return 0
