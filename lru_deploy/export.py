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
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch

from . import __version__, contract
from .checkpoints import checkpoint_sha256, default_model_dir, load_model
from .files import file_sha256, staged_dir, write_json
from .errors import ExportError
from .model import LRUModel, gold
from .onnx_graphs import INTRA, build_prefill, build_step

log = logging.getLogger(__name__)
# T = 32 measured faster than 64 on the CPU at batch 1 (1.38x vs 1.45x the projections floor at seq 4096),
# equal at batch 8, and the prefill graph is 13-26 MB smaller (benchmarks/RESULTS.md). Unmeasured on a GPU.
DEFAULT_CHUNK = 32
OPSETS = (18, 19, 20)  # 18: Split(num_outputs) and LayerNormalization; TensorRT 10 parses up to 20


@dataclass(frozen=True)
class Case:
    graph: str
    batch: int
    seq: int  # positions; for the step graph, the number of consecutive steps
    nonzero_state: bool

    @property
    def label(self) -> str:
        return f"{self.graph} b{self.batch} s{self.seq}{' h0' if self.nonzero_state else ''}"


def validation_cases(chunk: int, max_seq: int, long_seq: int = 4096) -> list[Case]:
    """seq 1, chunk-1, chunk, chunk+1, a non power of two, a long one; batch 1 and 3; zero and non-zero state."""
    seqs = [(1, 1, False), (3, 1, True), (1, chunk - 1, True), (3, chunk, False), (3, chunk + 1, True),
            (1, 3 * chunk + 5, True), (3, 2 * chunk + 7, False), (1, long_seq, True)]
    cases = [Case("prefill", b, s, h) for b, s, h in seqs if 1 <= s <= max_seq]
    cases += [Case("step", 1, 4, False), Case("step", 3, 4, True)]
    return list(dict.fromkeys(cases))


def random_inputs(cfg, batch: int, seq: Optional[int], nonzero: bool, rng: np.random.Generator) -> dict:
    """Feeds for one case, named by the contract. seq None: step-shaped inputs."""
    shape = (batch,) if seq is None else (batch, seq)
    if cfg.tokens:
        x = rng.integers(0, cfg.vocab_size, shape, dtype=np.int64)
    else:
        x = rng.normal(size=shape + (cfg.d_input,)).astype(np.float32)
    st = rng.normal(scale=0.5, size=(batch, cfg.n_layers, 2, cfg.d_hidden)) if nonzero else \
        np.zeros((batch, cfg.n_layers, 2, cfg.d_hidden))
    feeds = {contract.input_name(cfg): x, "state": st.astype(np.float32)}
    if cfg.pooling == "mean":
        feeds["pool_sum"] = (rng.normal(size=(batch, cfg.d_model)) * (3 if nonzero else 0)).astype(np.float32)
        feeds["pool_count"] = np.full((batch, 1), 3.0 if nonzero else 0.0, np.float32)
    return feeds


def reference_outputs(model64: LRUModel, graph: str, feeds: dict, prefill_outputs: str = "all") -> dict:
    """The float64 reference on contract-named feeds; contract-named float64 outputs."""
    cfg = model64.cfg
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    x = t[contract.input_name(cfg)]
    with torch.no_grad():
        if graph == "step":
            r = model64.step(x, t["state"], t.get("pool_sum"), t.get("pool_count"))
        else:
            r = model64(x, t["state"], t.get("pool_sum"), t.get("pool_count"), prefill_outputs=prefill_outputs)
    out = {"outputs": r.outputs.numpy(), "state_out": r.state.numpy()}
    if r.pool_sum is not None:
        out.update(pool_sum_out=r.pool_sum.numpy(), pool_count_out=r.pool_count.numpy())
    return out


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref)
    return float(diff / max(np.linalg.norm(ref), 1e-30))


def compare(label: str, spec: contract.GraphSpec, got: dict, ref: dict, bound: float, sizes: dict) -> tuple[list, list]:
    """Names, then shapes, then values. Returns (problems, per-output records)."""
    problems, records = [], []
    names = set(spec.output_names)
    if set(got) != names:
        problems.append(f"{label}: outputs {sorted(got)} != contract {sorted(names)}")
        return problems, records
    for t in spec.outputs:
        want = [sizes.get(d, d) if isinstance(d, str) else d for d in t.shape]
        if list(got[t.name].shape) != want:
            problems.append(f"{label}: {t.name} shape {list(got[t.name].shape)}, want {want}")
    if problems:
        return problems, records
    for t in spec.outputs:
        err = rel_l2(got[t.name], ref[t.name])
        mx = float(np.abs(got[t.name].astype(np.float64) - ref[t.name]).max())
        ok = bool(np.isfinite(err) and err <= bound)
        records.append({"case": label, "output": t.name, "rel_l2": err, "max_abs": mx, "bound": bound, "pass": ok})
        if not ok:
            problems.append(f"{label}: {t.name} relative L2 error {err:.2e} > {bound:.0e} (max abs {mx:.2e})")
    return problems, records


def emulate_reduced(m: onnx.ModelProto, elem_type: int = onnx.TensorProto.BFLOAT16) -> onnx.ModelProto:
    """A float32 twin that rounds like the reduced-type graph: each node touching `elem_type` computes in
    float32 between Casts (inputs up-cast, outputs rounded to elem_type and back). For CPU checks only."""
    F32 = onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in m.graph.initializer})
    out = onnx.ModelProto()
    out.CopyFrom(m)
    del out.graph.node[:]
    n = 0
    for node in m.graph.node:
        in_red = [types.get(i) == elem_type for i in node.input]
        out_red = [types.get(o) == elem_type for o in node.output]
        if node.op_type == "Cast" or not (any(in_red) or any(out_red)):
            out.graph.node.append(node)  # Casts to and from the reduced type run on CPU as they are
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        post = []
        for k, name in enumerate(node.input):
            if in_red[k]:
                n += 1
                new.input[k] = f"{name}__emu_f32_{n}"
                out.graph.node.append(onnx.helper.make_node("Cast", [name], [new.input[k]], to=F32))
        for k, name in enumerate(node.output):
            if out_red[k]:
                n += 1
                new.output[k] = f"{name}__emu_raw_{n}"
                post.append(onnx.helper.make_node("Cast", [new.output[k]], [name], to=elem_type))
        out.graph.node.append(new)
        out.graph.node.extend(post)
    # bf16 tensors stay bf16 only as Cast results; Cast bf16 -> float32 is implemented on CPU.
    return out


def ort_session(model: onnx.ModelProto | str | Path, precision: str, threads: int = 0,
                providers: Optional[list] = None):
    """The one place ONNX Runtime sessions are configured (options measured in benchmarks/RESULTS.md: the
    defaults won). CPU unless providers say otherwise; bf16 on the CPU runs emulated. Returns (session, mode)."""
    import onnxruntime as ort
    providers = list(providers or ["CPUExecutionProvider"])
    mode = "native"
    if precision == "bf16" and providers[0] == "CPUExecutionProvider":
        m = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
        model, mode = emulate_reduced(m), "bf16-emulated"
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only; warnings about providers and initializers are noise here
    if threads:
        so.intra_op_num_threads = threads
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=providers), mode


def run_session(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def validate_graphs(model64: LRUModel, graphs: dict, precision: str, cases: list[Case], prefill_outputs: str,
                    seed: int = 0) -> tuple[list, list, str]:
    """Run every case through ONNX Runtime and the reference. Returns (problems, records, run mode)."""
    cfg = model64.cfg
    bound = contract.TOLERANCES[precision]["rel_l2"]
    problems, records, mode = [], [], "native"
    sessions = {}
    for g, m in graphs.items():
        spec = contract.graph_spec(cfg, g, prefill_outputs)
        got_in = [i.name for i in m.graph.input]
        if got_in != spec.input_names:
            problems.append(f"{precision}/{g}: inputs {got_in} != contract {spec.input_names}")
        sessions[g], mode = ort_session(m, precision)
    if problems:
        return problems, records, mode
    rng = np.random.default_rng(seed)
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        label = f"{precision} {case.label}"
        spec = contract.graph_spec(cfg, case.graph, prefill_outputs)
        if case.graph == "prefill":
            feeds = random_inputs(cfg, case.batch, case.seq, case.nonzero_state, rng)
            p, r = compare(label, spec, run_session(sessions["prefill"], feeds),
                           reference_outputs(model64, "prefill", feeds, prefill_outputs), bound,
                           {"batch": case.batch, "seq": case.seq})
        else:
            feeds = random_inputs(cfg, case.batch, None, case.nonzero_state, rng)
            p, r = [], []
            for k in range(case.seq):  # consecutive steps, each from the graph's own previous state
                got = run_session(sessions["step"], feeds)
                ref = reference_outputs(model64, "step", feeds)
                pk, rk = compare(f"{label} step {k}", spec, got, ref, bound, {"batch": case.batch})
                p, r = p + pk, r + rk
                nxt = random_inputs(cfg, case.batch, None, False, rng)
                feeds = {contract.input_name(cfg): nxt[contract.input_name(cfg)], "state": got["state_out"]}
                if cfg.pooling == "mean":
                    feeds.update(pool_sum=got["pool_sum_out"], pool_count=got["pool_count_out"])
        problems += p
        records += r
        worst = max((x["rel_l2"] for x in r), default=float("nan"))
        log.info("  [%d/%d] %-28s worst rel L2 %.1e %s (%.1f s)", i + 1, len(cases), label, worst,
                 "ok" if not p else "FAIL", time.perf_counter() - t0)
    return problems, records, mode


def tool_versions() -> dict:
    import onnxruntime
    import polygraphy
    return {"lru_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def resolve_model_dir(model_dir) -> Path:
    if model_dir in (None, "default"):
        return default_model_dir()
    return Path(model_dir)


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
            from .lint import lint_export
            report = lint_export(tmp, cfg=model64.cfg, prefill_outputs=prefill_outputs)
            manifest["lint"] = {"ok": report.ok, "findings": len(report.findings)}
            if not report.ok:
                raise ExportError("the exported graphs fail the TensorRT-readiness lint:", "this is a bug in "
                                  "lru-deploy's exporter; please report it with the table below",
                                  [report.table()])
        write_json(tmp / "manifest.json", manifest, "export manifest")
    log.info("export written to %s", out_dir)
    return out_dir


def _export_into(tmp: Path, model_dir: Path, model64: LRUModel, name: str, precisions, chunk, max_seq, opset,
                 prefill_outputs, intra, validate, long_seq) -> dict:
    cfg = model64.cfg
    cases = validation_cases(chunk, max_seq, min(long_seq, max_seq))
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
    return {
        "format": "lru-deploy-export-v1",
        "name": name,
        "config": cfg.to_dict(),
        "model": {"path": str(model_dir.resolve()), "sha256": checkpoint_sha256(model_dir)},
        "contract": contract.contract(cfg, prefill_outputs),
        "chunk": chunk, "max_seq": max_seq, "opset": opset, "prefill_outputs": prefill_outputs, "intra": intra,
        "precisions": list(precisions),
        "precision_policy": "state, scan, carries, norms and residual stream float32; matmuls, skip, GELU and GLU "
                            "in the precision's type between explicit Casts",
        "graphs": graphs_meta,
        "tools": tool_versions(),
        "validation": validation,
        "export_seconds": round(time.perf_counter() - t_start, 2),
    }


def register(sub) -> None:
    s = sub.add_parser("export", help="export prefill and step ONNX graphs per precision, validated and linted",
                       description="Write EXPORT_DIR/<precision>/{prefill,step}.onnx and manifest.json. Every graph "
                                   "is checked in ONNX Runtime against the float64 reference and linted for "
                                   "TensorRT; any failure writes nothing and exits 1.")
    s.add_argument("model_dir", nargs="?", default="default", help="model folder (default: the bundled model)")
    s.add_argument("--out", help="export folder (default: export/<model name>)")
    s.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16 (default fp32,fp16)")
    s.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"scan chunk T (default {DEFAULT_CHUNK})")
    s.add_argument("--max-seq", type=int, default=65536, help="longest prefill one call takes (default 65536)")
    s.add_argument("--opset", type=int, default=18, help="ONNX opset, 18-20 (default 18)")
    s.add_argument("--prefill-outputs", choices=("all", "last"), default="all",
                   help="pooling none: outputs at every position (all) or the last one only")
    s.add_argument("--intra", choices=INTRA, default="toeplitz", help="intra-chunk scan formulation")
    s.add_argument("--long-seq", type=int, default=4096, help="the long validation case's length (default 4096)")
    s.add_argument("--no-validate", action="store_true", help="skip validation (not recommended)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `export` did not write")
    s.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    out = export_model(args.model_dir, args.out, precisions, args.chunk, args.max_seq, args.opset,
                       args.prefill_outputs, args.intra, not args.no_validate, args.long_seq,
                       overwrite=args.overwrite)
    print(f"exported {', '.join(precisions)} to {out}")
    return 0
