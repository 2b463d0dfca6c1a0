"""The float64 reference of an export_module model, with state in and out, named by the contract.

At export it is the eager model (a float64 copy) run inside `lru_deploy.nn.carrying`; in the export folder it is
the same computation as torch.export programs (`reference/prefill.pt2`, and for a pooled model
`reference/positions.pt2`, which returns the model's output after every position). A .pt2 file holds a graph of
ATen and lru_deploy operators and the weights; loading it runs no pickled code, only needs lru_deploy.nn imported
(which registers the lru_deploy operators).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ... import contract
from ...contract import ModuleConfig
from ...errors import ManifestError
from ...files import file_sha256
from ...nn import carrying, tracing

PROGRAMS = ("prefill", "positions")


class Stateful(nn.Module):
    """model(x) with every state explicit: forward(x, *states) -> (outputs, *final states), in contract order.

    positions=True: a Pool returns every prefix's value, so outputs are [batch, seq, d_output] (the model's
    output after each position, what consecutive step calls return)."""

    def __init__(self, model: nn.Module, cfg: ModuleConfig, positions: bool = False):
        super().__init__()
        self.model, self.positions = model, positions
        self.layer_names = [name for name, _ in cfg.layers]
        self.pooled = cfg.pooling == "mean"

    def forward(self, x, *states):
        named = dict(zip(self.layer_names, states))
        if self.pooled:
            named.update(pool_sum=states[-2], pool_count=states[-1])
        with carrying(self.model, named, positions=self.positions) as out:
            y = self.model(x)
        finals = [out[n] for n in self.layer_names]
        if self.pooled and not self.positions:
            finals += [out["pool_sum"], out["pool_count"]]
        elif self.pooled:
            finals += [states[-2], states[-1]]
        return (y, *finals)


class ModuleReference:
    """Contract-named float64 reference calls: `reference_outputs(graph, feeds)` (what the prefill or step graph
    returns) and `positions_outputs(feeds)` (prefill-shaped feeds, outputs after every position)."""

    def __init__(self, cfg: ModuleConfig, prefill: Callable, positions: Optional[Callable] = None):
        self.cfg = cfg
        self._prefill = prefill
        self._positions = positions

    @classmethod
    def eager(cls, model64: nn.Module, cfg: ModuleConfig) -> "ModuleReference":
        pos = Stateful(model64, cfg, positions=True) if cfg.pooling != "none" else None
        return cls(cfg, Stateful(model64, cfg), pos)

    def _call(self, fn: Callable, x: np.ndarray, feeds: dict) -> tuple:
        spec = self.cfg.graph_spec("prefill")
        xt = torch.from_numpy(np.ascontiguousarray(x))
        xt = xt.to(torch.int64) if self.cfg.tokens else xt.to(torch.float64)
        states = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(torch.float64)
                  for t in spec.state_inputs]
        with torch.no_grad():
            return tuple(fn(xt, *states))

    def _named(self, res: tuple) -> dict:
        spec = self.cfg.graph_spec("prefill")
        out = {contract.OUTPUTS: res[0].detach().to(torch.float64).numpy()}
        for t, v in zip(spec.state_inputs, res[1:]):
            out[contract.out_name(t.name)] = v.detach().to(torch.float64).numpy()
        return out

    def reference_outputs(self, graph: str, feeds: dict) -> dict:
        x = np.asarray(feeds[contract.input_name(self.cfg)])
        if graph == "step":
            x = x[:, None]
        out = self._named(self._call(self._prefill, x, feeds))
        if graph == "step" and self.cfg.pooling == "none":
            out[contract.OUTPUTS] = out[contract.OUTPUTS][:, 0]
        return out

    def positions_outputs(self, feeds: dict) -> dict:
        x = np.asarray(feeds[contract.input_name(self.cfg)])
        out = self._named(self._call(self._prefill, x, feeds))
        if self._positions is not None:
            out[contract.OUTPUTS] = self._named(self._call(self._positions, x, feeds))[contract.OUTPUTS]
        return out

    # ---------------------------------------------------------------- the files

    def save(self, folder: Path, example: tuple) -> dict:
        """Write reference/<program>.pt2 (torch.export, dynamic batch and seq) under `folder`; returns the
        manifest's `reference` entry. `example`: (x, *states) float64, batch and seq >= 2."""
        (folder / "reference").mkdir()
        entries = {}
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        dyn = ({0: batch, 1: seq}, tuple({0: batch} for _ in example[1:]))  # forward(x, *states)
        for key, fn in (("prefill", self._prefill), ("positions", self._positions)):
            if fn is None:
                continue
            with tracing():
                prog = torch.export.export(fn, example, dynamic_shapes=dyn, strict=False)
            rel = f"reference/{key}.pt2"
            torch.export.save(prog, str(folder / rel))
            entries[key] = {"path": rel, "sha256": file_sha256(folder / rel)}
        return entries

    @classmethod
    def load(cls, manifest) -> "ModuleReference":
        """The reference programs of a module export folder (the manifest read and verified by the caller)."""
        cfg = manifest.cfg
        progs = {}
        for key in PROGRAMS:
            ent = manifest.reference.get(key)
            if ent is None:
                continue
            path = manifest.folder / ent["path"]
            try:
                progs[key] = torch.export.load(str(path)).module()
            except (OSError, RuntimeError, ValueError, KeyError) as e:
                raise ManifestError(f"cannot load the reference program {path}: {e}", manifest._fix_hint()) from None
        if "prefill" not in progs or (cfg.pooling != "none" and "positions" not in progs):
            raise ManifestError(f"{manifest.folder} lacks its reference program(s) (reference/*.pt2)",
                                manifest._fix_hint())
        return cls(cfg, progs["prefill"], progs.get("positions"))
