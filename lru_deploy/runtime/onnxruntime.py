"""The ONNX Runtime backend: the graphs of an export folder, and the one place ONNX Runtime sessions are made.

`OnnxruntimeSession` implements `Session._run(graph, feeds)`; prefill, step, generate and long-prompt
splitting come from runtime.base. Open it through `runtime.open_session(export_dir)`. The folder's manifest
is verified first (hashes, contract) and each session's inputs and outputs are compared with the contract.

`ort_session` configures every ONNX Runtime session of the package (export validation, check, benchmarks);
ONNX Runtime's CPU provider has no bf16 MatMul, so a bf16 graph runs there as its float32 twin from
`emulate_reduced`, which rounds like the bf16 graph.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import onnx

from .. import contract
from ..manifest import ExportManifest
from ..errors import ExportError, InputError
from .base import Session

log = logging.getLogger(__name__)


CPU_PREFILL_SPLIT = 4096
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}


class OnnxruntimeSession(Session):
    """The graphs of an export folder in ONNX Runtime (CPU by default; CUDA with onnxruntime-gpu, if asked)."""

    backend = "onnxruntime"

    def __init__(self, export_dir, precision: str = "fp32", providers: Optional[Sequence[str]] = None,
                 verify: bool = True, split: Optional[int] = CPU_PREFILL_SPLIT):
        import onnxruntime as ort

        folder = Path(export_dir)
        m = ExportManifest.read(folder, precision=precision, verify=verify)
        super().__init__(m.cfg, m.spec("prefill"), m.spec("step"))
        self.precision = precision
        # Longer prompts are split into calls of at most this many positions (exact: the state is carried).
        # On the CPU, calls of ~4096 keep the activations in cache: 1.26x faster at seq 65536 and 112 MB
        # instead of 398 MB beyond the outputs (benchmarks/RESULTS.md).
        self.max_seq = min(m.max_seq, split or m.max_seq)
        available = ort.get_available_providers()
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise InputError(f"ONNX Runtime here lacks {', '.join(missing)} (it has {', '.join(available)})",
                             "CUDAExecutionProvider comes with onnxruntime-gpu: pip install 'lru-deploy[gpu]'")
        self._sessions, self._outputs, problems = {}, {}, []
        for graph in contract.GRAPHS:
            sess, self.mode = ort_session(m.graph_path(precision, graph), precision, providers=self.providers)
            io = {i.name: ("input", _ORT_TYPES.get(i.type), i.shape) for i in sess.get_inputs()}
            io.update({o.name: ("output", _ORT_TYPES.get(o.type), o.shape) for o in sess.get_outputs()})
            spec = self.prefill_spec if graph == "prefill" else self.step_spec
            problems += contract.io_problems(graph, spec, io)
            problems += [f"{graph}: {p}" for p in m.limit_problems(sess.get_modelmeta().custom_metadata_map)]
            self._sessions[graph] = sess
            self._outputs[graph] = spec.output_names
        if problems:
            raise ExportError(f"the {precision} graphs in {folder} disagree with the contract in its manifest:",
                              f"export again: lru-deploy export MODEL_DIR --out {folder} --overwrite", problems)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._outputs[graph]
        return dict(zip(names, self._sessions[graph].run(names, feeds)))


# ---------------------------------------------------------------- the thin layer over CUDA and TensorRT


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
        m = _load_onnx(model) if isinstance(model, (str, Path)) else model
        model, mode = emulate_reduced(m), "bf16-emulated"
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only; warnings about providers and initializers are noise here
    if threads:
        so.intra_op_num_threads = threads
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    what = str(model) if isinstance(model, (str, Path)) else "the graph"
    try:
        return ort.InferenceSession(src, so, providers=providers), mode
    except _ort_errors() as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX Runtime cannot load {what}: {first}",
                          "the file is damaged or not an lru-deploy graph: export the folder again") from None


def _ort_errors() -> tuple:
    """ONNX Runtime's own exception classes (they derive from Exception directly, not from RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))


def _load_onnx(path) -> onnx.ModelProto:
    from google.protobuf.message import DecodeError
    try:
        return onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as e:
        raise ExportError(f"cannot read the ONNX graph {path}: {e}",
                          "the file is damaged or not an ONNX model: export the folder again") from None


def run_session(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))
