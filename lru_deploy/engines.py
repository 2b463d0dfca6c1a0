"""TensorRT engines: `lru-deploy build`, the engine manifest, and the checks an engine folder must pass to run.

    lru-deploy build export/default --precision fp16 --batch 1:1:8 --seq 1:512:16384

builds `prefill.plan` and `step.plan` from the precision's ONNX graphs (strongly typed networks, through
Polygraphy's loaders) and writes `manifest.json` (format "lru-deploy-engines-v1") beside them: the GPU and
TensorRT version they were built with, the optimization profiles, the build settings, the sha256 of the
source graphs and of the plans, and the export's config and I/O contract, so that apps need nothing else.

Everything here except `_build_plan` and `gpu_info` is plain Python and testable without TensorRT: the
compatibility rules (`compatibility_problems`), the profile checks (`profile_problems`), the manifests and the
trtexec command lines. tensorrt and cuda are imported lazily, inside the two functions that need them.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import platform
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import contract
from .files import check_destination, file_sha256, staged_dir
from .errors import EngineError, ExportError, InputError
from .model import LRUConfig

log = logging.getLogger(__name__)

FORMAT = "lru-deploy-engines-v1"
EXPORT_FORMAT = "lru-deploy-export-v1"
MANIFEST = "manifest.json"
# --hardware-compat choice -> (tensorrt.HardwareCompatibilityLevel member, trtexec --hardwareCompatibilityLevel value)
HW_COMPAT = {"none": ("NONE", None), "ampere+": ("AMPERE_PLUS", "ampere+"),
             "same-cc": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability")}
DEFAULT_BATCH = (1, 1, 8)
DEFAULT_SEQ = (1, 512, 16384)  # clipped to the export's max_seq; longer prompts are split by the runtime (exact)
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


# ---------------------------------------------------------------- pure helpers (tested without TensorRT)

def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or one number for all three) -> (min, opt, max) with 1 <= min <= opt <= max."""
    try:
        vals = [int(p) for p in str(text).split(":")]
    except ValueError:
        vals = []
    return check_range(vals * 3 if len(vals) == 1 else vals, what, text)


def check_range(vals, what: str, text=None) -> tuple[int, int, int]:
    vals = list(vals)
    if len(vals) != 3 or not all(isinstance(v, int) for v in vals) or not 1 <= vals[0] <= vals[1] <= vals[2]:
        shown = text if text is not None else ":".join(map(str, vals))
        raise InputError(f"--{what} {shown!r} is not MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX",
                         f"for example --{what} 1:1:8")
    return vals[0], vals[1], vals[2]


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (the default engine folder's name part)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^nvidia-", "", slug)
    return slug or "gpu"


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(v)))


def profile_shapes(cfg: LRUConfig, batch: tuple[int, int, int], seq: tuple[int, int, int]) -> dict:
    """One optimization profile per graph: {graph: {input: {"min", "opt", "max"}}}; step has a batch range only."""
    out = {}
    for graph in contract.GRAPHS:
        prof = {}
        for t in contract.graph_spec(cfg, graph).inputs:
            prof[t.name] = {key: [{"batch": batch[i], "seq": seq[i]}.get(d, d) for d in t.shape]
                            for i, key in enumerate(("min", "opt", "max"))}
        out[graph] = prof
    return out


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


def trtexec_commands(onnx: dict, plans: dict, profiles: dict, *, tf32: bool, opt_level: Optional[int] = None,
                     hardware_compat: str = "none", version_compatible: bool = False,
                     workspace_gib: Optional[float] = None, timing_cache: Optional[str] = None) -> dict:
    """The trtexec command line that builds the same engine as `lru-deploy build`, per graph."""
    def dims(prof: dict, key: str) -> str:
        return ",".join(f"{name}:{'x'.join(str(d) for d in p[key])}" for name, p in prof.items())

    cmds = {}
    for graph, prof in profiles.items():
        args = ["trtexec", f"--onnx={onnx[graph]}", f"--saveEngine={plans[graph]}", "--stronglyTyped",
                f"--minShapes={dims(prof, 'min')}", f"--optShapes={dims(prof, 'opt')}",
                f"--maxShapes={dims(prof, 'max')}"]
        if not tf32:
            args.append("--noTF32")
        if opt_level is not None:
            args.append(f"--builderOptimizationLevel={opt_level}")
        if HW_COMPAT[hardware_compat][1]:
            args.append(f"--hardwareCompatibilityLevel={HW_COMPAT[hardware_compat][1]}")
        if version_compatible:
            args.append("--versionCompatible")
        if workspace_gib:
            args.append(f"--memPoolSize=workspace:{int(workspace_gib * 1024)}M")
        if timing_cache:
            args.append(f"--timingCacheFile={timing_cache}")
        args.append("--skipInference")
        cmds[graph] = " ".join(shlex.quote(a) for a in args)
    return cmds


# ---------------------------------------------------------------- manifests

def _read_manifest(folder: Path, what: str, err) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise err(f"{folder} is not {what} (no {MANIFEST})",
                  "pass the folder that `lru-deploy export` or `lru-deploy build` wrote")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise err(f"cannot read {path}: {e}", "the manifest is damaged; write the folder again") from None


def _file_problems(folder: Path, entries: dict, verify: bool) -> list[str]:
    problems = []
    for key, ent in entries.items():
        if not isinstance(ent, dict) or "path" not in ent:
            problems.append(f"{key}: no path recorded")
            continue
        p = folder / ent["path"]
        if not p.is_file():
            problems.append(f"{key}: {p} is missing")
        elif verify and ent.get("sha256") and file_sha256(p) != ent["sha256"]:
            problems.append(f"{key}: {p} does not match the sha256 recorded in the manifest (changed or damaged)")
    return problems


def read_export_manifest(export_dir, precision: Optional[str] = None, verify: bool = True) -> dict:
    """The manifest of an export folder, checked: format, config, contract, the precision's graphs on disk."""
    folder = Path(export_dir)
    m = _read_manifest(folder, "an export folder", ExportError)
    problems = []
    if m.get("format") != EXPORT_FORMAT:
        problems.append(f"format is {m.get('format')!r}, want {EXPORT_FORMAT!r}")
    for key in ("config", "contract", "graphs", "max_seq"):
        if key not in m:
            problems.append(f"no {key!r} entry")
    graphs = m.get("graphs", {})
    if precision is not None and "graphs" in m and precision not in graphs:
        problems.append(f"no {precision} graphs (this export has {', '.join(graphs) or 'none'})")
    for p in ([precision] if precision else list(graphs)):
        if p in graphs:
            problems += [f"{p} {g}" for g in _file_problems(folder, graphs[p], verify)]
    if problems:
        raise ExportError(f"export folder {folder} cannot be used:",
                          "export again: lru-deploy export MODEL_DIR --out " + str(folder), problems)
    return m


def read_engine_manifest(engine_dir, verify: bool = True) -> dict:
    """The manifest of an engine folder, checked: format, entries, both plans on disk with their sha256."""
    folder = Path(engine_dir)
    m = _read_manifest(folder, "an engine folder", EngineError)
    problems = []
    if m.get("format") != FORMAT:
        problems.append(f"format is {m.get('format')!r}, want {FORMAT!r}")
    for key in ("engines", "config", "contract", "profiles", "gpu", "tensorrt"):
        if key not in m:
            problems.append(f"no {key!r} entry")
    engines = m.get("engines", {})
    missing = [g for g in contract.GRAPHS if g not in engines]
    if "engines" in m and missing:
        problems.append(f"no engine for {', '.join(missing)}")
    problems += _file_problems(folder, {g: e for g, e in engines.items() if g in contract.GRAPHS}, verify)
    if problems:
        src = m.get("source", {}).get("export_dir", "EXPORT_DIR")
        raise EngineError(f"engine folder {folder} cannot be used:",
                          f"build it again: lru-deploy build {src} --out {folder}", problems)
    return m


def default_engine_dir(name: str, gpu_name: str, precision: str) -> Path:
    return Path("engines") / name / f"{gpu_slug(gpu_name)}-{precision}"


# ---------------------------------------------------------------- machine checks and the TensorRT calls

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


def _build_plan(onnx_path: Path, profile: dict, label: str, *, tf32: bool, opt_level: Optional[int],
                hardware_compat: str, version_compatible: bool, workspace_gib: Optional[float],
                timing_cache: Optional[str]) -> bytes:
    """The thin TensorRT part: a strongly typed network from ONNX, one profile, serialized through Polygraphy."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    prof = Profile()
    for name, p in profile.items():
        prof.add(name, min=p["min"], opt=p["opt"], max=p["max"])
    kwargs = dict(profiles=[prof], tf32=tf32, builder_optimization_level=opt_level,
                  version_compatible=version_compatible or None, load_timing_cache=timing_cache)
    if hardware_compat != "none":
        level = getattr(trt.HardwareCompatibilityLevel, HW_COMPAT[hardware_compat][0], None)
        if level is None:
            raise EngineError(f"TensorRT {trt.__version__} has no hardware compatibility level {hardware_compat}",
                              "use --hardware-compat ampere+ or upgrade TensorRT")
        kwargs["hardware_compatibility_level"] = level
    if workspace_gib:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_gib * 2 ** 30)}
    if hasattr(trt, "IProgressMonitor"):
        kwargs["progress_monitor"] = _progress_monitor(trt, label)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        return bytes(EngineBytesFromNetwork(network, config=CreateConfig(**kwargs), save_timing_cache=timing_cache)())
    except PolygraphyException as e:
        raise EngineError(f"TensorRT could not build the {label} engine from {onnx_path}: {e}",
                          "run `lru-deploy lint` on the export folder; rerun with -v for TensorRT's log") from None


def _progress_monitor(trt, label: str):
    """A TensorRT progress monitor that logs the builder's top-level phases."""
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                log.info("  %s: %s", label, phase_name)

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engines(export_dir, out_dir=None, precision: str = "fp32", batch=DEFAULT_BATCH, seq=None, *,
                  timing_cache: Optional[str] = None, opt_level: Optional[int] = None,
                  hardware_compat: str = "none", version_compatible: bool = False, tf32: bool = False,
                  workspace_gib: Optional[float] = None, device: int = 0, overwrite: bool = False) -> tuple[Path, dict]:
    """Build prefill.plan and step.plan and the engine manifest; the folder appears whole or not at all.

    batch and seq are (min, opt, max); seq defaults to DEFAULT_SEQ clipped to the export's max_seq.
    """
    running = preflight(device)  # before any work: without TensorRT or a GPU there is nothing to do
    batch = check_range(batch, "batch")
    if hardware_compat not in HW_COMPAT:
        raise InputError(f"--hardware-compat {hardware_compat!r} is unknown", f"one of {', '.join(HW_COMPAT)}")
    export_dir = Path(export_dir).resolve()
    src = read_export_manifest(export_dir, precision)
    cfg = LRUConfig.from_dict(src["config"])
    export_max = int(src["max_seq"])
    seq = tuple(min(s, export_max) for s in DEFAULT_SEQ) if seq is None else check_range(seq, "seq")
    if seq[2] > export_max:
        raise InputError(f"--seq max {seq[2]} exceeds the export's max_seq {export_max}",
                         f"use --seq MIN:OPT:{export_max} or export again with a larger --max-seq")
    profiles = profile_shapes(cfg, batch, seq)
    out = Path(out_dir) if out_dir else default_engine_dir(src.get("name", "model"), running.gpu_name, precision)
    check_destination(out, "build", reads=[export_dir / MANIFEST], overwrite=overwrite)
    settings = dict(tf32=tf32, opt_level=opt_level, hardware_compat=hardware_compat,
                    version_compatible=version_compatible, workspace_gib=workspace_gib, timing_cache=timing_cache)
    graphs = src["graphs"][precision]
    onnx = {g: export_dir / graphs[g]["path"] for g in contract.GRAPHS}
    plans = {g: out / f"{g}.plan" for g in contract.GRAPHS}
    reads = [export_dir / MANIFEST, *onnx.values()]
    with staged_dir(out, "build", reads=reads, overwrite=overwrite) as tmp:
        entries, timings = {}, {}
        for i, g in enumerate(contract.GRAPHS, 1):
            log.info("[%d/%d] building the %s engine from %s (%s)", i, len(contract.GRAPHS), g, onnx[g], precision)
            t0 = time.perf_counter()
            plan = _build_plan(onnx[g], profiles[g], g, **settings)
            timings[g] = round(time.perf_counter() - t0, 3)
            (tmp / plans[g].name).write_bytes(plan)
            entries[g] = {"path": plans[g].name, "sha256": file_sha256(tmp / plans[g].name), "bytes": len(plan)}
            log.info("[%d/%d] %s engine: %.1f MB in %.1f s", i, len(contract.GRAPHS), g, len(plan) / 1e6, timings[g])
        commands = trtexec_commands({g: str(p) for g, p in onnx.items()}, {g: str(p) for g, p in plans.items()},
                                    profiles, **settings)
        manifest = {
            "format": FORMAT, "name": src.get("name", "model"), "precision": precision,
            "engines": entries,
            "gpu": {"name": running.gpu_name, "compute_capability": running.compute_capability},
            "tensorrt": {"version": running.trt_version}, "platform": running.platform,
            "profiles": profiles, "batch": list(batch), "seq": list(seq), "max_seq": seq[2],
            "tf32": tf32, "hardware_compat": hardware_compat, "version_compatible": version_compatible,
            "builder_optimization_level": opt_level, "workspace_gib": workspace_gib,
            "source": {"export_dir": str(export_dir), "export_max_seq": export_max,
                       "graphs": {g: {"path": str(onnx[g]), "sha256": graphs[g].get("sha256")}
                                  for g in contract.GRAPHS}},
            "config": src["config"], "contract": src["contract"],
            "prefill_outputs": src.get("prefill_outputs", "all"),
            "build_seconds": timings, "trtexec": commands,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out, manifest


# ---------------------------------------------------------------- CLI

def register(sub) -> None:
    s = sub.add_parser("build", help="build TensorRT engines from an export folder",
                       description="Build prefill.plan and step.plan (strongly typed networks from the precision's "
                                   "ONNX, one optimization profile per graph) and an engine manifest; print the "
                                   "equivalent trtexec command lines. Needs TensorRT and an NVIDIA GPU.")
    s.add_argument("export_dir", help="export folder (manifest.json with graphs)")
    s.add_argument("--out", default=None, help="engine folder (default: engines/<model name>/<gpu>-<precision>)")
    s.add_argument("--precision", default="fp32", choices=contract.PRECISIONS)
    s.add_argument("--batch", default=":".join(map(str, DEFAULT_BATCH)), help="MIN:OPT:MAX batch range")
    s.add_argument("--seq", default=None, help="MIN:OPT:MAX prefill seq range (default 1:512:16384, at most the "
                                               "export's max_seq; longer prompts are split by the runtime)")
    s.add_argument("--timing-cache", default=None, help="timing cache file, read and updated")
    s.add_argument("--opt-level", type=int, default=None, choices=range(6), metavar="N",
                   help="builder optimization level 0..5 (TensorRT's default 3)")
    s.add_argument("--hardware-compat", default="none", choices=list(HW_COMPAT),
                   help="run on other GPUs: ampere+ (compute capability >= 8.0) or same-cc")
    s.add_argument("--version-compatible", action="store_true", help="run with later TensorRT versions too")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--tf32", dest="tf32", action="store_true", help="allow TF32 matmuls (faster, ~1e-3 error)")
    g.add_argument("--no-tf32", dest="tf32", action="store_false", help="no TF32 (default; keeps fp32 parity)")
    s.set_defaults(tf32=False)
    s.add_argument("--workspace", type=float, default=None, metavar="GIB", help="builder workspace limit in GiB")
    s.add_argument("--device", type=int, default=0, help="CUDA device index")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `build` did not write")
    s.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    batch = parse_range(args.batch, "batch")
    seq = parse_range(args.seq, "seq") if args.seq else None
    out, m = build_engines(args.export_dir, args.out, args.precision, batch, seq, timing_cache=args.timing_cache,
                           opt_level=args.opt_level, hardware_compat=args.hardware_compat,
                           version_compatible=args.version_compatible, tf32=args.tf32,
                           workspace_gib=args.workspace, device=args.device, overwrite=args.overwrite)
    print(f"wrote {out}: prefill.plan, step.plan, {MANIFEST} ({m['gpu']['name']}, compute capability "
          f"{m['gpu']['compute_capability']}, TensorRT {m['tensorrt']['version']}, {m['precision']}, "
          f"tf32 {'on' if m['tf32'] else 'off'})")
    print("equivalent trtexec commands:")
    for cmd in m["trtexec"].values():
        print("  " + cmd)
    return 0

