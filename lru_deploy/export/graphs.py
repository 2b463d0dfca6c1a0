"""Build the prefill and step ONNX graphs of a native LRU model, directly with onnx.helper.

Why not torch.onnx.export: the graphs must contain exactly the ops, dtypes and casts of the precision policy,
every lambda power must come from float64 at export, and the chunked scan needs shape arithmetic that a tracer
would specialise. The LRU layer itself is in scan.py (`lru_prefill`, `lru_step`); this module wires the network
around it: encoder (or embedding, or none), [embedding norm], blocks (norm, LRU, skip, feed-forward: GELU + GLU,
an MLP or none, residual, a feed-forward sublayer with its own norm), pooling, [final norm], decoder (Linear,
tied to the embedding, or none). The LRU's complex input bias b_B rides on the input projection as one more
input column of ones (Wb gets the row exp(gamma_log) b_B), so the scan itself is the bias-free one.

Names: every node and tensor sits under its place in the network (`/layers.2/lru/scan/step3/Mul`,
`/decoder/MatMul`). Each graph records in its metadata_props the limits it was built for (`lru_deploy.max_seq`,
`lru_deploy.chunk`, `lru_deploy.scan_reach`), what it is (`lru_deploy.graph`, `lru_deploy.precision`,
`lru_deploy.prefill_outputs`), and `lru_deploy.probes`: the tensors that hold each block's intermediate values,
which `lru-deploy check --localize` turns into extra outputs to find the layer where an error starts.

Precision: the residual stream, norms, scan and state are float32; matmuls, the skip (diagonal or full), GELU,
the GLU and the MLP run in the precision's type between explicit Casts; an identity skip is added in float32.
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

    @property
    def width_in(self) -> int:
        """The residual stream's width entering layer 0 (d_input for a model without an encoder)."""
        return self.cfg.layer_widths(0)[0]

    def encode(self, x: str) -> str:
        """Token ids or inputs -> float32 residual stream [..., width_in]."""
        m, g = self.model, self.g
        with g.scope("encoder"):
            if self.cfg.tokens:  # a lookup, not a matmul: the table stays float32
                table = g.const(m.embedding.weight.detach().double().numpy(), F32, "embedding")
                u = g.op("Gather", table, x, axis=0)
            elif self.cfg.encoder == "none":  # a bare layer: the inputs are the stream (float32 by contract)
                u = x
            else:
                W = m.encoder.weight.detach().double().numpy().T
                b = m.encoder.bias.detach().double().numpy()
                u = g.to_f32(g.linear(g.to_rt(x), W, b, "linear"))
        if self.cfg.embedding_norm:
            with g.scope("embedding_norm"):
                u = self.norm(u, m.embedding_norm)
        return u

    def norm(self, u: str, norm, name: str = "norm") -> str:
        g, kind, eps = self.g, self.cfg.norm, self.cfg.norm_eps
        p = {k: v.detach().double().numpy() for k, v in norm.state_dict().items()}
        with g.scope(name):
            if kind == "layer":
                return g.op("LayerNormalization", u, g.const(p["weight"], name="weight"),
                            g.const(p["bias"], name="bias"), axis=-1, epsilon=eps)
            if kind == "rms":  # Pow-ReduceMean-Add-Sqrt-Div-Mul: the form ONNX Runtime fuses into one kernel
                ms = g.op("ReduceMean", g.op("Pow", u, g.const(np.float32(2.0), name="two")), g.i64([-1]),
                          keepdims=1)
                r = g.op("Sqrt", g.op("Add", ms, g.const(np.float32(eps), name="eps")))
                return g.op("Mul", g.op("Div", u, r), g.const(p["weight"], name="weight"))
            if kind == "batch":  # inference-time affine map, folded in float64
                scale = p["weight"] / np.sqrt(p["running_var"] + eps)
                shift = p["bias"] - p["running_mean"] * scale
                return g.op("Add", g.op("Mul", u, g.const(scale, name="scale")), g.const(shift, name="shift"))
        return u

    def activation(self, y: str) -> str:
        """The mlp's activation, in the reduced type."""
        g, kind = self.g, self.cfg.activation
        if kind == "relu":
            return g.op("Relu", y, name="relu")
        if kind == "silu":
            with g.scope("silu"):
                return g.op("Mul", y, g.op("Sigmoid", y))
        return self.gelu(y)

    def feed_forward(self, y: str, block) -> str:
        """The block's feed-forward on y (reduced type) -> reduced type; ff none returns y."""
        g, f = self.g, (lambda t: t.detach().double().numpy())
        if self.cfg.ff == "glu":
            h = self.gelu(y)
            with g.scope("glu"):  # two MatMul+Add, not one and a Split: a Split is one more pass over [positions, 2H]
                a = g.linear(h, f(block.out1.weight).T, f(block.out1.bias), "out1")
                b = g.linear(h, f(block.out2.weight).T, f(block.out2.bias), "out2")
                return g.op("Mul", a, g.op("Sigmoid", b))
        if self.cfg.ff == "mlp":
            with g.scope("mlp"):
                h = self.activation(g.linear(y, f(block.fc1.weight).T, f(block.fc1.bias), "fc1"))
                return g.linear(h, f(block.fc2.weight).T, f(block.fc2.bias), "fc2")
        return y

    def lru_weights(self, lru) -> LRUWeights:
        """The layer's LRUWeights; with lru_bias, Wb has one more input row: exp(gamma_log) * b_B (re | im),
        the weight of the column of ones that `with_ones` appends to the layer's input."""
        f = lambda t: t.detach().double().numpy()  # noqa: E731
        if self.cfg.skip == "identity":  # no D parameter: from_lru reads one, the skip itself is added here
            lru = _WithD(lru)
        w = LRUWeights.from_lru(lru)
        if self.cfg.lru_bias:
            b = (f(lru.B_bias_re) + 1j * f(lru.B_bias_im)) * np.exp(f(lru.gamma_log))
            w.Wb = np.concatenate([w.Wb, np.concatenate([b.real, b.imag])[None]], axis=0)
        return w

    def with_ones(self, xr: str) -> str:
        """[rows, H] -> [rows, H + 1], the last column ones (reduced type)."""
        g = self.g
        with g.scope("ones"):
            rows = g.op("Slice", g.op("Shape", xr), g.i64([0]), g.i64([1]), g.i64([0]))
            ones = g.op("Expand", g.W(np.ones((1, 1), np.float32), "one"),
                        g.op("Concat", rows, g.i64([1]), axis=0))
            return g.op("Concat", xr, ones, axis=1)

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
        """u float32 [..., H_in] -> (float32 [..., H], the layer state); lru(x_rt, weights) -> (Re(C x), state)
        with x_rt [..., H_in] (H_in + 1 with lru_bias: a column of ones, see lru_weights)."""
        g, block, cfg = self.g, self.model.layers[li], self.cfg
        f = lambda t: t.detach().double().numpy()  # noqa: E731
        with g.scope(f"layers.{li}"):
            xn = self.norm(u, block.norm) if cfg.prenorm else u
            if cfg.prenorm and cfg.norm != "none":
                self.probes[f"layers.{li}/norm_in"] = xn
            xr = g.to_rt(xn)
            w = self.lru_weights(block.lru)
            with g.scope("lru"):
                y, state = lru(self.with_ones(xr) if cfg.lru_bias else xr, w)
                if cfg.lru_bias:  # Re(b_C)
                    y = g.op("Add", y, g.W(f(block.lru.C_bias), "C_bias"), name="bias")
                if cfg.skip == "identity":  # y + x, in float32 like the residual stream
                    y = g.op("Add", g.to_f32(y), xn, name="output")
                else:
                    skip = (g.op("Mul", xr, g.W(w.D, "D"), name="skip") if cfg.skip == "diagonal"
                            else g.op("MatMul", xr, g.W(w.D.T, "D"), name="skip"))
                    y = g.op("Add", y, skip, name="output")
            self.probes[f"layers.{li}/lru"] = y
            self.probes[f"layers.{li}/lru_state"] = state
            y32 = cfg.skip == "identity"  # y is float32 (else the reduced type)
            if not cfg.ff_sublayer and cfg.ff != "none":
                y, y32 = self.feed_forward(g.to_rt(y) if y32 else y, block), False
            z = y if y32 else g.to_f32(y)
            u = g.op("Add", u, z, name="residual") if cfg.residual else z
            if not cfg.prenorm:
                u = self.norm(u, block.norm)
            if cfg.ff_sublayer:
                with g.scope("ff_sublayer"):
                    v = self.norm(u, block.norm2, "norm2") if cfg.prenorm else u
                    u = g.op("Add", u, g.to_f32(self.feed_forward(g.to_rt(v), block)), name="residual")
                    if not cfg.prenorm:
                        u = self.norm(u, block.norm2, "norm2")
            self.probes[f"layers.{li}/block"] = u
        return u, state

    def decode(self, v: str) -> str:
        m, g, cfg = self.model, self.g, self.cfg
        with g.scope("decoder"):
            if cfg.final_norm:
                v = self.norm(v, m.decoder.norm)
            if cfg.decoder == "none":
                return v
            W = m.decoder.table().detach().double().numpy().T  # the embedding table when tied
            b = m.decoder.bias.detach().double().numpy() if cfg.decoder_bias else None
            out = g.to_f32(g.linear(g.to_rt(v), W, b, "linear"))
            return g.op("LogSoftmax", out, axis=-1) if cfg.log_softmax else out

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


class _WithD:
    """An identity-skip LRU as LRUWeights.from_lru reads it: every parameter, and an empty D (unused)."""

    def __init__(self, lru):
        self._lru = lru
        self.D = lru.nu_log.new_zeros(0)

    def __getattr__(self, name):
        return getattr(self._lru, name)


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
    u = g.op("Reshape", net.encode(layout.to_chunks(xname)), g.i64([-1, net.width_in]),
             name="encoder/rows")  # [positions, H]
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
