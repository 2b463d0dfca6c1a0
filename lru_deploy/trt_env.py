"""What an engine is tied to, found lazily: TensorRT's presence and version, the CUDA runtime, the GPU, and
the rules by which an engine built on one machine may run on another. Build and the TensorRT session both ask
here; nothing imports tensorrt or cuda at module load.
"""
from __future__ import annotations

import importlib.util
import re
import platform
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

from .errors import EngineError


INSTALL_HINT = ("install TensorRT from NVIDIA and cuda-python for your driver on a machine with an NVIDIA GPU: "
                "pip install 'lru-deploy[trt-cu12]' (any driver for CUDA 12 or later) or 'lru-deploy[trt-cu13]' "
                "(a driver for CUDA 13), with --extra-index-url https://pypi.nvidia.com, or use NVIDIA's "
                "containers; everything else (export, check with ONNX Runtime, generate) runs without them")

# Names that TensorRT's Python module has and a stand-in `tensorrt` does not (an empty folder, or tensorrt-stubs,
# which installs `tensorrt/` holding only .pyi files: Python imports that as an empty namespace package).
REAL_TENSORRT_NAMES = ("__version__", "Builder")


@dataclass(frozen=True)
class RuntimeInfo:
    """What an engine is tied to: the GPU, its compute capability ("9.0"), TensorRT's version, the platform."""

    gpu_name: str
    compute_capability: str
    trt_version: str
    platform: str = ""


def current_platform() -> str:
    return f"{platform.system().lower()}-{platform.machine().lower()}"


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(v)))


def release(v: str) -> tuple[int, int, int]:
    """major.minor.patch of a TensorRT version: '10.13.0.35' (Python's trt.__version__, with the build number)
    and '10.13.0' (C++ getInferLibVersion()) are the same release; missing parts count as 0."""
    parts = version_tuple(v)[:3]
    return tuple(parts + (0,) * (3 - len(parts)))  # type: ignore[return-value]


# (major that built a version-compatible engine, later major that runs it): the only cross-major pairs NVIDIA's
# support matrix (TensorRT 11.4.1, "Engine Portability") lists; within a major, later minors run earlier ones.
CROSS_MAJOR = {(8, 10), (10, 11)}


def version_problem(built: str, running: str, version_compatible: bool) -> Optional[str]:
    """Why an engine built with TensorRT `built` cannot run with TensorRT `running`, or None.

    Compared as major.minor.patch. A plain engine runs only with the release that built it. A version-compatible
    one (built with 8.6 or later) runs with the same or a later release of the same major, and across majors only
    from 8 to 10 and from 10 to 11."""
    b, r = release(built), release(running)
    if not version_compatible:
        if b != r:
            return (f"built with TensorRT {built}, this is TensorRT {running}; an engine runs only with the "
                    f"TensorRT release that built it unless built with --version-compatible")
        return None
    if b < (8, 6, 0):
        return f"marked version-compatible but built with TensorRT {built}; version compatibility starts at 8.6"
    if r < b:
        return (f"TensorRT {running} is older than the {built} that built this version-compatible engine (it runs "
                f"on the same or a later TensorRT only)")
    if r[0] != b[0] and (b[0], r[0]) not in CROSS_MAJOR:
        pairs = ", ".join(f"{x} -> {y}" for x, y in sorted(CROSS_MAJOR))
        return (f"built with TensorRT {built}, this is TensorRT {running}: a version-compatible engine runs on "
                f"later releases of its own major and across majors only for {pairs}")
    return None


def _as_dict(manifest) -> dict:
    """An engine manifest as the dict of its manifest.json (an EngineManifest, or that dict itself)."""
    return manifest.to_dict() if hasattr(manifest, "to_dict") else manifest


def compatibility_problems(manifest, running: RuntimeInfo) -> list[str]:
    """Why an engine folder cannot run on this GPU and TensorRT, as TensorRT documents engine compatibility.

    `manifest` is the folder's engine manifest (an EngineManifest or its dict). TensorRT version: see
    `version_problem`. GPU: by default only on the GPU model it was built on; hardware_compat 'same-cc' on any GPU
    of the same compute capability; 'ampere+' on compute capability 8.0 and newer. Engines are not portable
    across platforms.
    """
    m = _as_dict(manifest)
    problems = []
    built_trt = str(m.get("tensorrt", {}).get("version", "?"))
    gpu = m.get("gpu", {})
    built_gpu, built_cc = str(gpu.get("name", "?")), str(gpu.get("compute_capability", "?"))
    hw = m.get("hardware_compat", "none")
    why = version_problem(built_trt, running.trt_version, bool(m.get("version_compatible")))
    if why:
        problems.append(why)
    rcc, bcc = version_tuple(running.compute_capability), version_tuple(built_cc)
    if hw == "ampere+":
        if rcc < (8, 0):
            problems.append(f"built for Ampere and newer GPUs (hardware_compat ampere+), but {running.gpu_name} "
                            f"has compute capability {running.compute_capability} (needs 8.0 or newer)")
    elif hw == "same-cc":
        if rcc != bcc:
            problems.append(f"built for compute capability {built_cc} (hardware_compat same-cc), but "
                            f"{running.gpu_name} has compute capability {running.compute_capability}")
    elif hw == "none":
        if rcc != bcc or running.gpu_name != built_gpu:
            problems.append(f"built for {built_gpu} (compute capability {built_cc}), this GPU is "
                            f"{running.gpu_name} (compute capability {running.compute_capability}); without "
                            f"--hardware-compat an engine runs only on the GPU model that built it")
    else:
        problems.append(f"unknown hardware_compat {hw!r} in the manifest (known: {', '.join(HW_COMPAT)})")
    built_platform = m.get("platform")
    if built_platform and running.platform and built_platform != running.platform:
        problems.append(f"built on {built_platform}, this is {running.platform}; engines are not portable "
                        f"across platforms")
    return problems


def ensure_compatible(manifest, running: RuntimeInfo, where: str = "this engine folder") -> None:
    problems = compatibility_problems(manifest, running)
    if problems:
        src = _as_dict(manifest).get("source", {}).get("export_dir", "EXPORT_DIR")
        raise EngineError(f"{where} cannot run here:",
                          f"rebuild the engines on this machine: lru-deploy build {src}", problems)


def import_cudart():
    """cuda-python's runtime module (cuda.bindings.runtime, or cuda.cudart before 12.6), or None without it."""
    if importlib.util.find_spec("cuda") is None:
        return None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def gpu_info(device: int = 0) -> tuple[Optional[tuple[str, str]], str]:
    """((name, compute capability), '') for a CUDA device, or (None, why not). cuda-python, else nvidia-smi."""
    cudart = import_cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            return None, cuda_failure(cudart, err)
        if device >= count:
            return None, f"CUDA device {device} does not exist ({count} device(s))"
        err, prop = cudart.cudaGetDeviceProperties(device)
        if int(err) != 0:
            return None, f"cannot query CUDA device {device}: {cudart.cudaGetErrorString(err)[1].decode()}"
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return (name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}"), ""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "no NVIDIA driver found (neither cuda-python nor nvidia-smi is available)"
    try:
        res = subprocess.run([smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi failed: {e}"
    line = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""
    if "," not in line:
        return None, f"nvidia-smi found no usable GPU {device}: {(res.stderr or res.stdout).strip()[:200]}"
    name, cc = (s.strip() for s in line.rsplit(",", 1))
    return (name, cc), ""


# cudaErrorInsufficientDriver: what cudart returns both for a driver older than its runtime and for no driver
CUDA_ERROR_INSUFFICIENT_DRIVER = 35


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_failure(cudart, err) -> str:
    """A CUDA runtime error as the user can act on it. cudart reports "driver version is insufficient" also when
    there is no driver at all; cudaDriverGetVersion tells them apart (it gives 0 where no driver is installed)."""
    derr, driver = cudart.cudaDriverGetVersion()
    if int(derr) == 0 and int(driver) == 0:
        return "no NVIDIA driver is installed (the CUDA driver library could not be found)"
    if int(err) == CUDA_ERROR_INSUFFICIENT_DRIVER and int(derr) == 0:
        _, runtime = cudart.cudaRuntimeGetVersion()
        return (f"the NVIDIA driver supports CUDA {_cuda_version(int(driver))}, older than the CUDA "
                f"{_cuda_version(int(runtime))} runtime of the installed cuda-python: install the cuda-python of "
                f"your driver's CUDA major (pip install 'lru-deploy[trt-cu12]' for CUDA 12) or update the driver")
    return f"CUDA reports: {cudart.cudaGetErrorString(err)[1].decode()}"


def load_tensorrt():
    """(the tensorrt module, '') where the real TensorRT imports, else (None, why not). Imports it on first use.

    A `tensorrt` that imports but lacks REAL_TENSORRT_NAMES is not TensorRT: installing tensorrt-stubs, for one,
    leaves a `tensorrt/` folder of .pyi files that Python imports as an empty namespace package."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        if e.name == "tensorrt":
            return None, "TensorRT is not installed (the Python package `tensorrt` cannot be imported)"
        return None, f"TensorRT is installed but cannot be imported: {e}"
    except (ImportError, OSError, RuntimeError) as e:
        return None, f"TensorRT is installed but cannot be imported: {e}"
    missing = [n for n in REAL_TENSORRT_NAMES if not hasattr(trt, n)]
    if missing:
        where = getattr(trt, "__file__", None) or next(iter(getattr(trt, "__path__", [])), "?")
        return None, (f"the `tensorrt` importable from {where} is not TensorRT (it has no "
                      f"{' or '.join(missing)}): an empty folder or a stubs-only package such as tensorrt-stubs "
                      f"shadows it")
    return trt, ""


def tensorrt_problem() -> str:
    """'' where the real TensorRT imports, else why not (what the tests that need TensorRT skip with)."""
    return load_tensorrt()[1]


def import_tensorrt():
    """The real tensorrt module, or an EngineError saying why there is none."""
    trt, why = load_tensorrt()
    if trt is None:
        raise EngineError("cannot build or run TensorRT engines on this machine:", INSTALL_HINT, [why])
    return trt


def preflight(device: int = 0) -> RuntimeInfo:
    """TensorRT importable and a CUDA GPU present, or one EngineError naming every missing piece. Does no work."""
    problems = []
    trt, why = load_tensorrt()
    if trt is None:
        problems.append(why)
    gpu, why = gpu_info(device)
    if gpu is None:
        problems.append(f"no CUDA GPU: {why}")
    if problems:
        raise EngineError("cannot build or run TensorRT engines on this machine:", INSTALL_HINT, problems)
    return RuntimeInfo(gpu[0], gpu[1], str(trt.__version__), current_platform())


# --hardware-compat choice -> (tensorrt.HardwareCompatibilityLevel member, trtexec --hardwareCompatibilityLevel value)
HW_COMPAT = {"none": ("NONE", None), "ampere+": ("AMPERE_PLUS", "ampere+"),
             "same-cc": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability")}


def _axis_name(graph: str, name: str, axis: int) -> str:
    if axis == 0:
        return "batch"
    if graph == "prefill" and name in ("input_ids", "inputs") and axis == 1:
        return "seq"
    return f"axis {axis}"


def profile_problems(graph: str, profile: dict, shapes: dict) -> list[str]:
    """Every input shape outside the engine's optimization profile, as readable problems; empty when all fit."""
    problems = []
    for name, shape in shapes.items():
        p = profile.get(name)
        if p is None:
            problems.append(f"{name}: the {graph} engine has no input of that name")
            continue
        lo, hi = list(p["min"]), list(p["max"])
        if len(shape) != len(lo):
            problems.append(f"{name}: rank {len(shape)}, the {graph} engine takes rank {len(lo)}")
            continue
        for axis, (d, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= d <= b:
                problems.append(f"{name}: {_axis_name(graph, name, axis)} is {d}, the {graph} engine's profile "
                                f"allows {a}..{b}")
    return problems
