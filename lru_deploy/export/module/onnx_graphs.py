"""From PyTorch's ONNX graph of a model to lru-deploy's prefill and step graphs.

`trace(model)` runs torch.onnx.export (dynamo) on the model with every state explicit (reference.Stateful).
Each lru_deploy.nn layer is a custom operator there, which the translation table below turns into a
placeholder node of the `lru_deploy` domain (LRU with its layer number; MeanPool; LastPool). `build(...)` then
copies PyTorch's graph into a GraphBuilder and puts in place of each placeholder the same LRU scan as the native
export (scan.lru_prefill: chunked parallel scan, lambda powers from float64; scan.lru_step: the two-term-lambda
recurrence).

Prefill position order. Every module outside the LRU layers acts on each position alone (export_module refuses
the others), so PyTorch's graph computes the same values whatever order the positions come in. The prefill
graph pads the input to a multiple of the chunk T and hands PyTorch's graph the positions as [T, batch*chunks,
...] (the layout's (t, b, c) order), which is the order the scan reads rows in: no transpose around any LRU
layer, one at the input and one at the output, as in the native graphs.

Precision: PyTorch's MatMul and Gemm nodes run in the precision's type between explicit Casts (their weights
stored in it); everything else PyTorch wrote (norms, activations, residuals, gates), the scans, the LRU's
diagonal skip and the state stay float32.
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ...contract import OUTPUTS, ModuleConfig, input_name, out_name
from ..builder import F32, GraphBuilder
from ..graphs import META
from ..scan import LRUWeights, PrefillLayout, lru_prefill, lru_step, scan_reach

DOMAIN = "lru_deploy"
_MATMULS = ("MatMul", "Gemm")


def _schemas() -> None:
    """Register the placeholder ops' schemas with onnx (onnxscript's tracer needs one per op); idempotent."""
    from onnx.defs import OpSchema
    P = OpSchema.FormalParameter
    T = [("T", ["tensor(float)", "tensor(double)"], "")]
    specs = {"LRU": (["x", "h0"], ["y", "h"], [OpSchema.Attribute("layer", OpSchema.AttrType.INT, "layer number")]),
             "MeanPool": (["x", "pool_sum", "pool_count"], ["y", "sum", "count"], []),
             "LastPool": (["x"], ["y"], [])}
    for name, (ins, outs, attrs) in specs.items():
        try:
            onnx.defs.get_schema(name, 1, DOMAIN)
            continue
        except onnx.defs.SchemaError:
            pass
        onnx.defs.register_schema(OpSchema(name, DOMAIN, 1, inputs=[P(i, "T") for i in ins],
                                           outputs=[P(o, "T") for o in outs], type_constraints=T, attributes=attrs))


def _translations() -> dict:
    import onnxscript
    _schemas()
    dom = onnxscript.values.Opset(DOMAIN, 1)

    def lru(x, h0, nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D, layer: int):
        return dom.LRU(x, h0, layer=layer)

    def mean_pool(x, pool_sum, pool_count):
        return dom.MeanPool(x, pool_sum, pool_count)

    def last_pool(x):
        return dom.LastPool(x)

    return {torch.ops.lru_deploy.lru.default: lru, torch.ops.lru_deploy.mean_pool.default: mean_pool,
            torch.ops.lru_deploy.last_pool.default: last_pool}


def trace(stateful: torch.nn.Module, example: tuple, cfg: ModuleConfig, opset: int) -> onnx.ModelProto:
    """PyTorch's ONNX graph of `stateful` (float32) with placeholders; inputs and outputs named by the contract."""
    import logging
    import warnings
    from ...nn import tracing
    spec = cfg.graph_spec("prefill")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dyn = ({0: batch, 1: seq}, tuple({0: batch} for _ in example[1:]))  # forward(x, *states)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:  # the exporter prints its progress on stdout, which belongs to the caller
        with tracing(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(stateful, example, dynamo=True, dynamic_shapes=dyn, opset_version=opset,
                                     custom_translation_table=_translations(), input_names=spec.input_names,
                                     output_names=spec.output_names, verbose=False, optimize=True)
    finally:
        quiet.setLevel(level)
    return prog.model_proto


class _Copy:
    """Copies PyTorch's nodes into the builder under /torch/, tensor names mapped through `names`."""

    def __init__(self, g: GraphBuilder, src: onnx.ModelProto):
        self.g, self.src = g, src
        self.names: dict[str, str] = {}
        self.inits = {t.name: t for t in src.graph.initializer}
        self._reduced: dict[str, str] = {}

    def name(self, t: str) -> str:
        if t == "":
            return ""
        if t not in self.names:
            if t in self.inits:
                init = onnx.TensorProto()
                init.CopyFrom(self.inits[t])
                init.name = f"/torch/{t}"
                self.g.inits.append(init)
            self.names[t] = f"/torch/{t}"
        return self.names[t]

    def reduced(self, t: str) -> str:
        """Input t of a matmul in the precision's type: an initializer converted once, else a Cast."""
        g = self.g
        if t in self.inits and g.rt != F32:
            if t not in self._reduced:
                self._reduced[t] = g.W(numpy_helper.to_array(self.inits[t]).astype(np.float64), f"torch/{t}")
            return self._reduced[t]
        return g.to_rt(self.name(t))

    def node(self, n: onnx.NodeProto) -> None:
        g = self.g
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in _MATMULS and g.rt != F32:
            ins = [self.reduced(i) if i else "" for i in n.input]
            y = g.op(n.op_type, *ins, name=f"torch/{n.name or n.op_type}", **attrs)
            self.names[n.output[0]] = g.to_f32(y)
            return
        node = helper.make_node(n.op_type, [self.name(i) for i in n.input], [], domain=n.domain or None,
                                name=g.path(f"torch/{n.name or n.op_type}"))
        node.attribute.extend(n.attribute)
        for o in n.output:
            node.output.append(g.path(f"torch/{o}") if o else "")
            if o:
                self.names[o] = node.output[-1]
        g.nodes.append(node)


def build(src: onnx.ModelProto, graph: str, precision: str, cfg: ModuleConfig, weights: list[LRUWeights],
          pool_dim: Optional[int], chunk: int, max_seq: int, opset: int, name: str) -> onnx.ModelProto:
    """The prefill or step graph from PyTorch's graph `src` (see the module docstring)."""
    g = GraphBuilder(f"{name}_{graph}_{precision}", precision)
    spec = cfg.graph_spec(graph)
    xname = input_name(cfg)
    cp = _Copy(g, src)
    src_x = src.graph.input[0].name
    for t in spec.state_inputs:  # state inputs keep their names
        cp.names[t.name] = t.name
    layout = None
    if graph == "prefill":
        layout = PrefillLayout(g, xname, chunk, max_seq, None if cfg.tokens else cfg.d_input)
        lead = [chunk, -1] + ([] if cfg.tokens else [cfg.d_input])
        cp.names[src_x] = g.op("Reshape", layout.to_chunks(xname), g.i64(lead), name="layout/rows")  # [T, B*C(, F)]
    else:
        cp.names[src_x] = g.op("Unsqueeze", xname, g.i64([1]), name="input/positions")  # [B, 1(, F)]
    layer_names = [n for n, _ in cfg.layers]
    for n in src.graph.node:
        if n.domain != DOMAIN:
            cp.node(n)
            continue
        if n.op_type == "LRU":
            li = next(a.i for a in n.attribute if a.name == "layer")
            with g.scope(layer_names[li]):
                y, h = _lru(g, layout, weights[li], cp.name(n.input[0]), cp.name(n.input[1]))
            cp.names[n.output[0]], cp.names[n.output[1]] = y, h
        else:
            with g.scope("pool"):
                outs = _pool(g, layout, n.op_type, [cp.name(i) for i in n.input], pool_dim)
            for o, v in zip(n.output, outs):
                cp.names[o] = v
    outs = {}
    y = cp.name(src.graph.output[0].name)
    if cfg.pooling == "none":
        with g.scope("output"):
            y2 = g.op("Reshape", y, g.i64([-1, cfg.d_output]))
            y = layout.to_sequence(y2, cfg.d_output) if layout is not None else y2
    outs[OUTPUTS] = y
    for t, o in zip(spec.state_inputs, src.graph.output[1:]):
        outs[out_name(t.name)] = cp.name(o.name)
    for t in spec.outputs:
        g.op("Identity", outs[t.name], out=t.name, name=t.name)
    vi = lambda t: helper.make_tensor_value_info(  # noqa: E731
        t.name, TensorProto.INT64 if t.dtype == "int64" else F32, list(t.shape))
    gp = helper.make_graph(g.nodes, g.name, [vi(t) for t in spec.inputs], [vi(t) for t in spec.outputs],
                           initializer=g.inits)
    m = helper.make_model(gp, opset_imports=[helper.make_opsetid("", opset)], producer_name="lru-deploy")
    m.ir_version = min(m.ir_version, 10)
    meta = {"graph": graph, "precision": precision, "source": "module", "probes": json.dumps({})}
    if graph == "prefill":
        meta.update(max_seq=max_seq, chunk=chunk, scan_reach=scan_reach(max_seq, chunk), prefill_outputs="all")
    helper.set_model_props(m, {META + k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(m)
    return m


def _lru(g: GraphBuilder, layout: Optional[PrefillLayout], w: LRUWeights, x: str, h0: str) -> tuple[str, str]:
    """One LRU layer in place of its placeholder: x float32 [.., .., H_in] -> (y float32 [.., .., H_out],
    final state [B, 2, N])."""
    H_in, H_out = w.Wb.shape[0], w.Wc.shape[1]
    rows = g.op("Reshape", x, g.i64([-1, H_in]), name="rows")  # prefill: (t, b, c) order; step: [B, H_in]
    xr = g.to_rt(rows)
    if layout is not None:
        y, h = lru_prefill(g, layout, w, xr, h0)
    else:
        y, h = lru_step(g, w, xr, h0)
    y = g.to_f32(y)
    with g.scope("skip"):
        if w.D.ndim == 1:  # diagonal: elementwise, float32
            skip = g.op("Mul", rows, g.const(w.D, name="D"))
        else:
            skip = g.to_f32(g.op("MatMul", xr, g.W(w.D.T, "D")))
    y = g.op("Add", y, skip, name="output")
    lead = g.op("Slice", g.op("Shape", x), g.i64([0]), g.i64([-1]), g.i64([0]), name="lead")
    return g.op("Reshape", y, g.op("Concat", lead, g.i64([H_out]), axis=0), name="positions"), h


def _pool(g: GraphBuilder, layout: Optional[PrefillLayout], kind: str, ins: list, d: Optional[int]) -> list:
    rows = g.op("Reshape", ins[0], g.i64([-1, d]), name="rows")
    if kind == "LastPool":
        return [layout.at_last(rows, d) if layout is not None else rows]
    if layout is not None:
        s = g.op("Add", ins[1], g.op("ReduceSum", layout.to_sequence(rows, d), g.i64([1]), keepdims=0), name="sum")
        c = g.op("Add", ins[2], g.op("Cast", layout.S1, to=F32), name="count")
    else:
        s = g.op("Add", ins[1], rows, name="sum")
        c = g.op("Add", ins[2], g.const(np.ones((1, 1)), name="one"), name="count")
    return [g.op("Div", s, c, name="mean"), s, c]
