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
import re
import shlex
import time
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


# ---------------------------------------------------------------- pure helpers (tested without TensorRT)


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


def build_engines(export_dir, out_dir=None, precision: str = "fp32", batch=DEFAULT_BATCH, seq=None, *,
                  timing_cache: Optional[str] = None, opt_level: Optional[int] = None,
                  hardware_compat: str = "none", version_compatible: bool = False, tf32: bool = False,
                  workspace_gib: Optional[float] = None, device: int = 0, overwrite: bool = False) -> tuple[Path, EngineManifest]:
    """Build prefill.plan and step.plan and the engine manifest; the folder appears whole or not at all.

    batch and seq are (min, opt, max); seq defaults to DEFAULT_SEQ clipped to the export's max_seq.
    """
    running = trt_env.preflight(device)  # before any work: without TensorRT or a GPU there is nothing to do
    batch = check_range(batch, "batch")
    if hardware_compat not in HW_COMPAT:
        raise InputError(f"--hardware-compat {hardware_compat!r} is unknown", f"one of {', '.join(HW_COMPAT)}")
    export_dir = Path(export_dir).resolve()
    src = ExportManifest.read(export_dir, precision=precision)
    cfg = src.cfg
    export_max = src.max_seq
    seq = tuple(min(s, export_max) for s in DEFAULT_SEQ) if seq is None else check_range(seq, "seq")
    if seq[2] > export_max:
        raise InputError(f"--seq max {seq[2]} exceeds the export's max_seq {export_max}",
                         f"use --seq MIN:OPT:{export_max} or export again with a larger --max-seq")
    profiles = profile_shapes(cfg, batch, seq)
    out = Path(out_dir) if out_dir else default_engine_dir(src.name, running.gpu_name, precision)
    check_destination(out, "build", reads=[export_dir / MANIFEST], overwrite=overwrite)
    settings = dict(tf32=tf32, opt_level=opt_level, hardware_compat=hardware_compat,
                    version_compatible=version_compatible, workspace_gib=workspace_gib, timing_cache=timing_cache)
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
            tf32=tf32, hardware_compat=hardware_compat, version_compatible=version_compatible,
            builder_optimization_level=opt_level, workspace_gib=workspace_gib,
            source={"export_dir": str(export_dir), "export_max_seq": export_max,
                    "graphs": {g: {"path": str(onnx[g]), "sha256": graphs[g].get("sha256")}
                               for g in contract.GRAPHS}},
            config=src.config, contract=src.contract, prefill_outputs=src.prefill_outputs,
            build_seconds=timings, trtexec=commands)
        manifest.write(tmp)
    return out, manifest


# ---------------------------------------------------------------- CLI


