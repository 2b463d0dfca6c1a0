"""The backend-independent session: contract checks, state defaults, long-prompt splitting, generation."""
from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np

from .. import contract
from ..errors import InputError
from ..model import LRUConfig

log = logging.getLogger(__name__)


State = dict  # name -> np.ndarray, contract names


class Session:
    """Backend-independent parts: contract checks, state defaults, long-prompt splitting, generation."""

    backend = "base"
    max_seq: Optional[int] = None  # longest prefill one call takes; longer inputs are split

    def __init__(self, cfg: LRUConfig, prefill_spec: Optional[contract.GraphSpec] = None,
                 step_spec: Optional[contract.GraphSpec] = None):
        """The specs come from the folder's manifest where there is one; by default from the config."""
        self.cfg = cfg
        self.prefill_spec = prefill_spec or contract.graph_spec(cfg, "prefill")
        self.step_spec = step_spec or contract.graph_spec(cfg, "step")
        self.input_name = self.step_spec.model_inputs[0].name

    # --- to implement per backend: one call of a graph on validated feeds -> dict of outputs
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def zero_state(self, batch: int) -> State:
        """The start of a sequence: every state input of the contract, zero-filled."""
        return {t.name: np.zeros([batch if d == "batch" else d for d in t.shape], t.dtype)
                for t in self.step_spec.state_inputs}

    def _feeds(self, spec: contract.GraphSpec, inputs: np.ndarray, state: Optional[State]) -> dict:
        inputs = np.asarray(inputs)
        if self.cfg.tokens and inputs.dtype.kind in "iu":
            inputs = inputs.astype(np.int64)
        batch = inputs.shape[0] if inputs.ndim else 1
        st = self.zero_state(batch) if state is None else {k: np.asarray(v) for k, v in state.items()}
        feeds = {self.input_name: inputs, **st}
        contract.validate_arrays(spec, feeds, self.cfg)
        return feeds

    def prefill(self, inputs, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        """Run a sequence. Longer than max_seq: split into several calls with the state carried (exact)."""
        feeds = self._feeds(self.prefill_spec, inputs, state)
        name = self.input_name
        x = feeds.pop(name)
        seq = x.shape[1]
        chunk = self.max_seq or seq
        outs, st = [], feeds
        for start in range(0, seq, chunk):
            res = self._run("prefill", {name: np.ascontiguousarray(x[:, start:start + chunk]), **st})
            outs.append(res[contract.OUTPUTS])
            st = contract.carry(self.prefill_spec, res)
        if len(outs) == 1 or outs[0].ndim == 2:
            out = outs[-1]  # pooled outputs: the last call's value covers the whole sequence
        else:
            out = np.concatenate(outs, axis=1)
        return out, st

    def step(self, inputs, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        feeds = self._feeds(self.step_spec, inputs, state)
        res = self._run("step", feeds)
        return res[contract.OUTPUTS], contract.carry(self.step_spec, res)

    def generate(self, prompt_ids, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0) -> Iterator[np.ndarray]:
        """Sample continuations of prompt_ids (int64 [batch, seq] or [seq]); yields int64 [batch] per new token."""
        if not self.cfg.tokens:
            raise InputError("generate needs a token model (vocab_size set)", "this model takes continuous inputs")
        if self.cfg.pooling != "none":
            raise InputError(f"generate needs pooling none, this model pools ({self.cfg.pooling})")
        ids = np.asarray(prompt_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise InputError(f"prompt ids must be [batch, seq] with seq >= 1, got shape {list(ids.shape)}")
        rng = np.random.default_rng(seed)
        logits, st = self.prefill(ids)
        last = logits[:, -1] if logits.ndim == 3 else logits
        for i in range(max_new_tokens):
            nxt = sample(last, temperature, top_k, rng)
            yield nxt
            if i + 1 < max_new_tokens:
                last, st = self.step(nxt, st)


def sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """One token per row. temperature 0 is greedy; top_k 0 keeps every token. Computed in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    u = rng.random(logits.shape[0])  # drawn every time, so backends stay in step whatever the settings
    if temperature <= 0:
        return logits.argmax(axis=-1).astype(np.int64)
    z = logits / temperature
    if 0 < top_k < z.shape[-1]:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    cdf /= cdf[:, -1:]
    return np.minimum((cdf <= u[:, None]).sum(axis=-1), z.shape[-1] - 1).astype(np.int64)
