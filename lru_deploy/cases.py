"""The shape matrix and the reference run that export validation and `check` share.

A `Case` is one call shape (graph, batch, seq, zero or non-zero initial state). `shape_matrix` lists the
cases every graph pair must pass; `random_inputs` makes contract-named feeds for a case; `reference_outputs`
runs the float64 reference on such feeds and returns contract-named float64 outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import contract
from .model import LRUModel


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
