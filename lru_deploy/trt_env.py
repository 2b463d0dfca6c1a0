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


INSTALL_HINT = ("install TensorRT from NVIDIA (pip install tensorrt --extra-index-url https://pypi.nvidia.com, "
                "or NVIDIA's containers) and cuda-python (pip install 'lru-deploy[trt]') on a machine with an "
                "NVIDIA GPU; everything else (export, check with ONNX Runtime, generate) runs without them")


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


def compatibility_problems(manifest: dict, running: RuntimeInfo) -> list[str]:
    """Why an engine folder cannot run on this GPU and TensorRT, as TensorRT documents engine compatibility.

    TensorRT version: a plain engine runs only with the version that built it; a version-compatible one
    (built with TensorRT >= 8.6) with that version or a later one. GPU: by default only on the GPU model it was
    built on; hardware_compat 'same-cc' on any GPU of the same compute capability; 'ampere+' on compute
    capability 8.0 and newer. Engines are not portable across platforms.
    """
    problems = []
    built_trt = str(manifest.get("tensorrt", {}).get("version", "?"))
    gpu = manifest.get("gpu", {})
    built_gpu, built_cc = str(gpu.get("name", "?")), str(gpu.get("compute_capability", "?"))
    hw = manifest.get("hardware_compat", "none")
    bv, rv = version_tuple(built_trt), version_tuple(running.trt_version)
    if manifest.get("version_compatible"):
        if bv < (8, 6):
            problems.append(f"marked version-compatible but built with TensorRT {built_trt}; version compatibility "
                            f"starts at 8.6")
        elif rv < bv:
            problems.append(f"TensorRT {running.trt_version} is older than the {built_trt} that built this "
                            f"version-compatible engine (it runs on the same or a later TensorRT only)")
    else:
        n = min(len(bv), len(rv))
        if not n or bv[:n] != rv[:n]:
            problems.append(f"built with TensorRT {built_trt}, this is TensorRT {running.trt_version}; an engine "
                            f"runs only with the TensorRT that built it unless built with --version-compatible")
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
    built_platform = manifest.get("platform")
    if built_platform and running.platform and built_platform != running.platform:
        problems.append(f"built on {built_platform}, this is {running.platform}; engines are not portable "
                        f"across platforms")
    return problems


def ensure_compatible(manifest: dict, running: RuntimeInfo, where: str = "this engine folder") -> None:
    problems = compatibility_problems(manifest, running)
    if problems:
        src = manifest.get("source", {}).get("export_dir", "EXPORT_DIR")
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
            return None, f"CUDA reports: {cudart.cudaGetErrorString(err)[1].decode()}"
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


def preflight(device: int = 0) -> RuntimeInfo:
    """TensorRT importable and a CUDA GPU present, or one EngineError naming every missing piece. Does no work."""
    problems, version = [], None
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("TensorRT is not installed (the Python package `tensorrt` cannot be imported)")
    else:
        try:
            import tensorrt as trt
            version = trt.__version__
        except (ImportError, OSError, RuntimeError) as e:
            problems.append(f"TensorRT is installed but cannot be imported: {e}")
    gpu, why = gpu_info(device)
    if gpu is None:
        problems.append(f"no CUDA GPU: {why}")
    if problems:
        raise EngineError("cannot build or run TensorRT engines on this machine:", INSTALL_HINT, problems)
    return RuntimeInfo(gpu[0], gpu[1], version, current_platform())


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
