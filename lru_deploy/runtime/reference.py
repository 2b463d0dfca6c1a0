"""The reference backend: the PyTorch model, in float64/complex128 by default."""
from __future__ import annotations

import copy

import numpy as np
import torch

from .. import contract
from ..model import LRUModel, gold
from .base import Session


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
