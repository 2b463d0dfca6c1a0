"""TensorRT-readiness lint for exported ONNX graphs (`lru-deploy lint EXPORT_DIR`).

Pure static checks (onnx and its shape inference only, no runtime), every finding reported at once:
opset range, TensorRT 10's operator table and its input restrictions, the ops TensorRT runs badly or not
at all (Loop, Scan, If, CumSum, DFT), float64/complex tensors, int64 outside shape arithmetic and token ids,
dynamic-shape hazards, and the I/O contract recorded in the export folder's manifest.json (verified first:
files, hashes, contract against config) together with the limits each graph records.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from . import contract
from .contract import GRAPHS
from .manifest import MANIFEST, ExportManifest
from .errors import InputError, LRUDeployError
from .model import LRUConfig

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"

RULES: dict[str, str] = {
    "load": "the file is not a readable ONNX model",
    "missing-graph": "a precision folder lacks prefill.onnx or step.onnx",
    "manifest": "manifest.json is unreadable, fails its checks, or disagrees with the graphs' recorded limits",
    "opset": "default-domain opset outside the TensorRT ONNX parser's range",
    "opset-domain": "an opset import of a domain TensorRT does not parse",
    "op-unsupported": "op not in onnx-tensorrt's supported-operator table (or newer than the target TensorRT)",
    "op-restriction": "an input or attribute the onnx-tensorrt table restricts",
    "op-dtype": "op applied to an element type the onnx-tensorrt table does not list for it",
    "op-forbidden": "Loop, Scan, If, CumSum, DFT, STFT: sequential in TensorRT or unsupported",
    "data-dependent-shape": "op whose output shape depends on tensor values",
    "dtype-float64": "float64 tensor, constant or cast",
    "dtype-complex": "complex tensor, constant or cast",
    "int64-data": "int64 tensor that is neither shape arithmetic nor token ids",
    "int64-ids": "token ids used other than as Gather indices (after reshaping)",
    "dynamic-batch": "graph input/output with a fixed batch axis (axis 0)",
    "dynamic-seq": "prefill sequence axis (axis 1) fixed",
    "negative-dim": "a dim given as a negative number",
    "contract": "graph inputs/outputs differ from the I/O contract",
    "shape-inference": "ONNX shape inference failed, so intermediate dtypes went unchecked",
}

# ---- facts: onnx-tensorrt docs/operators.md "Operator Support Matrix" for TensorRT 10.15 (onnx/onnx-tensorrt,
# ---- release/10.15), plus docs/Changelog.md for what TensorRT 10.1 .. 10.15 added or relaxed after 10.0.
# TensorRT 10.0 parses opsets 9..20 (onnx-tensorrt's operators.md of 10.0); TensorRT 10.15 parses 9..24.
OPSET_MIN = 9
OPSET_MAX: dict[tuple[int, int], int] = {(10, 0): 20, (10, 15): 24}
DEFAULT_TRT = (10, 0)  # the floor of "TensorRT 10": anything newer must be asked for
TRT_RANGE = ((10, 0), (10, 15))  # the releases the facts above describe: --trt must name one of them


def trt_version_problem(v) -> Optional[str]:
    """Why `v` (major, minor) cannot be a lint target, or None: the table knows TensorRT 10.0 to 10.15 only."""
    lo, hi = TRT_RANGE
    if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v) and lo <= v <= hi):
        shown = _ver(v) if isinstance(v, tuple) and len(v) == 2 else repr(v)
        return (f"--trt {shown}: lint's operator table describes TensorRT {_ver(lo)} to {_ver(hi)} "
                f"(onnx-tensorrt's release/10.15 tables); other versions would be checked against facts it lacks")
    return None

_F = ("FP32", "FP16", "BF16")
_FI = _F + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)
_H = ("FP32", "FP16")
_B = ("BOOL",)
_CONST = _F + ("FP8", "FP4", "INT4", "INT32", "INT64", "BOOL")
_Q = ("INT8", "FP8", "FP4", "INT4")

# op -> element types the table lists for it (of the data input, see _TYPE_OPERAND).
TRT_OPS: dict[str, tuple[str, ...]] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": _B, "ArgMax": _FI, "ArgMin": _FI, "Asin": _F,
    "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": _F + ("INT8", "FP8"), "AveragePool": _F,
    "BatchNormalization": _F, "BlackmanWindow": _H, "Cast": _FIB + ("UINT8",), "CastLike": _FIB + ("UINT8",),
    "Ceil": _F, "Celu": _F, "Clip": _F, "Concat": _FIB, "Constant": _CONST, "ConstantOfShape": _CONST,
    "Conv": _F, "ConvTranspose": _F, "Cos": _F, "Cosh": _F, "CumSum": _F, "DeformConv": _H, "DepthToSpace": _FI,
    "DequantizeLinear": _Q, "Div": _FI, "Dropout": _F, "Einsum": _F, "Elu": _F, "Equal": _FI, "Erf": _F,
    "Exp": _F, "Expand": _FIB, "EyeLike": _FIB, "Flatten": _FIB, "Floor": _F, "Gather": _FIB,
    "GatherElements": _FIB, "GatherND": _FIB, "Gelu": _FI + ("INT8",), "Gemm": _F, "GlobalAveragePool": _F,
    "GlobalLpPool": _F, "GlobalMaxPool": _F, "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": _H,
    "GroupNormalization": _F, "GRU": _F, "HammingWindow": _H, "HannWindow": _H, "HardSigmoid": _F,
    "HardSwish": _F, "Hardmax": _F, "Identity": _FIB, "If": _FIB, "ImageScaler": _F,
    "InstanceNormalization": _F, "IsInf": _F, "IsNaN": _FI, "LayerNormalization": _F, "LeakyRelu": _F,
    "Less": _FI, "LessOrEqual": _FI, "Log": _F, "LogSoftmax": _F, "Loop": _FIB, "LRN": _F, "LSTM": _F,
    "LpNormalization": _F, "LpPool": _F, "MatMul": _F, "Max": _FI, "MaxPool": _F, "Mean": _FI + ("FP8",),
    "MeanVarianceNormalization": _F, "Min": _FI, "Mish": _H, "Mod": _FI, "Mul": _FI, "Neg": _FI,
    "NonMaxSuppression": _H, "NonZero": _H, "Not": _B, "OneHot": _FIB, "Or": _B, "Pad": _FI,
    "ParametricSoftplus": _F, "Pow": _F, "PRelu": _F, "QuantizeLinear": _F, "RandomNormal": _F,
    "RandomNormalLike": _F, "RandomUniform": _F, "RandomUniformLike": _F, "Range": _FI, "Reciprocal": _F,
    "ReduceL1": _FI, "ReduceL2": _FI, "ReduceLogSum": _FI, "ReduceLogSumExp": _FI, "ReduceMax": _FI,
    "ReduceMean": _FI, "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI, "ReduceSumSquare": _FI,
    "Relu": _FI, "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB, "RMSNormalization": _F, "RNN": _F,
    "RoiAlign": _H, "RotaryEmbedding": _F, "Round": _F, "STFT": ("FP32",), "ScaledTanh": _F, "Scan": _F,
    "Scatter": _FI, "ScatterElements": _FI, "ScatterND": _FI, "Selu": _F, "Shape": _FIB, "Shrink": _FI,
    "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Sinh": _F, "Size": _FIB, "Slice": _FIB, "Softmax": _F,
    "Softplus": _F, "Softsign": _F, "SpaceToDepth": _FI, "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB,
    "Sub": _FI, "Sum": _FI, "Tan": _F, "Tanh": _F, "TensorScatter": _F + ("INT32",), "ThresholdedRelu": _F,
    "Tile": _FIB, "TopK": _FI, "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB, "Upsample": _F,
    "Where": _FIB, "Xor": _B,
}
# Ops the changelog says arrived after TensorRT 10.0: op -> first version that parses it.
OP_SINCE: dict[str, tuple[int, int]] = {
    "DeformConv": (10, 1), "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5), "Attention": (10, 14), "RotaryEmbedding": (10, 15), "RMSNormalization": (10, 15),
    "TensorScatter": (10, 15),
}
# Element types a later version added for an op (changelog 10.12: integer-typed base for Pow).
TYPES_SINCE: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {"Pow": ((10, 12), ("INT32", "INT64"))}
# Which operand's element type the table's "Supported Types" refers to: input index, or "out" for output 0.
_TYPE_OPERAND: dict[str, object] = {"Where": 1, "Constant": "out", "ConstantOfShape": "out", "RandomNormal": "out",
                                    "RandomUniform": "out"}

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
# op -> {input index: (input name, version that lifted the rule or None)}: the input must be a build-time
# constant (an initializer or a Constant node's output). Slice axes: tensor axes from 10.3; Pad axes: 10.4;
# Squeeze/Unsqueeze axes: dynamic from 10.7; CumSum axis: dynamic from 10.8.
CONST_INPUTS: dict[str, dict[int, tuple[str, Optional[tuple[int, int]]]]] = {
    "Slice": {3: ("axes", (10, 3))},
    "Pad": {3: ("axes", (10, 4))},
    "Squeeze": {1: ("axes", (10, 7))},
    "Unsqueeze": {1: ("axes", (10, 7))},
    "CumSum": {1: ("axis", (10, 8))},
    "Dropout": {2: ("training_mode", None)},
    "OneHot": {1: ("depth", None)},
    "STFT": {1: ("frame_step", None), 2: ("window", None)},
    **{op: {1: ("axes", None)} for op in _REDUCE},
}
# op -> {attribute: allowed values}; an absent attribute takes the ONNX default, which is allowed.
ATTR_ALLOWED: dict[str, dict[str, tuple]] = {
    "Resize": {"mode": ("nearest", "linear"),
               "coordinate_transformation_mode": ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                                  "asymmetric", "align_corners"),
               "nearest_mode": ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"),
               "keep_aspect_ratio_policy": ("stretch",), "antialias": (0,)},
    "TopK": {"sorted": (1,)},
    "ScatterND": {"reduction": ("none",)},
    "LSTM": {"input_forget": (0,), "layout": (0,)},
}
# op -> how many outputs TensorRT produces (further outputs unsupported).
MAX_OUTPUTS: dict[str, int] = {"LayerNormalization": 1, "MaxPool": 1}
# ---- end of facts ----

# Parsed by TensorRT 10 (some of them) but slow or unsupported for us: Loop/Scan/If run sequentially, CumSum
# was a sequential loop before TensorRT 10.8, DFT/STFT are not supported.
FORBIDDEN = ("Loop", "Scan", "If", "CumSum", "DFT", "STFT")
DATA_DEPENDENT = ("NonZero", "Unique", "NonMaxSuppression")
_DEFAULT_DOMAINS = ("", "ai.onnx")

_ONNX_TO_TRT = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
                TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
                TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.INT4: "INT4",
                TensorProto.FLOAT8E4M3FN: "FP8"}
if hasattr(TensorProto, "FLOAT4E2M1"):
    _ONNX_TO_TRT[TensorProto.FLOAT4E2M1] = "FP4"
_BAD_TYPES = {TensorProto.DOUBLE: ("dtype-float64", "float64"), TensorProto.COMPLEX64: ("dtype-complex", "complex64"),
              TensorProto.COMPLEX128: ("dtype-complex", "complex128")}
_I64 = TensorProto.INT64


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    graph: str
    where: str
    message: str


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    graphs: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        verdict = "TensorRT-ready" if self.ok else "NOT TensorRT-ready"
        return (f"lint: {len(self.graphs)} graph(s), {len(self.errors)} error(s), {len(self.warnings)} "
                f"warning(s): {verdict}")

    def table(self) -> str:
        head = ("graph", "rule", "severity", "node/tensor", "message")
        rows = [(f.graph, f.rule, f.severity, f.where, f.message) for f in self.findings]
        if not rows:
            return "no findings"
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 7)]
        return "\n".join(lines + [fmt.format(*r) for r in rows])

    def to_dict(self) -> dict:
        return {"ok": self.ok, "graphs": list(self.graphs), "errors": len(self.errors),
                "warnings": len(self.warnings), "findings": [asdict(f) for f in self.findings]}


# ------------------------------------------------------------------ one model

def lint_model(model: onnx.ModelProto, graph: Optional[str] = None, cfg: Optional[LRUConfig] = None, *,
               label: Optional[str] = None, prefill_outputs: str = "all",
               trt_version: tuple[int, int] = DEFAULT_TRT,
               spec: Optional[contract.GraphSpec] = None) -> list[Finding]:
    """Every finding for one model. `graph` ('prefill'|'step') enables the seq-axis and contract checks;
    the contract is `spec` (a manifest's) or the one `cfg` implies. `trt_version` is the oldest TensorRT the
    graph must parse on."""
    if graph is not None and graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS} or None, got {graph!r}")
    out: list[Finding] = []
    lbl = label or graph or (model.graph.name or "model")

    def add(rule: str, where: str, message: str, severity: str = ERROR) -> None:
        out.append(Finding(rule, severity, lbl, where, message))

    _check_opsets(model, trt_version, add)
    g = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as e:
        add("shape-inference", "model", f"shape inference failed ({e}); intermediate dtypes unchecked", WARNING)
        inferred = g
    types = _elem_types(g, inferred)
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    functions = {(f.domain, f.name) for f in model.functions}
    _check_nodes(g, types, consts, functions, model, trt_version, add)
    _check_bad_types(g, inferred, add)
    _check_int64(g, types, add)
    _check_dims(g, inferred, graph, add)
    if spec is None and graph is not None and cfg is not None:
        spec = contract.graph_spec(cfg, graph, prefill_outputs)
    if spec is not None:
        _check_contract(model, spec, add)
    return out


def _check_opsets(model, trt_version, add) -> None:
    hi = max((v for k, v in OPSET_MAX.items() if k <= trt_version), default=OPSET_MAX[min(OPSET_MAX)])
    default = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not default:
        add("opset", "model", "no opset import for the default ONNX domain")
    for v in default:
        if not OPSET_MIN <= v <= hi:
            add("opset", "model", f"opset {v} is outside {OPSET_MIN}..{hi}, the range TensorRT "
                                  f"{_ver(trt_version)} parses; export with opset 18")
    used = {n.domain for n in _all_nodes(model.graph)} | {n.domain for f in model.functions for n in f.node}
    local = {f.domain for f in model.functions}
    for o in model.opset_import:
        if o.domain in _DEFAULT_DOMAINS or o.domain in local:
            continue
        if o.domain in used:
            add("opset-domain", "model", f"nodes of domain {o.domain!r} (v{o.version}): TensorRT parses only the "
                                         f"default ONNX domain (others need a plugin)")
        else:
            add("opset-domain", "model", f"unused opset import of domain {o.domain!r}", WARNING)


def _all_nodes(g: onnx.GraphProto):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            for sub in a.graphs:
                yield from _all_nodes(sub)


def _check_nodes(g, types, consts, functions, model, trt_version, add) -> None:
    fbodies = {(f.domain, f.name): f for f in model.functions}
    for n in _all_nodes(g):
        where = f"{n.op_type} {n.name}".strip()
        if n.domain not in _DEFAULT_DOMAINS:
            if (n.domain, n.op_type) in functions:
                body = fbodies[(n.domain, n.op_type)].node  # local functions are inlined by the parser
                fconsts = {o for x in body if x.op_type == "Constant" for o in x.output}
                for fn in body:
                    _check_op(fn, f"{where}/{fn.op_type} {fn.name}".strip(), {}, fconsts, trt_version, add)
            else:
                add("op-unsupported", where, f"op {n.domain}::{n.op_type} is not an ONNX op; TensorRT would need "
                                             f"a plugin")
            continue
        _check_op(n, where, types, consts, trt_version, add)


def _check_op(n, where, types, consts, trt_version, add) -> None:
    op = n.op_type
    if op in FORBIDDEN:
        add("op-forbidden", where, f"{op} is forbidden: sequential or unsupported in "
                                   f"TensorRT; use the chunked scan's fixed ops")
        return
    if op in DATA_DEPENDENT:
        add("data-dependent-shape", where, f"{op} has a data-dependent output shape")
        return
    if op not in TRT_OPS:
        add("op-unsupported", where, f"{op} is not in onnx-tensorrt's supported-operator table (TensorRT 10)")
        return
    since = OP_SINCE.get(op)
    if since and since > trt_version:
        add("op-unsupported", where, f"{op} needs TensorRT >= {_ver(since)} (target {_ver(trt_version)})")
    for idx, (name, lifted) in CONST_INPUTS.get(op, {}).items():
        if len(n.input) > idx and n.input[idx] and n.input[idx] not in consts and not (lifted and
                                                                                       lifted <= trt_version):
            until = f" before TensorRT {_ver(lifted)}" if lifted else ""
            add("op-restriction", where, f"{op} input `{name}` ({n.input[idx]}) must be an initializer or "
                                         f"Constant{until}")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    for name, allowed in ATTR_ALLOWED.get(op, {}).items():
        v = attrs.get(name)
        v = v.decode() if isinstance(v, bytes) else v
        if v is not None and v not in allowed:
            add("op-restriction", where, f"{op} {name}={v!r} unsupported; TensorRT takes "
                                         f"{', '.join(map(str, allowed))}")
    if op in MAX_OUTPUTS and sum(1 for o in n.output[MAX_OUTPUTS[op]:] if o):
        add("op-restriction", where, f"{op}: only the first {MAX_OUTPUTS[op]} output(s) are supported")
    operand = _TYPE_OPERAND.get(op, 0)
    tname = (n.output[0] if n.output else "") if operand == "out" else (
        n.input[operand] if len(n.input) > operand else "")
    t = _ONNX_TO_TRT.get(types.get(tname), None) if tname else None
    allowed_types = TRT_OPS[op] + (TYPES_SINCE[op][1] if op in TYPES_SINCE and TYPES_SINCE[op][0] <= trt_version
                                   else ())
    if t is not None and t not in allowed_types:
        add("op-dtype", where, f"{op} on {t} ({tname}); TensorRT {_ver(trt_version)} takes "
                               f"{', '.join(allowed_types)}")
    to = attrs.get("to") if op == "Cast" else None
    if to is not None and to not in _BAD_TYPES and _ONNX_TO_TRT.get(to) not in allowed_types:
        add("op-dtype", where, f"Cast to {TensorProto.DataType.Name(to)}; TensorRT casts to "
                               f"{', '.join(allowed_types)}")


def _check_bad_types(g, inferred, add) -> None:
    seen: set[str] = set()

    def bad(rule_name: tuple, where: str, tname: str, what: str) -> None:
        if tname in seen:
            return
        seen.add(tname)
        rule, label = rule_name
        add(rule, where, f"{what} is {label}; TensorRT has no {label}: compute in float64 at export time and "
                         f"store float32 (real and imaginary planes for complex)")

    for t in g.initializer:
        if t.data_type in _BAD_TYPES:
            bad(_BAD_TYPES[t.data_type], t.name, t.name, f"initializer {t.name}")
    for n in _all_nodes(g):
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _BAD_TYPES:
                bad(_BAD_TYPES[a.t.data_type], f"{n.op_type} {n.name}".strip(), n.output[0] if n.output else n.name,
                    f"{n.op_type} attribute {a.name}")
            elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in _BAD_TYPES:
                bad(_BAD_TYPES[a.i], f"{n.op_type} {n.name}".strip(), n.output[0] if n.output else n.name,
                    f"{n.op_type} output ({a.name}={TensorProto.DataType.Name(a.i)})")
    for kind, vis in (("input", g.input), ("output", g.output), ("tensor", inferred.value_info)):
        for vi in vis:
            et = vi.type.tensor_type.elem_type
            if et in _BAD_TYPES:
                bad(_BAD_TYPES[et], vi.name, vi.name, f"{kind} {vi.name}")


def _elem_types(g, inferred) -> dict[str, int]:
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(inferred.value_info) + list(g.input) + list(g.output) + list(inferred.output):
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    types[n.output[0]] = a.t.data_type
                elif a.name in ("value_int", "value_ints"):
                    types[n.output[0]] = _I64
    return types


# Dataflow classes: SHAPE = computed from shapes and constants only; IDS = token ids (input_ids) moved around
# without arithmetic; DATA = anything that depends on graph input values.
SHAPE, IDS, DATA = "shape", "ids", "data"
# Ops that move token ids without changing them: op -> input positions that may carry ids.
_MOVES: dict[str, Optional[tuple[int, ...]]] = {
    "Reshape": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Flatten": (0,), "Identity": (0,), "Slice": (0,),
    "Transpose": (0,), "Expand": (0,), "Gather": (0,), "Split": (0,), "Tile": (0,), "Pad": (0,),
    "Concat": None,  # any position
}
_RANDOM = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")


def _check_int64(g, types, add) -> None:
    cls: dict[str, str] = {t.name: SHAPE for t in g.initializer}
    for vi in g.input:
        if vi.name in cls:
            continue
        cls[vi.name] = IDS if vi.name == "input_ids" else DATA
        if types.get(vi.name) == _I64 and vi.name != "input_ids":
            add("int64-data", vi.name, f"int64 graph input {vi.name}: only `input_ids` (token ids) may be int64")
    for n in g.node:
        ins = [(i, x) for i, x in enumerate(n.input) if x]
        kinds = {i: cls.get(x, DATA) for i, x in ins}
        upstream_reported = any(types.get(x) == _I64 and kinds[i] == DATA for i, x in ins)
        misuse = False
        if n.op_type in ("Shape", "Size"):
            out = SHAPE
        elif n.op_type in _RANDOM:
            out = DATA
        elif all(k == SHAPE for k in kinds.values()):
            out = SHAPE
        elif IDS in kinds.values():
            ids_at = {i for i, k in kinds.items() if k == IDS}
            others_shape = all(k == SHAPE for i, k in kinds.items() if i not in ids_at)
            moves = _MOVES.get(n.op_type, ())
            cast_int = n.op_type == "Cast" and any(a.name == "to" and a.i in (TensorProto.INT32, _I64)
                                                   for a in n.attribute)
            if others_shape and (cast_int or moves is None and n.op_type == "Concat" or
                                 moves and ids_at <= set(moves)):
                out = IDS
            elif n.op_type == "Gather" and ids_at == {1} and kinds.get(0) != DATA:
                out = DATA  # an embedding lookup: the intended use of token ids
            else:
                out, misuse = DATA, True
                add("int64-ids", f"{n.op_type} {n.name}".strip(),
                    f"token ids ({', '.join(n.input[i] for i in sorted(ids_at))}) feed {n.op_type}: ids may only "
                    f"index an embedding (Gather indices), not enter arithmetic")
        else:
            out = DATA
        for o in n.output:
            if not o:
                continue
            cls[o] = out
            if (out == DATA and types.get(o) == _I64 and not misuse and not upstream_reported
                    and n.op_type not in DATA_DEPENDENT):  # those have their own finding
                add("int64-data", f"{n.op_type} {n.name}".strip(),
                    f"{n.op_type} makes int64 tensor {o} from data (not shape arithmetic or token ids)")


def _dims(vi) -> Optional[list]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in tt.shape.dim]


def _check_dims(g, inferred, graph, add) -> None:
    inits = {t.name for t in g.initializer}
    io = [("input", vi) for vi in g.input if vi.name not in inits] + [("output", vi) for vi in g.output]
    for kind, vi in io:
        d = _dims(vi)
        if d is None:
            continue
        if d and isinstance(d[0], int):
            add("dynamic-batch", vi.name, f"{kind} {vi.name} has a fixed batch axis ({d[0]}); axis 0 must be a "
                                          f"named dynamic dim (e.g. 'batch')")
        if not d:
            add("dynamic-batch", vi.name, f"{kind} {vi.name} is a scalar: every contract tensor has a batch axis")
        if graph == "prefill" and len(d) > 1 and isinstance(d[1], int) and (
                vi.name in ("input_ids", "inputs") or (kind == "output" and vi.name == "outputs" and len(d) == 3)):
            add("dynamic-seq", vi.name, f"prefill {kind} {vi.name} has a fixed sequence axis ({d[1]}); axis 1 "
                                        f"must be a named dynamic dim (e.g. 'seq')")
    for kind, vi in io + [("tensor", vi) for vi in inferred.value_info]:
        d = _dims(vi) or []
        neg = [x for x in d if isinstance(x, int) and x < 0]
        if neg:
            add("negative-dim", vi.name, f"{kind} {vi.name} has dim {neg[0]}: use a named dim_param for a "
                                         f"dynamic axis")


def _check_contract(model, spec: contract.GraphSpec, add) -> None:
    for tensor, msg in contract.io_findings(spec, contract.onnx_io(model)):
        add("contract", tensor, msg)


def _ver(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


# ------------------------------------------------------------------ folders

def lint_export(export_dir, *, cfg: Optional[LRUConfig] = None, prefill_outputs: Optional[str] = None,
                trt_version: tuple[int, int] = DEFAULT_TRT) -> LintReport:
    """Lint every <precision>/{prefill,step}.onnx under an export folder, or one .onnx file. The contract is
    the manifest's; `cfg` (and `prefill_outputs`) given here win, for a folder whose manifest is not written
    yet (export lints before it writes the manifest)."""
    path = Path(export_dir)
    problem = trt_version_problem(trt_version)
    if problem:
        raise InputError(problem, f"pass --trt {_ver(TRT_RANGE[0])} to {_ver(TRT_RANGE[1])}, the oldest TensorRT "
                                  f"the graphs must parse on")
    if not path.exists():
        raise InputError(f"{path} does not exist", "pass an export folder (from `lru-deploy export`) or a .onnx file")
    report = LintReport()

    def add_to(label: str) -> Callable[..., None]:
        def add(rule: str, where: str, message: str, severity: str = ERROR) -> None:
            report.findings.append(Finding(rule, severity, label, where, message))
        return add

    if path.is_file():
        if path.suffix != ".onnx":
            raise InputError(f"{path} is not an .onnx file", "pass an export folder or a .onnx file")
        root = path.parent.parent
        graphs = [(f"{path.parent.name}/{path.name}", path, path.stem if path.stem in GRAPHS else None)]
    else:
        root = path
        graphs = []
        for prec in sorted(p for p in path.iterdir() if p.is_dir()):
            files = {g: prec / f"{g}.onnx" for g in GRAPHS}
            if not any(f.exists() for f in files.values()):
                continue
            for g, f in files.items():
                if f.exists():
                    graphs.append((f"{prec.name}/{g}", f, g))
                else:
                    add_to(f"{prec.name}/{g}")("missing-graph", str(f.relative_to(path)),
                                               f"{prec.name}/ has no {g}.onnx; export writes both graphs")
        if not graphs:
            raise InputError(f"no <precision>/prefill.onnx or <precision>/step.onnx under {path}",
                             "run `lru-deploy export` first, or pass a single .onnx file")
    specs = {}
    if cfg is not None:
        specs = {g: contract.graph_spec(cfg, g, prefill_outputs or "all") for g in GRAPHS}
    manifest = None
    if cfg is None and (root / MANIFEST).is_file():
        manifest = _manifest(root, add_to(MANIFEST))
        specs = {g: manifest.spec(g) for g in GRAPHS} if manifest else {}
    for label, f, g in graphs:
        report.graphs.append(label)
        try:
            model = onnx.load(str(f), load_external_data=False)
        except (OSError, ValueError, DecodeError) as e:
            add_to(label)("load", str(f), f"cannot read the model: {e}")
            continue
        report.findings += lint_model(model, g, label=label, trt_version=trt_version, spec=specs.get(g))
        if manifest is not None:
            for p in manifest.limit_problems(model):
                add_to(label)("manifest", str(f), p)
    log.debug("lint %s: %d finding(s)", path, len(report.findings))
    return report


def _manifest(root: Path, add) -> Optional[ExportManifest]:
    """The folder's manifest, verified as every consumer verifies it (format, files, hashes, contract against
    config); one that fails is a finding, and the graphs are then linted without a contract."""
    try:
        return ExportManifest.read(root)
    except LRUDeployError as e:
        add("manifest", MANIFEST, "; ".join([e.message] + e.problems) + " (contract not checked)")
        return None
