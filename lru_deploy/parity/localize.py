"""Where an error starts: a graph's intermediate values, block by block, against the reference's.

Every exported graph records in its metadata (`lru_deploy.probes`) which of its tensors hold each block's
intermediate values: the normalised input (`norm_in`, pre-norm models), the LRU layer's output with its skip
(`lru`), the layer's final state (`lru_state`) and the block's output (`block`). `localize` makes those
tensors extra outputs of a copy of the graph (each through a Cast to float32), runs it in ONNX Runtime on one
case's feeds, records the same values from the float64 reference through forward hooks, and compares them in
network order. The first probe whose relative L2 error exceeds the precision's bound, and the probe where the
error grows most over the one before it, name the layer and sub-step where the graph and the reference part.

Prefill probes hold positions in the graph's chunk order (t, b, c); they are put back in sequence order with
the graph's chunk before the comparison.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from .. import contract
from ..cases import Case, case_feeds, rel_l2
from ..export.graphs import PROBES, graph_probes
from ..model import LRUModel
from ..runtime.onnxruntime import ort_session

log = logging.getLogger(__name__)
OUT_PREFIX = "localize:"


def probe_order(names) -> list[str]:
    """Probe names in network order: layer by layer, sub-steps in PROBES order; unknown kinds last."""
    def key(name: str):
        m = re.fullmatch(r"layers\.(\d+)/(.+)", name)
        if not m:
            return (math.inf, len(PROBES), name)
        kind = m.group(2)
        return (int(m.group(1)), PROBES.index(kind) if kind in PROBES else len(PROBES), name)
    return sorted(names, key=key)


def with_probe_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose extra outputs `localize:<probe>` (float32) are its probe tensors."""
    probes = graph_probes(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = probe_order(probes)
    for name in names:
        out = OUT_PREFIX + name
        m.graph.node.append(helper.make_node("Cast", [probes[name]], [out], name=f"/localize/{name}",
                                             to=TensorProto.FLOAT))
        m.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    return m, names


def reference_probes(model64: LRUModel, graph: str, feeds: dict, prefill_outputs: str = "all") -> dict:
    """The float64 reference's values at the probes, [B, S, d] (prefill) or [B, d] (step); states [B, 2, N]."""
    cfg, got, hooks = model64.cfg, {}, []

    def keep(name: str, first_only: bool = False):
        def hook(_module, _inputs, output):
            if first_only and name in got:
                return
            got[name] = output
        return hook

    for i, block in enumerate(model64.layers):
        hooks.append(block.register_forward_hook(keep(f"layers.{i}/block")))
        hooks.append(block.lru.register_forward_hook(keep(f"layers.{i}/lru")))
        if getattr(block, "prenorm", False) and getattr(block.norm, "kind", "none") != "none":
            hooks.append(block.norm.register_forward_hook(keep(f"layers.{i}/norm_in", first_only=True)))
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    x = t[contract.input_name(cfg)]
    try:
        with torch.no_grad():
            if graph == "step":
                model64.step(x, t["state"], t.get("pool_sum"), t.get("pool_count"))
            else:
                model64(x, t["state"], t.get("pool_sum"), t.get("pool_count"), prefill_outputs=prefill_outputs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, value in got.items():
        if name.endswith("/lru"):
            y, h = value
            out[name] = y.numpy()
            out[name + "_state"] = torch.stack([h.real, h.imag], dim=1).numpy()
        elif name.endswith("/block"):
            out[name] = value[0].numpy()
        else:
            out[name] = value.numpy()
    if graph == "step":  # the reference steps through its prefill with seq 1
        out = {k: v[:, 0] if v.ndim == 3 and not k.endswith("_state") else v for k, v in out.items()}
    return out


def sequence_order(a: np.ndarray, chunk: int, batch: int, seq: int) -> np.ndarray:
    """[T*B*C, d] in the prefill graph's (t, b, c) order -> [B, seq, d]."""
    d = a.shape[-1]
    a = a.reshape(chunk, batch, -1, d).transpose(1, 2, 0, 3).reshape(batch, -1, d)
    return a[:, :seq]


def localize(model: onnx.ModelProto, precision: str, model64: LRUModel, graph: str, feeds: dict, chunk: int,
             bound: float, prefill_outputs: str = "all") -> dict:
    """Compare every probe of `model` (one graph of an export) with the reference on `feeds`.

    Returns {"graph", "precision", "bound_rel_l2", "rows": [{"probe", "rel_l2", "max_abs", "growth"}...],
    "first_over": probe or None, "largest_growth": probe or None}; an empty `rows` with a `why` when the graph
    records no probes (exported before they were recorded).
    """
    probed, names = with_probe_outputs(model)
    result = {"graph": graph, "precision": precision, "bound_rel_l2": bound, "rows": [], "first_over": None,
              "largest_growth": None}
    if not names:
        result["why"] = "the graph records no probes (export it again with this version of lru-deploy)"
        return result
    sess, _ = ort_session(probed, precision)
    outs = sess.run([OUT_PREFIX + n for n in names], feeds)
    ref = reference_probes(model64, graph, feeds, prefill_outputs)
    x = feeds[contract.input_name(model64.cfg)]
    batch, seq = x.shape[0], (x.shape[1] if graph == "prefill" else 1)
    prev: Optional[float] = None
    best = (0.0, None)
    for name, got in zip(names, outs):
        want = ref.get(name)
        if want is None:
            continue
        if graph == "prefill" and not name.endswith("_state"):
            got = sequence_order(got, chunk, batch, seq)
        row = {"probe": name, "rel_l2": None, "max_abs": None, "growth": None}
        if got.shape == want.shape:
            err = rel_l2(got, want)
            row.update(rel_l2=err, max_abs=float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0)
            if prev is not None and prev > 0:
                row["growth"] = err / prev
                if row["growth"] > best[0]:
                    best = (row["growth"], name)
            if result["first_over"] is None and not (math.isfinite(err) and err <= bound):
                result["first_over"] = name
            prev = err
        else:
            row["why"] = f"shape {list(got.shape)}, the reference has {list(want.shape)}"
        result["rows"].append(row)
    result["largest_growth"] = best[1]
    return result


def summary(result: dict) -> str:
    """One line: where the error first exceeds the bound and where it grows most."""
    where = result.get("first_over")
    grow = result.get("largest_growth")
    growth = next((r["growth"] for r in result["rows"] if r["probe"] == grow), None)
    parts = [f"{result['precision']} {result['graph']}: "
             + (f"error first exceeds {result['bound_rel_l2']:.0e} at {where}" if where
                else f"every probe within {result['bound_rel_l2']:.0e}")]
    if grow and growth:
        parts.append(f"largest growth x{growth:.3g} at {grow}")
    if result.get("why"):
        parts.append(result["why"])
    return "; ".join(parts)


def representative_case(graph: str, chunk: int, max_seq: int) -> Case:
    """The case localized when no single call missed: batch 3, non-zero state, an odd length over chunks."""
    if graph == "step":
        return Case("step", "step", 3, 1, True)
    return Case("odd length", "prefill", 3, min(2 * chunk + 7, max_seq), True)


def localize_precision(pc, model64: LRUModel, misses: dict) -> list[dict]:
    """Localize one precision of a check (`pc`: parity.PrecisionCheck): each graph on its first missed single
    call (`misses`: graph -> (case, feeds)), or on a representative case. Engine folders are localized on the
    ONNX graphs of the export they were built from, in ONNX Runtime (TensorRT cannot add outputs to a built
    engine); the result says so."""
    t, out = pc.t, []
    source = None
    if t.kind == "engines":
        src = t.manifest.source_export()
        if src is None:
            return [{"graph": "-", "case": "-", "precision": pc.prec, "bound_rel_l2": pc.tol["rel_l2"], "rows": [],
                     "first_over": None, "largest_growth": None,
                     "summary": "not localized: the export this engine folder was built from is gone",
                     "why": "localize compares the export's ONNX graphs layer by layer in ONNX Runtime"}]
        from ..manifest import ExportManifest
        source = ExportManifest.read(src, precision=pc.prec)
    for gi, graph in enumerate(contract.GRAPHS):
        case, feeds = misses.get(graph) or (None, None)
        if case is None:
            case = representative_case(graph, t.chunk, t.max_seq)
            feeds = case_feeds(model64.cfg, case, np.random.default_rng([pc.seed, 11, gi]))
        path = source.graph_path(pc.prec, graph) if source else t.graph_path(pc.prec, graph)
        res = localize(onnx.load(str(path)), pc.prec, model64, graph, feeds, t.chunk, pc.tol["rel_l2"],
                       t.prefill_outputs)
        res["case"] = case.label
        res["graph_path"] = str(path)
        if source is not None:
            res["why"] = (f"the engine's ONNX graph in ONNX Runtime; to compare the engine itself layer by layer: "
                          f"polygraphy run {path} --trt --onnxrt --trt-outputs mark all --onnx-outputs mark all")
        res["summary"] = summary(res)
        log.info("  [%s] localize %s: %s", pc.prec, case.label, res["summary"])
        out.append(res)
    return out
