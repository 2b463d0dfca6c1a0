"""Build the prefill and step ONNX graphs of a native LRU model, directly with onnx.helper.

Why not torch.onnx.export: the graphs must contain exactly the ops, dtypes and casts of the precision policy,
every lambda power must come from float64 at export, and the chunked scan needs shape arithmetic that a tracer
would specialise. The LRU layer itself is in scan.py (`lru_prefill`, `lru_step`); this module wires the network
around it: encoder, blocks (norm, LRU, skip, GELU, GLU, residual), pooling and decoder.

Names: every node and tensor sits under its place in the network (`/layers.2/lru/scan/step3/Mul`,
`/decoder/MatMul`). Each graph records in its metadata_props the limits it was built for (`lru_deploy.max_seq`,
`lru_deploy.chunk`, `lru_deploy.scan_reach`), what it is (`lru_deploy.graph`, `lru_deploy.precision`,
`lru_deploy.prefill_outputs`), and `lru_deploy.probes`: the tensors that hold each block's intermediate values,
which `lru-deploy check --localize` turns into extra outputs to find the layer where an error starts.

Precision: the residual stream, norms, scan and state are float32; matmuls, the skip, GELU and the GLU run in
the precision's type between explicit Casts.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from ..contract import OUTPUTS, graph_spec, out_name
from ..model import LRUConfig, LRUModel
from .builder import F32, I64, GraphBuilder
from .scan import INTRA, LRUWeights, PrefillLayout, lru_prefill, lru_step, scan_reach

__all__ = ["INTRA", "Network", "build_prefill", "build_step", "graph_limits", "graph_probes"]

META = "lru_deploy."  # prefix of the metadata_props keys this module writes
# Probe kinds, in the order they occur inside a block: what `check --localize` compares, per layer.
PROBES = ("norm_in", "lru", "lru_state", "block")


class Network:
    """The network around the LRU layers, shared by both graphs. `probes` collects, per layer, the tensors
    holding the block's intermediate values (float32, or reduced for `lru`)."""

    def __init__(self, model: LRUModel, precision: str, graph: str):
        self.cfg: LRUConfig = model.cfg
        self.model = model
        self.precision = precision
        self.g = GraphBuilder(f"lru_{graph}_{precision}", precision)
        self.probes: dict[str, str] = {}

    def encode(self, x: str) -> str:
        """Token ids or inputs -> float32 residual stream [..., H]."""
        m, g = self.model, self.g
        with g.scope("encoder"):
            if self.cfg.tokens:  # a lookup, not a matmul: the table stays float32
                table = g.const(m.embedding.weight.detach().double().numpy(), F32, "embedding")
                return g.op("Gather", table, x, axis=0)
            W = m.encoder.weight.detach().double().numpy().T
            b = m.encoder.bias.detach().double().numpy()
            return g.to_f32(g.linear(g.to_rt(x), W, b, "linear"))

    def norm(self, u: str, norm) -> str:
        g, kind, eps = self.g, self.cfg.norm, self.cfg.norm_eps
        p = {k: v.detach().double().numpy() for k, v in norm.state_dict().items()}
        with g.scope("norm"):
            if kind == "layer":
                return g.op("LayerNormalization", u, g.const(p["weight"], name="weight"),
                            g.const(p["bias"], name="bias"), axis=-1, epsilon=eps)
            if kind == "batch":  # inference-time affine map, folded in float64
                scale = p["weight"] / np.sqrt(p["running_var"] + eps)
                shift = p["bias"] - p["running_mean"] * scale
                return g.op("Add", g.op("Mul", u, g.const(scale, name="scale")), g.const(shift, name="shift"))
        return u

    def gelu(self, y: str) -> str:
        g = self.g
        with g.scope("gelu"):
            half, one = g.W(np.float32(0.5), "half"), g.W(np.float32(1.0), "one")
            if self.cfg.gelu == "exact":  # Div by sqrt(2): the form ONNX Runtime fuses into one Gelu kernel
                inner = g.op("Erf", g.op("Div", y, g.W(np.float32(math.sqrt(2)), "sqrt2")))
            else:
                cube = g.op("Mul", g.op("Mul", y, y), y)
                arg = g.op("Add", y, g.op("Mul", cube, g.W(np.float32(0.044715), "c")))
                inner = g.op("Tanh", g.op("Mul", arg, g.W(np.float32(math.sqrt(2 / math.pi)), "sqrt_2_pi")))
            return g.op("Mul", g.op("Mul", y, half), g.op("Add", inner, one))

    def block(self, u: str, li: int, lru) -> tuple[str, str]:
        """u float32 [..., H] -> (float32 [..., H], the layer state); lru(x_rt, weights) -> (Re(C x), state)."""
        g, block = self.g, self.model.layers[li]
        f = lambda t: t.detach().double().numpy()  # noqa: E731
        with g.scope(f"layers.{li}"):
            xn = self.norm(u, block.norm) if self.cfg.prenorm else u
            if self.cfg.prenorm and self.cfg.norm != "none":
                self.probes[f"layers.{li}/norm_in"] = xn
            xr = g.to_rt(xn)
            w = LRUWeights.from_lru(block.lru)
            with g.scope("lru"):
                y, state = lru(xr, w)
                skip = (g.op("Mul", xr, g.W(w.D, "D"), name="skip") if self.cfg.skip == "diagonal"
                        else g.op("MatMul", xr, g.W(w.D.T, "D"), name="skip"))
                y = g.op("Add", y, skip, name="output")
            self.probes[f"layers.{li}/lru"] = y
            self.probes[f"layers.{li}/lru_state"] = state
            h = self.gelu(y)
            with g.scope("glu"):  # two MatMul+Add, not one and a Split: a Split is one more pass over [positions, 2H]
                a = g.linear(h, f(block.out1.weight).T, f(block.out1.bias), "out1")
                b = g.linear(h, f(block.out2.weight).T, f(block.out2.bias), "out2")
                z = g.op("Mul", a, g.op("Sigmoid", b))
            u = g.op("Add", u, g.to_f32(z), name="residual")
            if not self.cfg.prenorm:
                u = self.norm(u, block.norm)
            self.probes[f"layers.{li}/block"] = u
        return u, state

    def decode(self, v: str) -> str:
        m, g = self.model, self.g
        with g.scope("decoder"):
            W = m.decoder.weight.detach().double().numpy().T
            b = m.decoder.bias.detach().double().numpy()
            out = g.to_f32(g.linear(g.to_rt(v), W, b, "linear"))
            return g.op("LogSoftmax", out, axis=-1) if self.cfg.log_softmax else out

    def finish(self, graph: str, outputs: dict[str, str], opset: int, meta: dict) -> onnx.ModelProto:
        g = self.g
        spec = graph_spec(self.cfg, graph, meta.get("prefill_outputs", "all"))
        for t in spec.outputs:
            g.op("Identity", outputs[t.name], out=t.name, name=t.name)
        vi = lambda t: helper.make_tensor_value_info(  # noqa: E731
            t.name, I64 if t.dtype == "int64" else F32, list(t.shape))
        gp = helper.make_graph(g.nodes, g.name, [vi(t) for t in spec.inputs], [vi(t) for t in spec.outputs],
                               initializer=g.inits)
        m = helper.make_model(gp, opset_imports=[helper.make_opsetid("", opset)], producer_name="lru-deploy")
        m.ir_version = min(m.ir_version, 10)
        meta = dict(meta, graph=graph, precision=self.precision, probes=json.dumps(self.probes, sort_keys=True))
        helper.set_model_props(m, {META + k: str(v) for k, v in meta.items()})
        onnx.checker.check_model(m)
        return m


def _state(g: GraphBuilder, li: int) -> str:
    """Layer li's slice of the state input: [B, 2, N]."""
    return g.op("Gather", "state", g.i64(li), axis=1, name=f"layers.{li}/state_in")


def _pooled(net: Network, u_at, outs: dict, step: bool) -> None:
    """Decoder outputs for pooling mean or last (and prefill_outputs last); `u_at(kind)` gives the residual
    stream over the sequence ('seq'), its length ('count', prefill only) or its last position ('last')."""
    g, cfg = net.g, net.cfg
    if cfg.pooling != "mean":
        outs[OUTPUTS] = net.decode(u_at("last"))
        return
    with g.scope("pool"):
        if step:
            psum = g.op("Add", "pool_sum", u_at("seq"))
            pcnt = g.op("Add", "pool_count", g.const(np.ones((1, 1)), name="one"))
        else:
            psum = g.op("Add", "pool_sum", g.op("ReduceSum", u_at("seq"), g.i64([1]), keepdims=0))
            pcnt = g.op("Add", "pool_count", g.op("Cast", u_at("count"), to=F32))
        mean = g.op("Div", psum, pcnt)
    outs[OUTPUTS] = net.decode(mean)
    outs.update({out_name("pool_sum"): psum, out_name("pool_count"): pcnt})


def build_prefill(model: LRUModel, precision: str = "fp32", chunk: int = 32, max_seq: int = 65536,
                  opset: int = 18, prefill_outputs: str = "all", intra: str = "toeplitz") -> onnx.ModelProto:
    """The chunked parallel-scan prefill graph. `model` should be float64 (lru_deploy.model.gold)."""
    if intra not in INTRA:
        raise ValueError(f"intra must be one of {INTRA}")
    net = Network(model, precision, "prefill")
    g, cfg, H = net.g, net.cfg, net.cfg.d_model
    xname = "input_ids" if cfg.tokens else "inputs"
    layout = PrefillLayout(g, xname, chunk, max_seq, None if cfg.tokens else cfg.d_input)
    u = g.op("Reshape", net.encode(layout.to_chunks(xname)), g.i64([-1, H]), name="encoder/rows")  # [positions, H]
    finals = []
    for li in range(cfg.n_layers):
        h0 = _state(g, li)
        u, state = net.block(u, li, lambda xr, w, h0=h0: lru_prefill(g, layout, w, xr, h0, intra))
        finals.append(g.op("Unsqueeze", state, g.i64([1]), name=f"layers.{li}/state_out"))

    outs = {}
    if cfg.pooling == "none" and prefill_outputs == "all":
        if cfg.d_output <= H:  # decode, then reorder the narrower tensor
            outs[OUTPUTS] = layout.to_sequence(net.decode(u), cfg.d_output)
        else:
            outs[OUTPUTS] = net.decode(layout.to_sequence(u, H))
    else:
        _pooled(net, lambda kind: {"seq": lambda: layout.to_sequence(u, H), "count": lambda: layout.S1,
                                   "last": lambda: layout.at_last(u, H)}[kind](), outs, step=False)
    outs[out_name("state")] = g.op("Concat", *finals, axis=1, name="state_out")
    meta = dict(max_seq=max_seq, chunk=chunk, scan_reach=scan_reach(max_seq, chunk), prefill_outputs=prefill_outputs,
                intra=intra)
    return net.finish("prefill", outs, opset, meta)


def build_step(model: LRUModel, precision: str = "fp32", opset: int = 18) -> onnx.ModelProto:
    """The single-step graph: x = lambda*h + Wb u per layer, state float32."""
    net = Network(model, precision, "step")
    g, cfg = net.g, net.cfg
    u = net.encode("input_ids" if cfg.tokens else "inputs")  # [B, H]
    finals = []
    for li in range(cfg.n_layers):
        h = _state(g, li)
        u, state = net.block(u, li, lambda xr, w, h=h: lru_step(g, w, xr, h))
        finals.append(g.op("Unsqueeze", state, g.i64([1]), name=f"layers.{li}/state_out"))
    outs = {}
    _pooled(net, lambda kind: u, outs, step=True)
    outs[out_name("state")] = g.op("Concat", *finals, axis=1, name="state_out")
    return net.finish("step", outs, opset, {})


def _props(model) -> dict[str, str]:
    """lru-deploy's metadata of a graph: an onnx.ModelProto, or the mapping ONNX Runtime gives
    (`session.get_modelmeta().custom_metadata_map`)."""
    items = (model.items() if isinstance(model, Mapping) else ((p.key, p.value) for p in model.metadata_props))
    return {k[len(META):]: v for k, v in items if k.startswith(META)}


def graph_limits(model) -> dict[str, int]:
    """The limits a prefill graph records: max_seq, chunk, scan_reach (empty for a step graph or an older file).
    `model` is an onnx.ModelProto or ONNX Runtime's metadata map. A value that is not an integer is returned as
    -1, which disagrees with any manifest."""
    out = {}
    for key, value in _props(model).items():
        if key in ("max_seq", "chunk", "scan_reach"):
            out[key] = int(value) if value.isdigit() else -1
    return out


def graph_probes(model) -> dict[str, str]:
    """Probe name (`layers.<i>/<kind>`, kind in PROBES) -> tensor name inside the graph."""
    raw = _props(model).get("probes")
    try:
        probes = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return probes if isinstance(probes, dict) else {}
