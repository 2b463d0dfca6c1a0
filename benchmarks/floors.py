"""The projections-only floors that benchmarks measure the exported graphs against.

A floor graph is the exported network with every LRU layer's recurrence removed: each layer computes
Re(C (B u)) with no scan (x = B u), the state input passes through unchanged, and positions stay in sequence
order (no chunk reordering, no padding). Its outputs are meaningless; its cost is what the encoder, the
projections, the block's GELU/GLU, the norms and the decoder cost, which no scan formulation can go below.
"""
from __future__ import annotations

import onnx

from lru_deploy.contract import OUTPUTS, out_name
from lru_deploy.export.graphs import Network
from lru_deploy.model import LRUModel


def _projections(g, w, xr: str) -> str:
    """Re(C (B u)) without a recurrence: the two projections of the LRU layer."""
    bu = g.to_f32(g.op("MatMul", xr, g.W(w.Wb)))
    return g.op("MatMul", g.to_rt(bu), g.W(w.Wc))


def _floor(model: LRUModel, graph: str, opset: int, meta: dict) -> onnx.ModelProto:
    if model.cfg.pooling == "mean":
        raise ValueError("the floor graphs cover pooling none and last (the benchmarked models)")
    net = Network(model, "fp32", graph)
    g, cfg, H = net.g, net.cfg, net.cfg.d_model
    x = "input_ids" if cfg.tokens else "inputs"
    u = net.encode(x)
    if graph == "prefill":
        u = g.op("Reshape", u, g.i64([-1, net.width_in]))  # d_input wide for a model without an encoder
    finals = []
    for li in range(cfg.n_layers):
        state = g.op("Gather", "state", g.i64(li), axis=1)
        u, st = net.block(u, li, lambda xr, w, st=state: (_projections(g, w, xr), st))
        finals.append(g.op("Unsqueeze", st, g.i64([1])))
    if graph == "prefill":
        batch = g.op("Slice", g.op("Shape", x), g.i64([0]), g.i64([1]), g.i64([0]))
        u = g.op("Reshape", u, g.op("Concat", batch, g.i64([-1, H]), axis=0))  # [B, S, H]
        if cfg.pooling == "last" or meta.get("prefill_outputs") == "last":
            u = g.op("Gather", u, g.i64(-1), axis=1)
    outs = {OUTPUTS: net.decode(u), out_name("state"): g.op("Concat", *finals, axis=1)}
    return net.finish(graph, outs, opset, meta)


def floor_prefill(model: LRUModel, chunk: int, max_seq: int, opset: int = 18,
                  prefill_outputs: str = "all") -> onnx.ModelProto:
    """The prefill floor of a float64 model (lru_deploy.model.gold); chunk and max_seq only label the graph."""
    return _floor(model, "prefill", opset, dict(max_seq=max_seq, chunk=chunk, prefill_outputs=prefill_outputs))


def floor_step(model: LRUModel, opset: int = 18) -> onnx.ModelProto:
    """The step floor: x = B u per layer, state passed through."""
    return _floor(model, "step", opset, {})
