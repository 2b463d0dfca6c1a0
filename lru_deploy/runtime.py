"""One session API over the backends: prefill, step and generate.

    sess = open_session("lru_deploy/assets/default", backend="reference")
    logits, state = sess.prefill(ids)            # ids int64 [batch, seq]
    logits, state = sess.step(ids[:, -1], state)
    text_ids = sess.generate(prompt_ids, max_new_tokens=64, temperature=0.8, top_k=40, seed=0)

A state is a dict of float32 arrays named as the I/O contract names them: `state` [batch, n_layers, 2,
d_hidden], plus `pool_sum` and `pool_count` for mean pooling. `None` means the start of a sequence.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from . import contract
from .errors import InputError
from .model import LRUConfig, LRUModel, gold

log = logging.getLogger(__name__)
State = dict  # name -> np.ndarray, contract names


class Session:
    """Backend-independent parts: contract checks, state defaults, long-prompt splitting, generation."""

    backend = "base"
    max_seq: Optional[int] = None  # longest prefill one call takes; longer inputs are split

    def __init__(self, cfg: LRUConfig):
        self.cfg = cfg
        self.prefill_spec = contract.graph_spec(cfg, "prefill")
        self.step_spec = contract.graph_spec(cfg, "step")

    # --- to implement per backend: one call of a graph on validated feeds -> dict of outputs
    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def zero_state(self, batch: int) -> State:
        st = {"state": np.zeros((batch, self.cfg.n_layers, 2, self.cfg.d_hidden), np.float32)}
        if self.cfg.pooling == "mean":
            st["pool_sum"] = np.zeros((batch, self.cfg.d_model), np.float32)
            st["pool_count"] = np.zeros((batch, 1), np.float32)
        return st

    def _feeds(self, spec: contract.GraphSpec, inputs: np.ndarray, state: Optional[State]) -> dict:
        inputs = np.asarray(inputs)
        if self.cfg.tokens and inputs.dtype.kind in "iu":
            inputs = inputs.astype(np.int64)
        batch = inputs.shape[0] if inputs.ndim else 1
        st = self.zero_state(batch) if state is None else {k: np.asarray(v) for k, v in state.items()}
        feeds = {contract.input_name(self.cfg): inputs, **st}
        contract.validate_arrays(spec, feeds, self.cfg)
        return feeds

    def prefill(self, inputs, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        """Run a sequence. Longer than max_seq: split into several calls with the state carried (exact)."""
        feeds = self._feeds(self.prefill_spec, inputs, state)
        name = contract.input_name(self.cfg)
        x = feeds.pop(name)
        seq = x.shape[1]
        chunk = self.max_seq or seq
        outs, st = [], feeds
        for start in range(0, seq, chunk):
            res = self._run("prefill", {name: np.ascontiguousarray(x[:, start:start + chunk]), **st})
            outs.append(res["outputs"])
            st = _state_from_outputs(res)
        if len(outs) == 1 or outs[0].ndim == 2:
            out = outs[-1]  # pooled outputs: the last call's value covers the whole sequence
        else:
            out = np.concatenate(outs, axis=1)
        return out, st

    def step(self, inputs, state: Optional[State] = None) -> tuple[np.ndarray, State]:
        feeds = self._feeds(self.step_spec, inputs, state)
        res = self._run("step", feeds)
        return res["outputs"], _state_from_outputs(res)

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


def _state_from_outputs(res: dict[str, np.ndarray]) -> State:
    st = {"state": res["state_out"]}
    if "pool_sum_out" in res:
        st["pool_sum"] = res["pool_sum_out"]
        st["pool_count"] = res["pool_count_out"]
    return st


class ReferenceSession(Session):
    """The PyTorch reference, computed in float64/complex128 (gold) by default; outputs are float32."""

    backend = "reference"

    def __init__(self, model: LRUModel, dtype: torch.dtype = torch.float64):
        super().__init__(model.cfg)
        self.model = gold(model) if dtype == torch.float64 else copy.deepcopy(model).to(dtype).eval()

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = contract.input_name(self.cfg)
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            fn = self.model.forward if graph == "prefill" else self.model.step
            res = fn(t[name], t["state"], t.get("pool_sum"), t.get("pool_count"))
        out = {"outputs": res.outputs, "state_out": res.state}
        if res.pool_sum is not None:
            out.update(pool_sum_out=res.pool_sum, pool_count_out=res.pool_count)
        return {k: v.numpy().astype(np.float32) for k, v in out.items()}


BACKENDS = {"reference": "model", "onnxruntime": "export", "tensorrt": "engines"}  # backend -> folder it runs


def target_kind(target: str | Path) -> Optional[str]:
    """'model' (config.json), 'export' (manifest.json with graphs), 'engines' (manifest.json with engines), or None."""
    from .checkpoints import read_json
    target = Path(target)
    if (target / "config.json").is_file():
        return "model"
    if (target / "manifest.json").is_file():
        m = read_json(target / "manifest.json")
        return "engines" if "engines" in m else "export" if "graphs" in m else None
    return None


def _upstream(target: Path, kind: str) -> Optional[Path]:
    """The folder an export (its model) or an engine folder (its export) was made from, if it still exists."""
    from .checkpoints import read_json
    m = read_json(target / "manifest.json")
    rec = m.get("source", {}).get("export_dir") if kind == "engines" else m.get("model", {}).get("path")
    if not rec:
        return None
    p = Path(rec)
    for cand in ([p] if p.is_absolute() else [p, target / p]):
        folder = cand if cand.is_dir() else cand.parent  # a model path may name model.safetensors
        if target_kind(folder) == ("export" if kind == "engines" else "model"):
            return folder
    return None


def open_session(target: str | Path, backend: Optional[str] = None, **kwargs) -> Session:
    """A session on a model folder (reference), an export folder (onnxruntime) or an engine folder (tensorrt).

    The backend defaults to what the folder holds. A backend that needs an earlier stage follows the manifest
    back (engine folder -> its export -> its model). kwargs go to the backend: onnxruntime takes precision
    ('fp32') and providers; tensorrt takes device and cuda_graphs; reference takes dtype.
    """
    from .checkpoints import load_model
    target = Path(target)
    kind = target_kind(target)
    if kind is None:
        raise InputError(f"{target} is neither a model, an export nor an engine folder",
                         "a model folder holds config.json; export and engine folders hold manifest.json")
    backend = backend or {v: k for k, v in BACKENDS.items()}[kind]
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}", f"one of {', '.join(BACKENDS)}")
    folder = target
    order = ["engines", "export", "model"]
    while folder is not None and target_kind(folder) != BACKENDS[backend]:
        k = target_kind(folder)
        folder = _upstream(folder, k) if order.index(k) < order.index(BACKENDS[backend]) else None
    if folder is None:
        raise InputError(f"backend {backend} needs {'an' if backend != 'reference' else 'a'} "
                         f"{BACKENDS[backend]} folder; {target} is a {kind} folder",
                         {"reference": "pass the model folder", "onnxruntime": "pass an export folder "
                          "(lru-deploy export MODEL_DIR)", "tensorrt": "pass an engine folder (lru-deploy build "
                          "EXPORT_DIR)"}[backend])
    if backend == "reference":
        return ReferenceSession(load_model(folder), **kwargs)
    from .runtime_backends import OnnxruntimeSession, TensorrtSession  # lazily: onnxruntime, TensorRT
    if backend == "onnxruntime":
        return OnnxruntimeSession(folder, **kwargs)
    return TensorrtSession(folder, **kwargs)


# Byte-level tokenizer of the bundled model: any UTF-8 text encodes, ids are bytes 0..255.
def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids) -> str:
    return bytes(int(i) for i in np.asarray(ids).reshape(-1)).decode("utf-8", errors="replace")
