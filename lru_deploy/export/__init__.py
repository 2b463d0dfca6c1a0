"""`lru-deploy export`: write the prefill and step graphs per precision, validate them, lint them, and
record everything in manifest.json. All of it happens in a temporary folder that is renamed into place
only when every check passed, so a failed export leaves no artifacts behind.

Validation, in the spirit of Optimum's but strict: each graph runs in ONNX Runtime against the float64
reference over the shape matrix (cases.shape_matrix); names are checked first, then shapes, then values (relative L2 per
output, bound from contract.TOLERANCES); every failure is listed and any failure fails the export.
bf16 graphs run by emulation (ONNX Runtime's CPU provider has no bf16 MatMul): every node that touches bf16
computes in float32 between Casts that round its inputs and outputs to bf16.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

from .. import contract, memory
from ..checkpoints import checkpoint_sha256, load_config, load_model, resolve_model_dir
from ..files import file_sha256, staged_dir
from ..errors import ExportError
from ..model import LRUModel, gold
from ..cases import shape_matrix
from ..manifest import ExportManifest, tool_versions
from .graphs import INTRA, build_prefill, build_step
from .validate import validation_entry

log = logging.getLogger(__name__)
# T = 32 measured faster than 64 on the CPU at batch 1 (1.38x vs 1.45x the projections floor at seq 4096),
# equal at batch 8, and the prefill graph is 13-26 MB smaller (benchmarks/RESULTS.md). Unmeasured on a GPU.
DEFAULT_CHUNK = 32
# 18: the lowest opset the graphs are written for and tested at (LayerNormalization needs 17); TensorRT 10 parses
# up to 20.
OPSETS = (18, 19, 20)


@dataclass(frozen=True)
class ExportOptions:
    """What `export_model` writes and checks. The defaults are owned here; the CLI's defaults read them."""

    precisions: tuple[str, ...] = ("fp32", "fp16")  # one <precision>/ folder each; contract.PRECISIONS
    chunk: int = DEFAULT_CHUNK  # the scan's chunk T: a power of two in [2, memory.MAX_CHUNK], at most max_seq
    max_seq: int = 65536  # the longest prefill one graph call takes; the runtime splits longer prompts
    opset: int = 18  # one of OPSETS
    prefill_outputs: str = "all"  # pooling none: outputs at every position (all) or the last one only (last)
    intra: str = "toeplitz"  # the intra-chunk scan formulation, one of graphs.INTRA
    validate: bool = True  # run every graph in ONNX Runtime against the float64 reference
    long_seq: int = 4096  # the long validation case's length (clipped to max_seq)
    lint: bool = True  # lint the graphs for TensorRT readiness before the folder is written

    def __post_init__(self):
        if isinstance(self.precisions, str):  # "fp32,fp16" as the CLI spells it
            object.__setattr__(self, "precisions", tuple(p.strip() for p in self.precisions.split(",")))
        elif not isinstance(self.precisions, tuple):
            object.__setattr__(self, "precisions", tuple(self.precisions))

    def problems(self) -> list[str]:
        """Every problem with these options, named by their CLI flags; empty when they are valid."""
        out = precision_problems(self.precisions)
        if not _is_int(self.max_seq) or self.max_seq < 1:
            out.append(f"--max-seq must be a positive integer, got {self.max_seq!r}")
        if not _is_int(self.chunk) or not 2 <= self.chunk <= memory.MAX_CHUNK or self.chunk & (self.chunk - 1):
            out.append(f"--chunk must be a power of two from 2 to {memory.MAX_CHUNK}, got {self.chunk!r} "
                       f"(the graphs grow as chunk^2; the default {DEFAULT_CHUNK} measured fastest)")
        elif _is_int(self.max_seq) and 1 <= self.max_seq < self.chunk:
            out.append(f"--max-seq {self.max_seq} is shorter than the scan's chunk {self.chunk}: pass --max-seq "
                       f">= {self.chunk}, or a --chunk at most {self.max_seq}")
        if self.opset not in OPSETS:
            out.append(f"--opset {self.opset} unsupported; choose {', '.join(map(str, OPSETS))} "
                       f"(TensorRT 10 parses <= 20)")
        if self.prefill_outputs not in ("all", "last"):
            out.append(f"--prefill-outputs must be all or last, got {self.prefill_outputs!r}")
        if self.intra not in INTRA:
            out.append(f"--intra must be one of {', '.join(INTRA)}, got {self.intra!r}")
        if not _is_int(self.long_seq) or self.long_seq < 1:
            out.append(f"--long-seq must be a positive integer (the long validation case's length), "
                       f"got {self.long_seq!r}")
        for name in ("validate", "lint"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        return out


def precision_problems(precisions, one: bool = False) -> list[str]:
    """Problems of a precision list (CLI: a comma list): unknown names (the valid ones listed), repeats, none;
    `one`: the command runs exactly one precision."""
    precisions = list(precisions)
    valid = ", ".join(contract.PRECISIONS)
    out = [f"precision {p or '(empty)'} is unknown; valid precisions: {valid}" for p in dict.fromkeys(precisions)
           if p not in contract.PRECISIONS]
    out += [f"precision {p} is given {precisions.count(p)} times; name each once"
            for p in dict.fromkeys(precisions) if precisions.count(p) > 1 and p in contract.PRECISIONS]
    if not precisions:
        out.append(f"no precision given; valid precisions: {valid}")
    elif one and len(precisions) > 1:
        out.append(f"one precision is needed, got {len(precisions)} ({', '.join(precisions)})")
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def export_model(model_dir, out_dir=None, options: Optional[ExportOptions] = None, *,
                 overwrite: bool = False) -> Path:
    """Export, validate and lint; returns the export folder. Raises ExportError listing every failure.

    out_dir defaults to export/<model folder name>; `overwrite` replaces a folder that holds files `export`
    did not write (files.staged_dir).
    """
    options = options or ExportOptions()
    if not isinstance(options, ExportOptions):
        raise TypeError(f"options must be an ExportOptions, got {type(options).__name__}")
    model_dir = resolve_model_dir(model_dir)
    problems = options.problems()
    if problems:
        raise ExportError("cannot export:", "fix the options named above", problems)
    cfg = load_config(model_dir)  # the estimate needs only the config: refuse before the weights are read
    memory.require(memory.export_estimate(cfg, options), ExportError,
                   "export with a smaller --chunk, fewer --precision values or a shorter --long-seq, or on a "
                   "machine with more memory")
    model64 = gold(load_model(model_dir))
    name = model_dir.resolve().name
    out_dir = Path(out_dir) if out_dir else Path("export") / name
    with staged_dir(out_dir, "export", reads=[model_dir], overwrite=overwrite) as tmp:
        manifest = _export_into(tmp, model_dir, model64, name, options)
        if options.lint:
            from ..lint import lint_export
            report = lint_export(tmp, cfg=model64.cfg, prefill_outputs=options.prefill_outputs)
            manifest.lint = {"ok": report.ok, "findings": len(report.findings)}
            if not report.ok:
                raise ExportError("the exported graphs fail the TensorRT-readiness lint:", "this is a bug in "
                                  "lru-deploy's exporter; please report it with the table below",
                                  [report.table()])
        manifest.write(tmp)
    log.info("export written to %s", out_dir)
    return out_dir


def save_graphs(folder: Path, precision: str, graphs: dict) -> dict:
    """Write folder/<precision>/<graph>.onnx for each graph; their manifest entries (path, sha256, nodes, bytes)."""
    (folder / precision).mkdir()
    entries = {}
    for g, m in graphs.items():
        path = folder / precision / f"{g}.onnx"
        onnx.save(m, str(path))
        entries[g] = {"path": f"{precision}/{g}.onnx", "sha256": file_sha256(path), "nodes": len(m.graph.node),
                      "bytes": path.stat().st_size}
    return entries


def _export_into(tmp: Path, model_dir: Path, model64: LRUModel, name: str, o: ExportOptions) -> ExportManifest:
    cfg = model64.cfg
    chunk, max_seq, opset, prefill_outputs, intra = o.chunk, o.max_seq, o.opset, o.prefill_outputs, o.intra
    precisions, validate = o.precisions, o.validate
    cases = shape_matrix(chunk, max_seq, min(o.long_seq, max_seq))
    graphs_meta, validation, problems = {}, {}, []
    t_start = time.perf_counter()
    for pi, prec in enumerate(precisions):
        t0 = time.perf_counter()
        graphs = {"prefill": build_prefill(model64, prec, chunk, max_seq, opset, prefill_outputs, intra),
                  "step": build_step(model64, prec, opset)}
        graphs_meta[prec] = save_graphs(tmp, prec, graphs)
        log.info("[%d/%d] %s: graphs built (%d + %d nodes, %.1f s)%s", pi + 1, len(precisions), prec,
                 len(graphs["prefill"].graph.node), len(graphs["step"].graph.node), time.perf_counter() - t0,
                 "; validating against the float64 reference" if validate else "")
        if validate:
            p, validation[prec] = validation_entry(model64, graphs, prec, cases, prefill_outputs)
            problems += p
    if problems:
        raise ExportError(f"export validation failed ({len(problems)} failure(s)); nothing was written:",
                          "the graphs disagree with the reference beyond the tolerance; a model whose weights are "
                          "extreme may need --precision fp32, otherwise please report this", problems)
    return ExportManifest(
        name=name, config=cfg.to_dict(), contract=contract.contract(cfg, prefill_outputs), graphs=graphs_meta,
        chunk=chunk, max_seq=max_seq, opset=opset, prefill_outputs=prefill_outputs, intra=intra,
        precisions=list(precisions),
        model={"path": str(model_dir.resolve()), "sha256": checkpoint_sha256(model_dir)},
        precision_policy="state, scan, carries, norms and residual stream float32; matmuls, skip, GELU and GLU "
                         "in the precision's type between explicit Casts",
        tools=tool_versions(), validation=validation, export_seconds=round(time.perf_counter() - t_start, 2))


