"""Polygraphy runners and glue for `lru-deploy check` (parity.py).

`ReferenceRunner` is the float64/complex128 gold model as a Polygraphy runner; `SegmentsRunner` runs one
sequence as several calls of other runners with the state carried (the continuity identities and the drift
run); `Logged` reports progress. `run_pair` is Comparator.run + Comparator.compare_accuracy with explicit
tolerances, the target compared against the reference.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER

from .. import contract
from ..errors import ParityError
from ..cases import reference_outputs
from ..model import LRUModel

log = logging.getLogger(__name__)
REFERENCE = "lru-deploy-reference"  # the runner name saved in the Polygraphy output files


# ---------------------------------------------------------------- the reference and the composed runners

def _metadata(spec: contract.GraphSpec) -> TensorMetadata:
    md = TensorMetadata()
    for t in spec.inputs:
        md.add(t.name, np.dtype(t.dtype), list(t.shape))  # dynamic axes keep their contract names
    return md


def positions_reference(model64: LRUModel, feeds: dict) -> dict:
    """The reference prefill with `outputs` at every position [batch, seq, d_output], whatever the pooling:
    what step t returns (pooling last: the decoder at t; mean: the decoder of the running mean up to t)."""
    if hasattr(model64, "positions_outputs"):  # an export_module reference
        return model64.positions_outputs(feeds)
    cfg = model64.cfg
    seen = {}
    hook = model64.layers[-1].register_forward_hook(lambda mod, args, out: seen.__setitem__("u", out[0]))
    try:
        ref = reference_outputs(model64, "prefill", feeds, "last")
    finally:
        hook.remove()
    u = seen["u"]  # [batch, seq, d_model]: the residual stream after the last block, before pooling
    with torch.no_grad():
        if cfg.pooling == "mean":
            count = torch.arange(1, u.shape[1] + 1, dtype=u.dtype)[None, :, None]
            u = ((torch.from_numpy(feeds["pool_sum"]).double()[:, None] + u.cumsum(1))
                 / (torch.from_numpy(feeds["pool_count"]).double()[:, None] + count))
        out = model64.decoder(u)
        if cfg.log_softmax:
            out = F.log_softmax(out, dim=-1)
    ref["outputs"] = out.numpy()
    return ref


class ReferenceRunner(BaseRunner):
    """The float64/complex128 gold model as a Polygraphy runner.

    mode 'prefill' or 'step' follows that graph's contract; 'positions' takes prefill inputs and returns
    `outputs` at every position (the drift run's reference). Returns float32 arrays for Polygraphy; keeps the
    float64 values of every call, in order, in `gold`. `cache` (shared between runners) maps a digest of the
    feeds to results, so every precision reuses the reference work of the first.
    """

    def __init__(self, model64: LRUModel, mode: str, prefill_outputs: str = "all", cache: Optional[dict] = None,
                 name: str = REFERENCE):
        super().__init__(name=name)
        self.model64, self.mode, self.prefill_outputs = model64, mode, prefill_outputs
        self.cache = {} if cache is None else cache
        self.gold: list[dict] = []

    def get_input_metadata_impl(self):
        return _metadata(contract.graph_spec(self.model64.cfg, "step" if self.mode == "step" else "prefill"))

    def infer_impl(self, feed_dict):
        t0 = time.perf_counter()
        feeds = {k: np.asarray(v) for k, v in feed_dict.items()}
        h = hashlib.sha256(f"{self.mode} {self.prefill_outputs}".encode())
        for k in sorted(feeds):
            h.update(k.encode() + str(feeds[k].shape).encode() + np.ascontiguousarray(feeds[k]).tobytes())
        key = h.hexdigest()
        if key not in self.cache:
            if self.mode == "positions":
                self.cache[key] = positions_reference(self.model64, feeds)
            else:
                self.cache[key] = reference_outputs(self.model64, self.mode, feeds, self.prefill_outputs)
        out = self.cache[key]
        self.gold.append(out)
        self.inference_time = time.perf_counter() - t0
        return OrderedDict((k, v.astype(np.float32)) for k, v in out.items())


class SegmentsRunner(BaseRunner):
    """One prefill-shaped input run as consecutive calls of other runners with the state carried.

    segments: [("prefill", n) | ("step", n), ...] covering the sequence; ("step", n) is n single steps.
    per_position: `outputs` concatenated over every position (a prefill graph with per-position outputs,
    or the drift run); otherwise the last call's `outputs` (what a pooled or last-output prefill returns).
    """

    def __init__(self, cfg, inner: dict, segments: list, per_position: bool, name: str):
        super().__init__(name=name)
        self.cfg, self.inner, self.segments, self.per_position = cfg, inner, list(segments), per_position

    def activate_impl(self):
        for r in self.inner.values():
            r.activate()

    def deactivate_impl(self):
        for r in self.inner.values():
            r.deactivate()

    def get_input_metadata_impl(self):
        return _metadata(contract.graph_spec(self.cfg, "prefill"))

    def infer_impl(self, feed_dict):
        t0 = time.perf_counter()
        xname = contract.input_name(self.cfg)
        x = np.asarray(feed_dict[xname])
        carry = {k: np.asarray(v) for k, v in feed_dict.items() if k != xname}
        pieces, pos, out = [], 0, {}
        for graph, n in self.segments:
            if graph == "prefill":
                out = self._call("prefill", x[:, pos:pos + n], carry)
                pieces.append(out["outputs"])
            else:
                steps = []
                for t in range(pos, pos + n):
                    out = self._call("step", x[:, t], carry)
                    carry = {k: out[contract.out_name(k)] for k in carry}
                    steps.append(out["outputs"])
                pieces.append(np.stack(steps, axis=1))
            carry = {k: out[contract.out_name(k)] for k in carry}
            pos += n
        if self.per_position and any(p.ndim != 3 for p in pieces):
            raise ParityError("internal: a per-position comparison got a prefill without per-position outputs")
        result = OrderedDict(outputs=np.concatenate(pieces, axis=1) if self.per_position else out["outputs"])
        result.update((contract.out_name(k), v) for k, v in carry.items())
        self.inference_time = time.perf_counter() - t0
        return result

    def _call(self, graph: str, x: np.ndarray, carry: dict) -> dict:
        feeds = OrderedDict([(contract.input_name(self.cfg), np.ascontiguousarray(x))] + list(carry.items()))
        return {k: np.array(v, copy=True) for k, v in self.inner[graph].infer(feeds, check_inputs=False).items()}


def compare_func(atol: float, rtol: float):
    """Polygraphy's simple (element-wise) compare function with explicit tolerances."""
    try:
        from polygraphy.comparator.compare import SimpleCompareFunc  # Polygraphy >= 0.50
    except ImportError:
        from polygraphy.comparator import CompareFunc
        return CompareFunc.simple(atol=atol, rtol=rtol)
    return SimpleCompareFunc(atol=atol, rtol=rtol)


@contextlib.contextmanager
def polygraphy_quiet():
    """Polygraphy's own log silenced (its INFO lines come per output and per iteration) unless -v."""
    old = G_LOGGER.module_severity
    verbose = logging.getLogger("lru_deploy").isEnabledFor(logging.DEBUG)
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.module_severity = old


class Logged(BaseRunner):
    """A runner under its own name that logs each call: INFO for the heavy ones (progress), DEBUG otherwise."""

    def __init__(self, inner: BaseRunner, labels: list, heavy: list, what: str):
        super().__init__(name=inner.name)
        self.inner, self.labels, self.heavy, self.what, self.calls = inner, labels, heavy, what, [0]

    def activate_impl(self):
        self.inner.activate()

    def deactivate_impl(self):
        self.inner.deactivate()

    def get_input_metadata_impl(self):
        return self.inner.get_input_metadata(use_numpy_dtypes=False)

    def infer_impl(self, feed_dict):
        i = self.calls[0]
        self.calls[0] += 1
        log.log(logging.INFO if self.heavy[i] else logging.DEBUG, "    %s: %s (%d/%d)", self.what, self.labels[i],
                i + 1, len(self.labels))
        out = self.inner.infer(feed_dict, check_inputs=False)
        self.inference_time = self.inner.last_inference_time()
        return out


def run_pair(ref: BaseRunner, target: BaseRunner, cases: list, feeds: list, tol: Optional[dict], prec: str):
    """Comparator.run over the feeds, then compare_accuracy (target against the reference) when tol is given.
    Returns (target outputs per case, {output: passed} per case or None, seconds per case)."""
    labels = [c.label for c in cases]
    heavy = [c.batch * max(c.seq, 1) >= 4096 for c in cases]
    runners = [Logged(ref, labels, heavy, f"[{prec}] reference"), Logged(target, labels, heavy, f"[{prec}] "
                                                                       f"{target.name}")]
    with polygraphy_quiet():
        results = Comparator.run(runners, data_loader=feeds)
        got = [OrderedDict((k, np.asarray(v)) for k, v in it.items()) for it in results[target.name]]
        seconds = [a.runtime + b.runtime for a, b in zip(results[ref.name], results[target.name])]
        if tol is None:
            return got, None, seconds
        acc = Comparator.compare_accuracy(results, comparisons=[(1, 0)],
                                          compare_func=compare_func(tol["atol"], tol["rtol"]))
    if not hasattr(acc, "keys"):  # recent Polygraphy returns one AccuracyResult per compare function
        acc = acc[0]
    matches = acc[(target.name, ref.name)]
    return got, [{k: bool(v) for k, v in m.items()} for m in matches], seconds
