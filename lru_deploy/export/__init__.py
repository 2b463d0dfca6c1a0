"""`lru-deploy export`: write the prefill and step graphs per precision, validate them, lint them, and
record everything in manifest.json. All of it happens in a temporary folder that is renamed into place
only when every check passed, so a failed export leaves no artifacts behind.

Validation, in the spirit of Optimum's but strict: each graph runs in ONNX Runtime against the float64
reference over the shape matrix below; names are checked first, then shapes, then values (relative L2 per
output, bound from contract.TOLERANCES); every failure is listed and any failure fails the export.
bf16 graphs run by emulation (ONNX Runtime's CPU provider has no bf16 MatMul): every node that touches bf16
computes in float32 between Casts that round its inputs and outputs to bf16.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import onnx

from .. import contract
from ..checkpoints import checkpoint_sha256, load_model, resolve_model_dir
from ..files import file_sha256, staged_dir
from ..errors import ExportError
from ..model import LRUModel, gold
from ..cases import shape_matrix
from ..manifest import ExportManifest, tool_versions
from .graphs import INTRA, build_prefill, build_step
from .validate import validate_graphs

log = logging.getLogger(__name__)
# T = 32 measured faster than 64 on the CPU at batch 1 (1.38x vs 1.45x the projections floor at seq 4096),
# equal at batch 8, and the prefill graph is 13-26 MB smaller (benchmarks/RESULTS.md). Unmeasured on a GPU.
DEFAULT_CHUNK = 32
OPSETS = (18, 19, 20)  # 18: Split(num_outputs) and LayerNormalization; TensorRT 10 parses up to 20


def export_model(model_dir, out_dir=None, precisions=("fp32", "fp16"), chunk: int = DEFAULT_CHUNK, max_seq: int = 65536,
                 opset: int = 18, prefill_outputs: str = "all", intra: str = "toeplitz", validate: bool = True,
                 long_seq: int = 4096, lint: bool = True, overwrite: bool = False) -> Path:
    """Export, validate and lint; returns the export folder. Raises ExportError listing every failure."""
    model_dir = resolve_model_dir(model_dir)
    problems = []
    precisions = list(dict.fromkeys(precisions))
    bad = [p for p in precisions if p not in contract.PRECISIONS]
    if bad or not precisions:
        problems.append(f"precision {', '.join(bad) or '(none)'} unknown; choose from {', '.join(contract.PRECISIONS)}")
    if not (isinstance(max_seq, int) and max_seq >= 1):
        problems.append(f"--max-seq must be >= 1, got {max_seq}")
    elif not (isinstance(chunk, int) and 2 <= chunk <= max(2, max_seq)):
        problems.append(f"--chunk must be in [2, max_seq], got {chunk}")
    if opset not in OPSETS:
        problems.append(f"--opset {opset} unsupported; choose {', '.join(map(str, OPSETS))} (TensorRT 10 parses <= 20)")
    if prefill_outputs not in ("all", "last"):
        problems.append(f"--prefill-outputs must be all or last, got {prefill_outputs!r}")
    if intra not in INTRA:
        problems.append(f"--intra must be one of {', '.join(INTRA)}, got {intra!r}")
    if problems:
        raise ExportError("cannot export:", "fix the options named above", problems)
    model64 = gold(load_model(model_dir))
    name = model_dir.resolve().name
    out_dir = Path(out_dir) if out_dir else Path("export") / name
    with staged_dir(out_dir, "export", reads=[model_dir], overwrite=overwrite) as tmp:
        manifest = _export_into(tmp, model_dir, model64, name, precisions, chunk, max_seq, opset, prefill_outputs,
                                intra, validate, long_seq)
        if lint:
            from ..lint import lint_export
            report = lint_export(tmp, cfg=model64.cfg, prefill_outputs=prefill_outputs)
            manifest.lint = {"ok": report.ok, "findings": len(report.findings)}
            if not report.ok:
                raise ExportError("the exported graphs fail the TensorRT-readiness lint:", "this is a bug in "
                                  "lru-deploy's exporter; please report it with the table below",
                                  [report.table()])
        manifest.write(tmp)
    log.info("export written to %s", out_dir)
    return out_dir


def _export_into(tmp: Path, model_dir: Path, model64: LRUModel, name: str, precisions, chunk, max_seq, opset,
                 prefill_outputs, intra, validate, long_seq) -> ExportManifest:
    cfg = model64.cfg
    cases = shape_matrix(chunk, max_seq, min(long_seq, max_seq))
    graphs_meta, validation, problems = {}, {}, []
    t_start = time.perf_counter()
    for pi, prec in enumerate(precisions):
        t0 = time.perf_counter()
        graphs = {"prefill": build_prefill(model64, prec, chunk, max_seq, opset, prefill_outputs, intra),
                  "step": build_step(model64, prec, opset)}
        (tmp / prec).mkdir()
        graphs_meta[prec] = {}
        for g, m in graphs.items():
            path = tmp / prec / f"{g}.onnx"
            onnx.save(m, str(path))
            graphs_meta[prec][g] = {"path": f"{prec}/{g}.onnx", "sha256": file_sha256(path),
                                    "nodes": len(m.graph.node), "bytes": path.stat().st_size}
        log.info("[%d/%d] %s: graphs built (%d + %d nodes, %.1f s)%s", pi + 1, len(precisions), prec,
                 len(graphs["prefill"].graph.node), len(graphs["step"].graph.node), time.perf_counter() - t0,
                 "; validating against the float64 reference" if validate else "")
        if validate:
            p, records, mode = validate_graphs(model64, graphs, prec, cases, prefill_outputs)
            problems += p
            validation[prec] = {"mode": mode, "bound_rel_l2": contract.TOLERANCES[prec]["rel_l2"],
                                "cases": len(cases), "failures": len(p), "records": records}
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


