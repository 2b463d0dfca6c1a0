"""The reference backend: the PyTorch model, in float64/complex128 by default."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..cases import reference_outputs
from ..model import LRUModel, gold
from .base import Session


class ReferenceSession(Session):
    """The PyTorch reference, computed in float64/complex128 (gold) by default; outputs are float32."""

    backend = "reference"

    def __init__(self, model: LRUModel, dtype: torch.dtype = torch.float64):
        super().__init__(model.cfg)
        self.model = gold(model) if dtype == torch.float64 else copy.deepcopy(model).to(dtype).eval()

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in reference_outputs(self.model, graph, feeds).items()}


class ModuleReferenceSession(Session):
    """The float64 reference of an export_module folder: its torch.export programs (reference/*.pt2)."""

    backend = "reference"

    def __init__(self, export_dir):
        from ..export.module.reference import ModuleReference
        from ..manifest import ExportManifest
        m = ExportManifest.read(export_dir)
        super().__init__(m.cfg, m.spec("prefill"), m.spec("step"))
        self.reference = ModuleReference.load(m)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in self.reference.reference_outputs(graph, feeds).items()}
