"""`lru-deploy check`: parity of an export or engine folder against the complex128 reference, on Polygraphy.

    lru-deploy check export/default              # ONNX Runtime, every precision of the export
    lru-deploy check engines/default/h100-fp16   # TensorRT

Polygraphy is the comparison engine: the gold model is a Polygraphy runner
(`ReferenceRunner`) beside `OnnxrtRunner` or `TrtRunner`; `Comparator.run` feeds both from a data loader
holding the shape matrix, and `Comparator.compare_accuracy` with a simple compare function checks every
element against explicit atol and rtol from contract.TOLERANCES. Our own relative-L2 bound per output is
computed beside it in float64, from the reference's float64 values.

Beyond single calls, `SegmentsRunner` runs one sequence as several graph calls with the state carried, which
checks the continuity identities of the I/O contract (prefill(a) then prefill(b), prefill then steps,
steps then prefill, each against the reference prefill of the whole sequence) and a long drift run of
consecutive steps against the reference output at every position. The runners live in parity/runners.py;
parity/report.py writes the table, report.json, the plot and the Polygraphy files that reproduce a case with
`polygraphy run` alone.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner

from .. import contract
from ..checkpoints import checkpoint_sha256, load_model
from ..errors import ParityError
from ..export import DEFAULT_CHUNK
from ..files import check_destination
from ..manifest import MANIFEST, EngineManifest, ExportManifest, folder_kind
from ..cases import Case, case_feeds, continuity_cases, rel_l2, shape_matrix
from ..runtime.onnxruntime import emulate_reduced
from ..model import LRUModel, gold
from .runners import ReferenceRunner, SegmentsRunner, run_pair

log = logging.getLogger(__name__)
DEFAULT_LONG_SEQ = 16384
DEFAULT_DRIFT_STEPS = 10000
QUICK_DRIFT_STEPS = 1000
N_WINDOWS = 64  # error-along-the-sequence curves: rel L2 per window of ceil(seq / N_WINDOWS) positions


# ---------------------------------------------------------------- comparing

def output_rows(case: Case, got: dict, gold: dict, match: Optional[dict], tol: dict, bound: float) -> list[dict]:
    """One row per reference output: rel L2 (float64) against `bound`, max abs, Polygraphy's verdict."""
    rows = []
    for name, ref in gold.items():
        row = {"case": case.label, "kind": case.kind, "output": name, "shape": list(ref.shape),
               "rel_l2": None, "max_abs": None, "bound_rel_l2": bound, "pass": False, "why": ""}
        if match is not None:
            row.update(atol=tol["atol"], rtol=tol["rtol"])
        a = got.get(name)
        if a is None:
            row["why"] = f"the target returned no {name!r} (outputs: {', '.join(got)})"
        elif list(a.shape) != list(ref.shape):
            row["why"] = f"shape {list(a.shape)}, the reference has {list(ref.shape)}"
        else:
            err = rel_l2(a, ref)
            mx = float(np.abs(a.astype(np.float64) - ref).max()) if ref.size else 0.0
            row.update(rel_l2=err, max_abs=mx)
            why = []
            if not (math.isfinite(err) and err <= bound):
                why.append(f"relative L2 error {err:.2e} > {bound:.0e}")
            if match is not None and not match.get(name, False):
                why.append(f"Polygraphy's element-wise check failed: some |error| > atol {tol['atol']:g} and "
                           f"> rtol {tol['rtol']:g} x |reference| (max abs {mx:.2e})")
            row["pass"], row["why"] = not why, "; ".join(why)
        rows.append(row)
    return rows


def window_curve(got: np.ndarray, ref: np.ndarray, n_windows: int = N_WINDOWS) -> dict:
    """Relative L2 error per window of positions (axis 1), for the error-along-the-sequence curves."""
    seq = ref.shape[1]
    w = max(1, math.ceil(seq / n_windows))
    ends = list(range(w, seq, w)) + [seq]
    starts = [0] + ends[:-1]
    return {"window": w, "positions": ends,
            "rel_l2": [rel_l2(got[:, s:e], ref[:, s:e]) for s, e in zip(starts, ends)]}


# ---------------------------------------------------------------- one precision

class PrecisionCheck:
    """Every comparison for one precision of one target. `target` provides runner(precision, graph, name),
    max_seq, chunk, prefill_outputs and shape_problems(graph, feeds) (engine profiles)."""

    def __init__(self, target, model64: LRUModel, precision: str, tol: dict, cache: dict, seed: int,
                 overrides: tuple = ()):
        self.t, self.model64, self.cfg, self.prec = target, model64, model64.cfg, precision
        self.tol, self.cache, self.seed, self.overrides = tol, cache, seed, list(overrides)
        self.rows: list[dict] = []
        self.curves: dict = {}
        self.repro: dict = {}  # graph -> {"cases", "feeds", "gold"}: the Polygraphy reproduction files
        self.misses: dict = {}  # graph -> (case, feeds) of its first single call that missed
        self.localization: list = []  # parity/localize.py's results, when localized

    @property
    def per_position(self) -> bool:
        return self.cfg.pooling == "none" and self.t.prefill_outputs == "all"

    def _skip(self, case: Case, why: str) -> None:
        log.info("  [%s] %-44s skipped: %s", self.prec, case.label, why)
        self.rows.append({"case": case.label, "kind": case.kind, "output": "-", "shape": [], "rel_l2": None,
                          "max_abs": None, "bound_rel_l2": None, "pass": None, "why": f"skipped: {why}"})

    def _log(self, case: Case, rows: list, seconds: float) -> None:
        worst = max((r["rel_l2"] for r in rows if r["rel_l2"] is not None), default=float("nan"))
        log.info("  [%s] %-44s worst rel L2 %.1e  %s (%.2f s)", self.prec, case.label, worst,
                 "ok" if all(r["pass"] for r in rows) else "MISS", seconds)

    def _runnable(self, cases: list[Case], rng) -> list[tuple[Case, OrderedDict]]:
        """The cases with their feeds, less those outside an engine's optimization profiles (skipped rows)."""
        out, xname = [], contract.input_name(self.cfg)
        for case in cases:
            feeds = case_feeds(self.cfg, case, rng)
            why = []
            for g, n in case.segments or ((case.graph, case.seq),):
                part = {k: (v[:, :n] if g == "prefill" else v[:, 0]) if k == xname and case.segments else v
                        for k, v in feeds.items()}
                why += self.t.shape_problems(g, part)
            if why:
                self._skip(case, "; ".join(dict.fromkeys(why)))
            else:
                out.append((case, feeds))
        return out

    def single_calls(self, long_seq: Optional[int], repro_max_bytes: int) -> None:
        cases = shape_matrix(self.t.chunk, self.t.max_seq, long_seq)
        for gi, graph in enumerate(contract.GRAPHS):
            todo = self._runnable([c for c in cases if c.graph == graph], np.random.default_rng([self.seed, gi]))
            if not todo:
                continue
            log.info("[%s] %s graph: %d single calls (%s)", self.prec, graph, len(todo),
                     ", ".join(c.label for c, _ in todo))
            ref = ReferenceRunner(self.model64, graph, self.t.prefill_outputs, self.cache)
            target = self.t.runner(self.prec, graph, f"{self.t.backend}-{self.prec}-{graph}")
            got, matches, secs = run_pair(ref, target, [c for c, _ in todo], [f for _, f in todo], self.tol,
                                          self.prec)
            repro = self.repro.setdefault(graph, {"cases": [], "feeds": [], "gold": []})
            for (case, feeds), g, gref, m, sec in zip(todo, got, ref.gold, matches, secs):
                rows = output_rows(case, g, gref, m, self.tol, self.tol["rel_l2"])
                self.rows += rows
                self._log(case, rows, sec)
                if any(r["pass"] is False for r in rows):
                    self.misses.setdefault(graph, (case, feeds))
                if case.kind == "long" and self.per_position and "outputs" in g \
                        and g["outputs"].shape == gref["outputs"].shape:
                    self.curves["long"] = {"case": case.label, **window_curve(g["outputs"], gref["outputs"])}
                if sum(v.nbytes // 2 for v in gref.values()) <= repro_max_bytes:  # float32 in the file
                    repro["cases"].append(case.label)
                    repro["feeds"].append(feeds)
                    repro["gold"].append(OrderedDict((k, v.astype(np.float32)) for k, v in gref.items()))

    def continuity(self) -> None:
        todo = self._runnable(continuity_cases(self.t.chunk, self.t.max_seq), np.random.default_rng([self.seed, 7]))
        for case, feeds in todo:
            ref = ReferenceRunner(self.model64, "prefill", self.t.prefill_outputs, self.cache)
            inner = {g: self.t.runner(self.prec, g, f"{self.t.backend}-{self.prec}-{g}")
                     for g in {g for g, _ in case.segments}}
            target = SegmentsRunner(self.cfg, inner, case.segments, self.per_position, f"segments-{self.prec}")
            got, matches, secs = run_pair(ref, target, [case], [feeds], self.tol, self.prec)
            rows = output_rows(case, got[0], ref.gold[0], matches[0], self.tol, self.tol["rel_l2"])
            self.rows += rows
            self._log(case, rows, secs[0])

    def drift(self, steps: int) -> None:
        """`steps` consecutive steps from a zero state against the reference at every position."""
        case = Case("drift", "prefill", 1, steps, False, (("step", steps),))
        todo = self._runnable([case], np.random.default_rng([self.seed, 9]))
        if not todo:
            return
        log.info("[%s] drift: %d consecutive steps through the step graph", self.prec, steps)
        ref = ReferenceRunner(self.model64, "positions", cache=self.cache)
        inner = {"step": self.t.runner(self.prec, "step", f"{self.t.backend}-{self.prec}-step")}
        target = SegmentsRunner(self.cfg, inner, case.segments, True, f"steps-{self.prec}")
        got, _, secs = run_pair(ref, target, [case], [todo[0][1]], None, self.prec)
        got, gref = got[0], ref.gold[0]
        bound = self.tol["drift_rel_l2"]
        rows = output_rows(case, got, gref, None, self.tol, bound)
        if rows[0]["rel_l2"] is not None:  # outputs: bound the worst window, not just the whole run
            curve = window_curve(got["outputs"], gref["outputs"])
            self.curves["drift"] = {"case": case.label, **curve}
            worst = max(curve["rel_l2"])
            rows[0].update(output=f"outputs (worst {curve['window']}-step window)", rel_l2=worst,
                           rel_l2_whole_run=rows[0]["rel_l2"])
            if not worst <= bound:
                rows[0]["pass"] = False
                rows[0]["why"] = f"relative L2 error {worst:.2e} > {bound:.0e} in the window ending at step " \
                                 f"{curve['positions'][curve['rel_l2'].index(worst)]}"
        self.rows += rows
        self._log(case, rows, secs[0])


def emulated_graph_bytes(path: Path) -> bytes:
    """A bf16 graph's float32 twin that rounds like bf16 (ONNX Runtime's CPU provider has no bf16 MatMul)."""
    return emulate_reduced(onnx.load(str(path))).SerializeToString()


# ---------------------------------------------------------------- targets

@dataclass
class Target:
    """An export folder (ONNX Runtime) or an engine folder (TensorRT), read from its manifest."""

    folder: Path
    kind: str  # export | engines
    manifest: Union[ExportManifest, EngineManifest]
    chunk: int  # the scan's chunk: the shape matrix tests T-1, T, T+1
    notes: list
    cache: dict = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "onnxrt" if self.kind == "export" else "trt"

    @property
    def precisions(self) -> list:
        m = self.manifest
        return list(m.graphs) if self.kind == "export" else [m.precision]

    @property
    def max_seq(self) -> int:
        return self.manifest.max_seq

    @property
    def prefill_outputs(self) -> str:
        return self.manifest.prefill_outputs

    def graph_path(self, precision: str, graph: str) -> Path:
        m = self.manifest
        return m.graph_path(precision, graph) if self.kind == "export" else m.engine_path(graph)

    def model_source(self, precision: str, graph: str):
        """What ONNX Runtime loads: the graph's path, or for bf16 the bytes of its emulating float32 twin."""
        path = self.graph_path(precision, graph)
        if precision != "bf16":
            return str(path)
        key = ("emulated", graph)
        if key not in self.cache:
            self.cache[key] = emulated_graph_bytes(path)
        return self.cache[key]

    def runner(self, precision: str, graph: str, name: str) -> BaseRunner:
        if self.kind == "engines":
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
            return TrtRunner(EngineFromBytes(BytesFromPath(str(self.graph_path(precision, graph)))), name=name)
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        return OnnxrtRunner(SessionFromOnnx(self.model_source(precision, graph), providers=["cpu"]), name=name)

    def shape_problems(self, graph: str, feeds: dict) -> list:
        if self.kind == "export":
            return []
        from ..trt_env import profile_problems
        return profile_problems(graph, self.manifest.profiles[graph], {k: list(v.shape) for k, v in feeds.items()})

    def input_paths(self) -> list[Path]:
        """The files `check` reads from the folder: a report must not replace any of them."""
        return [self.folder / MANIFEST] + [self.graph_path(p, g) for p in self.precisions for g in contract.GRAPHS]

    def model_entry(self) -> dict:
        """{"path", "sha256"} of the checkpoint the folder was made from ({} when unknown)."""
        if self.kind == "export":
            return self.manifest.model
        src = self.manifest.source_export()
        return ExportManifest.read(src, verify=False).model if src else {}


def open_target(folder) -> Target:
    """The folder's manifest, verified: hashes, the contract against the config and against the graphs."""
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind not in ("export", "engines"):
        raise ParityError(f"{folder} is neither an export folder nor an engine folder",
                          "pass the folder that `lru-deploy export` or `lru-deploy build` wrote")
    notes = []
    if kind == "export":
        m = ExportManifest.read(folder)
        problems = m.graph_problems()
        if problems:
            raise ParityError(f"the graphs in {folder} disagree with its manifest:", m._fix_hint(), problems)
        return Target(folder, kind, m, m.chunk, notes)
    m = EngineManifest.read(folder)
    chunk = m.chunk
    if not chunk:  # engine folders written before the chunk was recorded: ask their export
        src = m.source_export()
        chunk = ExportManifest.read(src, verify=False).chunk if src else DEFAULT_CHUNK
        if not src:
            notes.append(f"the engine manifest does not record the scan's chunk and its export is gone; the shape "
                         f"matrix assumes the default chunk {DEFAULT_CHUNK}")
    return Target(folder, kind, m, chunk, notes)


def tolerances(precision: str, atol: Optional[float] = None, rtol: Optional[float] = None) -> tuple[dict, list]:
    """The precision's row of contract.TOLERANCES, with CLI overrides applied and announced."""
    table = dict(contract.TOLERANCES[precision])
    used, notes = dict(table), []
    for key, val in (("atol", atol), ("rtol", rtol)):
        if val is not None and float(val) != table[key]:
            used[key] = float(val)
            notes.append(f"tolerance overridden: {key} {short(table[key])} -> {short(val)} "
                         f"({'LOOSER' if val > table[key] else 'tighter'} than the {precision} table)")
    return used, notes


def short(v: float) -> str:
    """1e-4, 1.5e-1: tolerances as people write them."""
    m, e = f"{float(v):.2e}".split("e")
    return f"{m.rstrip('0').rstrip('.')}e{int(e)}"


# ---------------------------------------------------------------- the check

@dataclass(frozen=True)
class CheckOptions:
    """What `check` compares. The defaults are owned here; the CLI's defaults read them."""

    precisions: Optional[tuple[str, ...]] = None  # which of the folder's precisions; None: all it holds
    atol: Optional[float] = None  # override the tolerance table's absolute tolerance (announced loudly)
    rtol: Optional[float] = None  # override the tolerance table's relative tolerance (announced loudly)
    seed: int = 0  # the inputs' seed, 0 .. 2^63-1
    long_seq: int = DEFAULT_LONG_SEQ  # the long prefill case's length (clipped to the folder's max_seq)
    drift_steps: Optional[int] = None  # the drift run's consecutive steps; None: DEFAULT_DRIFT_STEPS, or
    #                                    QUICK_DRIFT_STEPS with quick
    quick: bool = False  # no long case and a shorter drift run
    localize: bool = False  # also localize a passing check (a check with a miss is always localized): each
    #                         block's values against the reference's, naming where the error first exceeds
    #                         the bound

    def __post_init__(self):
        if isinstance(self.precisions, str):  # "fp32,fp16" as the CLI spells it
            object.__setattr__(self, "precisions", tuple(p.strip() for p in self.precisions.split(",")))
        elif self.precisions is not None and not isinstance(self.precisions, tuple):
            object.__setattr__(self, "precisions", tuple(self.precisions))

    @property
    def steps(self) -> int:
        """The drift run's length once the default is applied."""
        if self.drift_steps is not None:
            return self.drift_steps
        return QUICK_DRIFT_STEPS if self.quick else DEFAULT_DRIFT_STEPS

    def problems(self) -> list[str]:
        """Every problem with these options, named by their CLI flags; empty when they are valid. The
        precisions are checked against the folder by `check`."""
        from ..export import precision_problems
        out = [] if self.precisions is None else precision_problems(self.precisions)
        for name, v in (("--long-seq", self.long_seq), ("--drift-steps", self.steps)):
            if not (_is_int(v) and v >= 1):
                out.append(f"{name} must be a positive integer, got {v!r}")
        for name, v in (("--atol", self.atol), ("--rtol", self.rtol)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v >= 0):
                out.append(f"{name} must be a finite number >= 0, got {v!r}")
        if not (_is_int(self.seed) and 0 <= self.seed < 2 ** 63):
            out.append(f"--seed must be an integer from 0 to 2^63-1, got {self.seed!r}")
        for name in ("quick", "localize"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(target_dir, model_dir=None, options: Optional[CheckOptions] = None, *, report_dir=None,
          overwrite: bool = False) -> dict:
    """Run every comparison, write the report folder (atomically) and return report.json's content.

    model_dir defaults to the model the manifest records; report_dir to TARGET/report; `overwrite` replaces a
    report folder that holds files `check` did not write.
    """
    from . import report as parity_report
    o = options or CheckOptions()
    if not isinstance(o, CheckOptions):
        raise TypeError(f"options must be a CheckOptions, got {type(o).__name__}")
    t_start = time.perf_counter()
    target = open_target(target_dir)
    atol, rtol, seed, long_seq, drift_steps, quick = o.atol, o.rtol, o.seed, o.long_seq, o.steps, o.quick
    precisions = list(dict.fromkeys(o.precisions or target.precisions))
    problems = [f"precision {p} is not in this {target.kind} folder (it has {', '.join(target.precisions)})"
                for p in precisions if p in contract.PRECISIONS and p not in target.precisions] + o.problems()
    if problems:
        raise ParityError("cannot check:", f"fix the options named above (--precision: some of "
                                           f"{', '.join(target.precisions)})", problems)
    module = module_reference(target)  # an export_module folder carries its reference (torch.export programs)
    model_dir, model_sha = (module[1], module[2]) if module else resolve_model(target, model_dir)
    out = Path(report_dir) if report_dir else target.folder / "report"
    check_destination(out, "check", reads=target.input_paths() + [model_dir], overwrite=overwrite, flag="--report")
    model64 = module[0] if module else gold(load_model(model_dir))
    if model64.cfg.to_dict() != target.manifest.cfg.to_dict():
        raise ParityError(f"the model at {model_dir} has another config than the one {target.folder} was made from",
                          "pass --model with the checkpoint this folder was exported from")
    if target.kind == "engines":
        from ..trt_env import ensure_compatible, preflight
        ensure_compatible(target.manifest, preflight(), f"engine folder {target.folder}")
    if not quick and long_seq > target.max_seq:
        target.notes.append(f"the long case is clipped to this folder's max_seq {target.max_seq} (--long-seq "
                            f"{long_seq}); the runtime splits longer prompts, which the continuity cases cover")
    for note in target.notes:
        log.warning("note: %s", note)
    checks, cache = {}, {}
    for i, prec in enumerate(precisions, 1):
        tol, overrides = tolerances(prec, atol, rtol)
        for note in overrides:
            log.warning("!! %s", note)
        log.info("[%d/%d] %s: %s against the complex128 reference", i, len(precisions), prec,
                 "ONNX Runtime" + (" (bf16 emulated in float32)" if prec == "bf16" else "")
                 if target.kind == "export" else "TensorRT")
        pc = PrecisionCheck(target, model64, prec, tol, cache, seed, overrides)
        pc.single_calls(None if quick else long_seq, parity_report.REPRO_MAX_BYTES)
        pc.continuity()
        pc.drift(drift_steps)
        if o.localize or any(r["pass"] is False for r in pc.rows):
            from .localize import localize_precision
            log.info("[%s] localizing: every block's values against the reference's", prec)
            pc.localization = localize_precision(pc, model64, pc.misses)
        checks[prec] = pc
    settings = {"seed": seed, "long_seq": None if quick else long_seq, "drift_steps": drift_steps, "quick": quick,
                "atol": atol, "rtol": rtol, "localize": o.localize}
    return parity_report.write_report(out, target, {"path": str(Path(model_dir).resolve()), "sha256": model_sha},
                                      checks, settings, time.perf_counter() - t_start, overwrite=overwrite)


def module_reference(target: Target):
    """(reference, its program file, sha256) for an export_module folder or engines built from one, else None."""
    m = target.manifest
    if not m.is_module:
        return None
    export = m if target.kind == "export" else None
    if export is None:
        src = m.source_export()
        if src is None:
            raise ParityError(f"{target.folder} was built from an export_module folder that is gone "
                              f"({m.source.get('export_dir')}): its reference programs live there",
                              "check the engines with the export folder in place")
        export = ExportManifest.read(src)
    from ..export.module.reference import ModuleReference
    ent = export.reference["prefill"]
    return ModuleReference.load(export), export.folder / ent["path"], ent["sha256"]


def resolve_model(target: Target, model_dir) -> tuple[Path, str]:
    """The model folder (--model, else the one the manifest records), its checkpoint sha256 verified."""
    entry = target.model_entry()
    if model_dir is None:
        if not entry.get("path"):
            raise ParityError(f"{target.folder}'s manifest does not say which model it was made from",
                              "pass --model MODEL_DIR")
        model_dir = entry["path"]
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ParityError(f"the model folder {model_dir} is missing (no config.json)",
                          "pass --model with the model folder this target was exported from")
    sha = checkpoint_sha256(model_dir)
    if entry.get("sha256") and sha != entry["sha256"]:
        raise ParityError(f"the checkpoint in {model_dir} is not the one {target.folder} was made from:",
                          "pass --model with the checkpoint this folder was exported from, or export again",
                          [f"manifest sha256 {entry['sha256']}", f"{model_dir} sha256 {sha}"])
    return model_dir, sha
