"""One session API over the backends: prefill, step and generate.

    sess = open_session("lru_deploy/assets/default", backend="reference")
    logits, state = sess.prefill(ids)            # ids int64 [batch, seq]
    logits, state = sess.step(ids[:, -1], state)
    for tok in sess.generate(prompt_ids, max_new_tokens=64, temperature=0.8, top_k=40, seed=0):
        ...                                      # tok: int64 [batch], one array per new token

A state is a dict of float32 arrays named as the folder's I/O contract names its state inputs (for the
native layout `state` [batch, n_layers, 2, d_hidden], plus `pool_sum` and `pool_count` for mean pooling).
`None` means the start of a sequence.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .base import Session, State, sample  # noqa: F401  (the runtime's public API)
from .reference import ReferenceSession
from ..errors import InputError
from ..manifest import EngineManifest, ExportManifest, folder_kind

log = logging.getLogger(__name__)


BACKENDS = {"reference": "model", "onnxruntime": "export", "tensorrt": "engines"}  # backend -> folder it runs


def _upstream(target: Path, kind: str) -> Optional[Path]:
    """The folder an export (its model) or an engine folder (its export) was made from, if it still exists."""
    if kind == "engines":
        rec = EngineManifest.read(target, verify=False).source.get("export_dir")
    else:
        rec = ExportManifest.read(target, verify=False).model.get("path")
    if not rec:
        return None
    p = Path(rec)
    for cand in ([p] if p.is_absolute() else [p, target / p]):
        folder = cand if cand.is_dir() else cand.parent  # a model path may name model.safetensors
        if folder_kind(folder) == ("export" if kind == "engines" else "model"):
            return folder
    return None


def open_session(target: str | Path, backend: Optional[str] = None, **kwargs) -> Session:
    """A session on a model folder (reference), an export folder (onnxruntime) or an engine folder (tensorrt).

    The backend defaults to what the folder holds. A backend that needs an earlier stage follows the manifest
    back (engine folder -> its export -> its model). kwargs go to the backend: onnxruntime takes precision
    ('fp32') and providers; tensorrt takes device and cuda_graphs; reference takes dtype.
    """
    from ..checkpoints import load_model
    target = Path(target)
    kind = folder_kind(target)
    if kind is None:
        raise InputError(f"{target} is neither a model, an export nor an engine folder",
                         "a model folder holds config.json; export and engine folders hold manifest.json")
    backend = backend or {v: k for k, v in BACKENDS.items()}[kind]
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}", f"one of {', '.join(BACKENDS)}")
    if backend == "reference" and kind == "export" and ExportManifest.read(target).is_module:
        from .reference import ModuleReferenceSession  # an export_module folder carries its own reference
        return ModuleReferenceSession(target)
    folder = target
    order = ["engines", "export", "model"]
    while folder is not None and folder_kind(folder) != BACKENDS[backend]:
        k = folder_kind(folder)
        folder = _upstream(folder, k) if order.index(k) < order.index(BACKENDS[backend]) else None
    if folder is None:
        raise InputError(f"backend {backend} needs {'an' if backend != 'reference' else 'a'} "
                         f"{BACKENDS[backend]} folder; {target} is a {kind} folder",
                         {"reference": "pass the model folder", "onnxruntime": "pass an export folder "
                          "(lru-deploy export MODEL_DIR)", "tensorrt": "pass an engine folder (lru-deploy build "
                          "EXPORT_DIR)"}[backend])
    if backend == "reference":
        return ReferenceSession(load_model(folder), **kwargs)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxruntimeSession  # lazily: onnxruntime
        return OnnxruntimeSession(folder, **kwargs)
    from .tensorrt import TensorrtSession  # lazily: cuda-python and TensorRT inside
    return TensorrtSession(folder, **kwargs)


# Byte-level tokenizer of the bundled model: any UTF-8 text encodes, ids are bytes 0..255.
def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids) -> str:
    return bytes(int(i) for i in np.asarray(ids).reshape(-1)).decode("utf-8", errors="replace")
