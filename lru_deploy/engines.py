"""TensorRT engines: `lru-deploy build`, the engine manifest, and the checks an engine folder must pass to run.

    lru-deploy build export/default --precision fp16 --batch 1:1:8 --seq 1:512:16384

builds `prefill.plan` and `step.plan` from the precision's ONNX graphs (strongly typed networks, through
Polygraphy's loaders) and writes `manifest.json` (format "lru-deploy-engines-v1") beside them: the GPU and
TensorRT version they were built with, the optimization profiles, the build settings, the sha256 of the
source graphs and of the plans, and the export's config and I/O contract, so that apps need nothing else.

Everything here except `_build_plan` is plain Python and testable without TensorRT: the profiles, the manifest
and the trtexec command lines. The machine checks (TensorRT present and real, a GPU, engine compatibility) live
in `lru_deploy.trt_env`; tensorrt is imported only through it, when a build starts.
"""
from __future__ import annotations

import logging
import math
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from . import contract
from .manifest import MANIFEST, EngineManifest, ExportManifest
from . import trt_env
from .trt_env import HW_COMPAT
from .files import check_destination, file_sha256, staged_dir
from .errors import EngineError, InputError
from .model import LRUConfig

log = logging.getLogger(__name__)

DEFAULT_BATCH = (1, 1, 8)
DEFAULT_SEQ = (1, 512, 16384)  # clipped to the export's max_seq; longer prompts are split by the runtime (exact)
MAX_DIM = 2 ** 31 - 1  # TensorRT dimensions are int32


@dataclass(frozen=True)
class BuildOptions:
    """What `build_engines` builds. The defaults are owned here; the CLI's defaults read them."""

    precision: str = "fp32"  # which precision of the export to build (one engine folder per precision)
    batch: tuple[int, int, int] = DEFAULT_BATCH  # (min, opt, max) of both graphs' optimization profiles
    seq: Optional[tuple[int, int, int]] = None  # prefill's (min, opt, max); None: DEFAULT_SEQ clipped to max_seq
    timing_cache: Optional[str] = None  # a timing cache file, read and updated
    opt_level: Optional[int] = None  # builder optimization level 0..5; None: TensorRT's default (3)
    hardware_compat: str = "none"  # one of trt_env.HW_COMPAT: none, ampere+, same-cc
    version_compatible: bool = False  # run with later TensorRT releases too
    tf32: bool = False  # TF32 matmuls (faster, ~1e-3 error); off keeps fp32 parity
    workspace_gib: Optional[float] = None  # builder workspace limit in GiB; None: TensorRT's default
    device: int = 0  # CUDA device index

    def problems(self) -> list[str]:
        """Every problem with these options, named by their CLI flags; empty when they are valid."""
        from .export import precision_problems
        out = precision_problems([self.precision], one=True)
        out += range_problems(self.batch, "batch")
        if self.seq is not None:
            out += range_problems(self.seq, "seq")
        if self.opt_level is not None and (not _is_int(self.opt_level) or not 0 <= self.opt_level <= 5):
            out.append(f"--opt-level must be 0..5, got {self.opt_level!r}")
        if self.hardware_compat not in HW_COMPAT:
            out.append(f"--hardware-compat {self.hardware_compat!r} is unknown; one of {', '.join(HW_COMPAT)}")
        if self.workspace_gib is not None and not (isinstance(self.workspace_gib, (int, float)) and not
                                                   isinstance(self.workspace_gib, bool) and
                                                   math.isfinite(self.workspace_gib) and self.workspace_gib > 0):
            out.append(f"--workspace must be a positive number of GiB, got {self.workspace_gib!r}")
        if not _is_int(self.device) or self.device < 0:
            out.append(f"--device must be a CUDA device index >= 0, got {self.device!r}")
        for name in ("version_compatible", "tf32"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        return out

    def settings(self) -> dict:
        """The build settings that reach TensorRT and trtexec."""
        d = asdict(self)
        return {k: d[k] for k in ("tf32", "opt_level", "hardware_compat", "version_compatible", "workspace_gib",
                                  "timing_cache")}


# ---------------------------------------------------------------- pure helpers (tested without TensorRT)

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def range_problems(vals, what: str, text=None) -> list[str]:
    """A MIN:OPT:MAX range: three integers with 1 <= MIN <= OPT <= MAX <= 2^31-1 (TensorRT's int32 dims)."""
    try:
        vals = list(vals)
    except TypeError:
        vals = []
    shown = text if text is not None else ":".join(map(str, vals))
    if len(vals) != 3 or not all(_is_int(v) for v in vals) or not 1 <= vals[0] <= vals[1] <= vals[2]:
        return [f"--{what} {shown!r} is not MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (for example --{what} 1:1:8)"]
    if vals[2] > MAX_DIM:
        return [f"--{what} {shown!r}: MAX must be at most {MAX_DIM} (TensorRT dimensions are int32)"]
    return []


def check_range(vals, what: str, text=None) -> tuple[int, int, int]:
    problems = range_problems(vals, what, text)
    if problems:
        raise InputError(problems[0], f"for example --{what} 1:1:8")
    vals = list(vals)
    return vals[0], vals[1], vals[2]


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (the default engine folder's name part)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^nvidia-", "", slug)
    return slug or "gpu"


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


def default_engine_dir(name: str, gpu_name: str, precision: str) -> Path:
    return Path("engines") / name / f"{gpu_slug(gpu_name)}-{precision}"


# ---------------------------------------------------------------- machine checks and the TensorRT calls


def _build_plan(onnx_path: Path, profile: dict, label: str, *, tf32: bool, opt_level: Optional[int],
                hardware_compat: str, version_compatible: bool, workspace_gib: Optional[float],
                timing_cache: Optional[str]) -> bytes:
    """The thin TensorRT part: a strongly typed network from ONNX, one profile, serialized through Polygraphy."""
    trt = trt_env.import_tensorrt()
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


def build_engines(export_dir, out_dir=None, options: Optional[BuildOptions] = None, *,
                  overwrite: bool = False) -> tuple[Path, EngineManifest]:
    """Build prefill.plan and step.plan and the engine manifest; the folder appears whole or not at all.

    out_dir defaults to engines/<model name>/<gpu>-<precision>; `overwrite` replaces a folder that holds
    files `build` did not write. The options and the export folder are checked before TensorRT is looked for.
    """
    o = options or BuildOptions()
    if not isinstance(o, BuildOptions):
        raise TypeError(f"options must be a BuildOptions, got {type(o).__name__}")
    problems = o.problems()
    if problems:
        raise InputError("cannot build:", "fix the options named above", problems)
    precision, batch = o.precision, tuple(o.batch)
    export_dir = Path(export_dir)
    if not export_dir.exists():
        raise InputError(f"the export folder {export_dir} does not exist",
                         "pass the folder `lru-deploy export` wrote (it holds manifest.json)")
    export_dir = export_dir.resolve()
    src = ExportManifest.read(export_dir, precision=precision)
    running = trt_env.preflight(o.device)  # TensorRT and a GPU, once the inputs are known to be right
    cfg = src.cfg
    export_max = src.max_seq
    seq = tuple(min(s, export_max) for s in DEFAULT_SEQ) if o.seq is None else tuple(o.seq)
    if seq[2] > export_max:
        raise InputError(f"--seq max {seq[2]} exceeds the export's max_seq {export_max}",
                         f"use --seq MIN:OPT:{export_max} or export again with a larger --max-seq")
    profiles = profile_shapes(cfg, batch, seq)
    out = Path(out_dir) if out_dir else default_engine_dir(src.name, running.gpu_name, precision)
    check_destination(out, "build", reads=[export_dir / MANIFEST], overwrite=overwrite)
    settings = o.settings()
    graphs = src.graphs[precision]
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
        manifest = EngineManifest(
            name=src.name, precision=precision, engines=entries,
            gpu={"name": running.gpu_name, "compute_capability": running.compute_capability},
            tensorrt={"version": running.trt_version}, platform=running.platform,
            profiles=profiles, batch=list(batch), seq=list(seq), max_seq=seq[2], chunk=src.chunk,
            tf32=o.tf32, hardware_compat=o.hardware_compat, version_compatible=o.version_compatible,
            builder_optimization_level=o.opt_level, workspace_gib=o.workspace_gib,
            source={"export_dir": str(export_dir), "export_max_seq": export_max,
                    "graphs": {g: {"path": str(onnx[g]), "sha256": graphs[g].get("sha256")}
                               for g in contract.GRAPHS}},
            config=src.config, contract=src.contract, prefill_outputs=src.prefill_outputs,
            build_seconds=timings, trtexec=commands)
        manifest.write(tmp)
    return out, manifest
