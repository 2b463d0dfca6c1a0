"""The shape matrix and the reference run that export validation and `check` share.

A `Case` is one call shape (graph, batch, seq, zero or non-zero initial state, and for the continuity and
drift cases the calls a sequence is split into). `shape_matrix` lists the single calls every graph pair must
pass, `continuity_cases` the split sequences; `random_inputs` makes contract-named feeds for a case;
`reference_outputs` runs the float64 reference on such feeds and returns contract-named float64 outputs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import contract
from .model import LRUModel


@dataclass(frozen=True)
class Case:
    kind: str  # seq 1 | chunk edge | odd length | long | step | continuity | drift
    graph: str  # the graph whose contract the inputs follow (continuity and drift: prefill-shaped)
    batch: int
    seq: int  # positions the case covers (a single step call: 1)
    nonzero_state: bool
    segments: tuple = ()  # continuity and drift: the calls the sequence is split into

    @property
    def label(self) -> str:
        if self.segments:
            how = " + ".join(f"{g}({n})" if g == "prefill" else f"{n} step{'s' * (n > 1)}"
                             for g, n in self.segments)
            return f"{'drift' if self.kind == 'drift' else 'continuity'} b{self.batch}: {how}" \
                   f"{' h0' if self.nonzero_state else ''}"
        seq = f" s{self.seq}" if self.graph == "prefill" else ""
        return f"{self.graph} b{self.batch}{seq}{' h0' if self.nonzero_state else ''}"


def shape_matrix(chunk: int, max_seq: int, long_seq: Optional[int]) -> list[Case]:
    """The single calls every graph pair must pass: seq 1, T-1, T, T+1, non powers of two, a long one (none
    when long_seq is None); batch 1 and 3; zero and non-zero initial state; step calls in the same mix."""
    T = chunk
    rows = [("seq 1", 1, 1, False), ("seq 1", 3, 1, True), ("chunk edge", 1, T - 1, True),
            ("chunk edge", 3, T, False), ("chunk edge", 3, T + 1, True), ("odd length", 1, 3 * T + 5, True),
            ("odd length", 3, 2 * T + 7, False)]
    if long_seq:
        rows.append(("long", 1, min(long_seq, max_seq), True))
    cases = [Case(k, "prefill", b, s, h) for k, b, s, h in rows if 1 <= s <= max_seq]
    cases += [Case("step", "step", b, 1, h) for b, h in ((1, False), (3, True), (1, True), (3, False))]
    return list(dict.fromkeys(cases))


def continuity_cases(chunk: int, max_seq: int) -> list[Case]:
    """prefill(a)+prefill(b), prefill(a)+steps, steps+prefill(b): each equals the reference prefill(a+b)."""
    a, b = min(chunk + 3, max_seq), min(2 * chunk + 4, max_seq)
    return [Case("continuity", "prefill", 3, a + b, True, (("prefill", a), ("prefill", b))),
            Case("continuity", "prefill", 3, min(chunk + 1, max_seq) + 9, True,
                 (("prefill", min(chunk + 1, max_seq)), ("step", 9))),
            Case("continuity", "prefill", 2, 5 + min(chunk + 2, max_seq), False,
                 (("step", 5), ("prefill", min(chunk + 2, max_seq))))]


def case_feeds(cfg, case: Case, rng: np.random.Generator) -> OrderedDict:
    return OrderedDict(random_inputs(cfg, case.batch, case.seq if case.graph == "prefill" else None,
                                     case.nonzero_state, rng))


def random_inputs(cfg, batch: int, seq: Optional[int], nonzero: bool, rng: np.random.Generator) -> dict:
    """Feeds for one case, named by the contract. seq None: step-shaped inputs."""
    shape = (batch,) if seq is None else (batch, seq)
    if isinstance(cfg, contract.ModuleConfig):
        return _module_inputs(cfg, shape, nonzero, rng)
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
    """The float64 reference on contract-named feeds; contract-named float64 outputs. `model64` may also be
    an export_module reference (it runs the feeds itself)."""
    if hasattr(model64, "reference_outputs"):
        return model64.reference_outputs(graph, feeds)
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


def _module_inputs(cfg, shape: tuple, nonzero: bool, rng: np.random.Generator) -> dict:
    """random_inputs for a ModuleConfig: the model's input, then every state input of its contract."""
    if cfg.tokens:
        x = rng.integers(0, cfg.vocab_size, shape, dtype=np.int64)
    else:
        x = rng.normal(size=shape + (cfg.d_input,)).astype(np.float32)
    feeds = {contract.input_name(cfg): x}
    for t in cfg.graph_spec("step").state_inputs:
        dims = [shape[0] if d == "batch" else d for d in t.shape]
        if t.name == "pool_count":
            feeds[t.name] = np.full(dims, 3.0 if nonzero else 0.0, np.float32)
        elif t.name == "pool_sum":
            feeds[t.name] = (rng.normal(size=dims) * (3 if nonzero else 0)).astype(np.float32)
        else:
            feeds[t.name] = (rng.normal(scale=0.5, size=dims) if nonzero else np.zeros(dims)).astype(np.float32)
    return feeds


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref)
    return float(diff / max(np.linalg.norm(ref), 1e-30))
