"""Run a real Triton Inference Server on a model repository, and stop it for sure.

``launcher="local"``: the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel of the
serving venv (``.venv-serve``, built from requirements/serve.lock). Three things make its Python
backend work outside NGC's container, all done here:

* the backend directory is a private copy (``<runtime>/backends/python``) of the wheel's, plus the
  ``triton_python_backend_stub`` built for the serving interpreter's Python version;
* the stub links ``libpython3.X.so.1.0``; the serving interpreter's own ``LIBDIR`` goes first on
  ``LD_LIBRARY_PATH`` (a system libpython of another build breaks stdlib extensions such as
  ``_ssl``: ``undefined symbol: _PyModule_Add``), then the wheel's ``nvidia_pytriton.libs``;
* the stub's interpreter sees the serving venv's site-packages through ``PYTHONPATH``.

``launcher="apptainer"``: ``apptainer exec --nv [--bind ...] <image> tritonserver ...`` with the
image's own backends (an NGC ``tritonserver:<yy.mm>-py3`` image with torch, transformers and
peft added). The repository and the model/adapter directories it names are bound at the same
paths. Only constructed and unit-tested here (no apptainer on this machine).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

SERVE_VENV_ENV = "REASONFLOW_SERVE_VENV"
REPO_ROOT = Path(__file__).resolve().parents[3]  # src/reasonflow/serve/triton.py -> checkout


class TritonError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_serve_venv(explicit=None) -> Path:
    """The serving venv: ``explicit``, ``$REASONFLOW_SERVE_VENV``, ``./.venv-serve``, or the checkout's."""
    candidates = [explicit, os.environ.get(SERVE_VENV_ENV), Path.cwd() / ".venv-serve", REPO_ROOT / ".venv-serve"]
    for c in candidates:
        if c and (Path(c) / "bin" / "python").exists():
            return Path(c).absolute()
    tried = [str(c) for c in candidates if c]
    raise TritonError(
        f"serving venv not found (tried {tried}): create it with `python3.11 -m venv .venv-serve && "
        f".venv-serve/bin/pip install -r requirements/serve.lock` (or set ${SERVE_VENV_ENV})")


@dataclass(frozen=True)
class ServeEnv:
    venv: Path
    python: str
    version: str  # "3.11"
    libdir: str  # the interpreter's LIBDIR (its libpython)
    site_packages: tuple[str, ...]
    pytriton: Path  # .../site-packages/pytriton

    @property
    def tritonserver_dir(self) -> Path:
        return self.pytriton / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.pytriton.parent / "nvidia_pytriton.libs"

    @property
    def binary(self) -> Path:
        return self.tritonserver_dir / "bin" / "tritonserver"

    @property
    def libpython(self) -> Path:
        return Path(self.libdir) / f"libpython{self.version}.so.1.0"

    @property
    def stub(self) -> Path:
        return self.tritonserver_dir / "python_backend_stubs" / self.version / "triton_python_backend_stub"


# site_packages: the venv's site dirs plus what their .pth files add (e.g. a --target folder of
# wheels on a GPU node), never the standard library or the caller's working directory
_PROBE = r"""
import importlib.util, json, os, site, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
std = {os.path.realpath(sysconfig.get_path(k)) for k in ("stdlib", "platstdlib")}
extra = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) not in std
         and not p.endswith("lib-dynload") and os.path.realpath(p) != os.path.realpath(os.getcwd())]
print(json.dumps({
    "python": sys.executable, "version": "%d.%d" % sys.version_info[:2],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "site_packages": list(dict.fromkeys(site.getsitepackages() + extra)),
    "pytriton": list(spec.submodule_search_locations)[0] if spec else None}))
"""


@lru_cache(maxsize=4)
def serve_env(venv=None) -> ServeEnv:
    """Facts about the serving venv (asks its interpreter once)."""
    venv = find_serve_venv(venv)
    python = venv / "bin" / "python"
    out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise TritonError(f"{python} does not run: {out.stderr.strip()[-2000:]}")
    info = json.loads(out.stdout)
    if not info["pytriton"]:
        raise TritonError(f"nvidia-pytriton is not installed in {venv} (pip install -r requirements/serve.lock)")
    env = ServeEnv(venv, info["python"], info["version"], info["libdir"], tuple(info["site_packages"]),
                   Path(info["pytriton"]))
    for what in (env.binary, env.stub, env.tritonserver_dir / "backends" / "python" / "libtriton_python.so"):
        if not what.exists():
            raise TritonError(f"{what} missing from the nvidia-pytriton wheel in {venv}")
    if not env.libpython.exists():
        log.warning("%s has no %s (Python built without --enable-shared): the Python-backend stub will use the "
                    "system's libpython%s, which works only if it is the same build", env.python,
                    env.libpython.name, env.version)
    return env


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class TritonServer:
    """``with TritonServer(repo, log_path) as srv:`` starts Triton on free loopback ports, waits until
    ``/v2/health/ready``, and on exit (also on exceptions) stops it: SIGTERM to the server,
    SIGKILL after ``grace`` seconds. ``srv.url`` is its HTTP endpoint."""

    def __init__(self, repo_dir, log_path, *, launcher: str = "local", image: str | None = None,
                 serve_venv=None, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, metrics: bool = True,
                 ready_timeout: float = 300.0, grace: float = 15.0, log_verbose: int = 0,
                 binds: tuple[str, ...] | list[str] = (), extra_args: tuple[str, ...] | list[str] = (),
                 start_attempts: int = 3):
        if launcher not in ("local", "apptainer"):
            raise ValueError(f"launcher must be 'local' or 'apptainer', got {launcher!r}")
        if launcher == "apptainer" and not image:
            raise ValueError("launcher='apptainer' needs image= (a .sif or docker:// name)")
        self.repo_dir = Path(repo_dir).absolute()
        self.log_path = Path(log_path).absolute()
        self.launcher, self.image, self._serve_venv = launcher, image, serve_venv
        self.host = host
        self._ports_fixed = http_port is not None
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics = metrics
        self.metrics_port = metrics_port or (free_port(host) if metrics else 0)
        self.ready_timeout, self.grace, self.log_verbose = ready_timeout, grace, log_verbose
        self.binds, self.extra_args = list(binds), list(extra_args)
        self.start_attempts = start_attempts
        self.proc: subprocess.Popen | None = None
        self._runtime: Path | None = None

    # ---------------------------------------------------------------- construction
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def server_args(self, backend_dir: str | None) -> list[str]:
        args = [
            "--model-repository", str(self.repo_dir),
            "--http-address", self.host, "--http-port", str(self.http_port),
            "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "true" if self.metrics else "false",
        ]
        if self.metrics:
            args += ["--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
                     "--allow-gpu-metrics", "false" if self.launcher == "local" else "true"]
        args += [
            "--allow-sagemaker", "false", "--allow-vertex-ai", "false",
            "--exit-on-error", "true", "--strict-readiness", "true",
            "--disable-auto-complete-config", "--exit-timeout-secs", str(max(1, int(self.grace) - 2)),
            "--log-verbose", str(self.log_verbose),
        ]
        if backend_dir:
            args += ["--backend-directory", backend_dir]
        if self.launcher == "local":  # CPU-only wheel build: no CUDA memory pools to set up
            args += ["--pinned-memory-pool-byte-size", "0", "--cuda-memory-pool-byte-size", "0:0",
                     "--min-supported-compute-capability", "0"]
        return args + self.extra_args

    def apptainer_binds(self) -> list[str]:
        """Host paths the container must see at the same place: the repository and the
        model/adapter directories its serving.json names, then ``binds``."""
        paths = [str(self.repo_dir)]
        for info in sorted(self.repo_dir.glob("*/serving.json")):
            data = json.loads(info.read_text())
            paths += [data.get("base_model", ""), *data.get("adapters", {}).values()]
        for mj in sorted(self.repo_dir.glob("*/1/multi_lora.json")):
            paths += list(json.loads(mj.read_text()).values())
        out = []
        for p in [*(f"{p}:{p}" for p in paths if p), *self.binds]:
            if p not in out:
                out.append(p)
        return out

    def command(self, backend_dir: str | None = None) -> list[str]:
        """The argv that starts the server (for ``local``, ``backend_dir`` is the prepared copy)."""
        if self.launcher == "apptainer":
            binds = [x for b in self.apptainer_binds() for x in ("--bind", b)]
            return ["apptainer", "exec", "--nv", *binds, str(self.image), "tritonserver",
                    *self.server_args(None)]
        env = serve_env(self._serve_venv)
        return [str(env.binary), *self.server_args(backend_dir or str(self._runtime / "backends"))]

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        if self.launcher == "apptainer":
            return env
        se = serve_env(self._serve_venv)
        ld = ([se.libdir] if se.libpython.exists() else []) + [str(se.libs)]
        env["LD_LIBRARY_PATH"] = ":".join(ld + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
        # the stub's interpreter: serving venv only (not the caller's venv, e.g. numpy 2)
        env["PYTHONPATH"] = ":".join(se.site_packages)
        env.pop("PYTHONHOME", None)
        env["VIRTUAL_ENV"] = str(se.venv)
        env["PATH"] = f"{se.venv / 'bin'}:{env.get('PATH', '')}"
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def _prepare_backends(self) -> None:
        se = serve_env(self._serve_venv)
        self._runtime = Path(tempfile.mkdtemp(prefix="reasonflow-triton-"))
        py = self._runtime / "backends" / "python"
        shutil.copytree(se.tritonserver_dir / "backends" / "python", py)
        shutil.copy2(se.stub, py / "triton_python_backend_stub")

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise TritonError("already started")
        try:
            if self.launcher == "local":
                self._prepare_backends()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, self.start_attempts + 1):
                try:
                    self._start_once()
                    return self
                except TritonError as e:
                    self._terminate()
                    port_clash = "already in use" in self.log_tail(4000).lower()
                    if not port_clash or self._ports_fixed or attempt == self.start_attempts:
                        raise
                    log.warning("Triton ports taken (%s); retrying on new ports", e)
                    self.http_port, self.grpc_port = free_port(self.host), free_port(self.host)
                    self.metrics_port = free_port(self.host) if self.metrics else 0
        except BaseException:  # also KeyboardInterrupt while waiting: leave nothing running
            self.stop()
            raise
        return self

    def _start_once(self) -> None:
        cmd = self.command()
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n==== {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
            fh.flush()
            self._log_offset = fh.tell()
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.environment(), start_new_session=True)
        log.info("tritonserver pid %d, http %s, log %s", self.proc.pid, self.url, self.log_path)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise TritonError(f"tritonserver exited with code {code} before it was ready; log "
                                  f"{self.log_path} ends:\n{self.log_tail()}")
            try:
                status, _ = _http_get(f"{self.url}/v2/health/ready", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TritonError(f"tritonserver not ready after {self.ready_timeout:.0f} s; log {self.log_path} "
                                  f"ends:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of this start's part of the server log, led by its error lines."""
        try:
            with open(self.log_path, "rb") as fh:
                start = getattr(self, "_log_offset", 0)
                fh.seek(start)
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        errors = [ln[:800] for ln in text.splitlines()
                  if re.match(r"E\d{4} ", ln) and "CudaDriverHelper" not in ln]
        head = ("error lines:\n" + "\n".join(errors[:8]) + "\n---- log tail ----\n") if errors else ""
        return head + text[-chars:]

    def stop(self) -> int | None:
        """SIGTERM the server (it unloads its models), SIGKILL its process group (server, backend stubs and
        what they spawned) after ``grace`` or once it has exited."""
        try:
            return self._terminate()
        finally:
            self._cleanup_runtime()

    def _terminate(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session=True: the server leads its own group
        if proc.poll() is None:
            # SIGTERM to the server alone: it unloads its models, so a model's finalize runs (the vLLM
            # model stops its engine core cleanly); the whole group is SIGKILLed below in any case
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                code = proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s: SIGKILL", self.grace)
                self._signal(pgid, signal.SIGKILL)
                code = proc.wait()
        else:
            code = proc.returncode
        # backend stubs left behind by a crashed or killed server share its group
        self._signal(pgid, signal.SIGKILL, quiet=True)
        return code

    @staticmethod
    def _signal(pgid: int, sig, quiet: bool = False) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as e:  # pragma: no cover
            if not quiet:
                log.warning("cannot signal process group %d: %s", pgid, e)

    def _cleanup_runtime(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- queries
    def ready(self) -> bool:
        try:
            return _http_get(f"{self.url}/v2/health/ready")[0] == 200
        except OSError:
            return False

    def stats(self, model: str) -> dict:
        """``/v2/models/<model>/stats`` of the running server."""
        status, body = _http_get(f"{self.url}/v2/models/{model}/stats", timeout=10)
        if status != 200:
            raise TritonError(f"stats of {model}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

