"""The manifests of export and engine folders: the one place that reads or writes `manifest.json`.

    m = ExportManifest.read("export/default")          # checked: format, fields, files, hashes
    m.spec("prefill").input_names, m.graph_path("fp16", "step"), m.cfg
    e = EngineManifest.read("engines/default/h100-fp16")

Every reader gets the same checks, and every problem comes back at once as one ManifestError:
- the file is UTF-8 JSON holding an object, with this module's format string (which carries the version);
- every required field is present with the right type;
- every file the manifest names lies inside the folder (a path like `../../etc/passwd` is refused), exists,
  and matches its recorded sha256;
- the contract is the one the config implies (a native model's contract follows from its config).
`graph_problems()` goes further and compares the contract and the recorded limits with what the ONNX graphs
themselves declare (their inputs, outputs and metadata), for the consumers that load the graphs anyway.
"""
from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from . import __version__, contract
from .errors import ManifestError
from .files import file_sha256, inside, read_json, write_json

MANIFEST = "manifest.json"
EXPORT_FORMAT = "lru-deploy-export-v1"
FORMAT = "lru-deploy-engines-v1"  # engine folders


def tool_versions() -> dict:
    """The versions a manifest or report records (the tools that made it)."""
    import numpy as np
    import onnx
    import onnxruntime
    import polygraphy
    import torch
    return {"lru_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def folder_kind(folder: str | Path) -> Optional[str]:
    """'model' (config.json), 'export' or 'engines' (manifest.json of that format), or None."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return "model"
    if not (folder / MANIFEST).is_file():
        return None
    fmt = read_json(folder / MANIFEST, "manifest", ManifestError).get("format")
    return {EXPORT_FORMAT: "export", FORMAT: "engines"}.get(fmt)


class _Manifest:
    """Shared reading and writing; subclasses are dataclasses naming their fields."""

    FORMAT: ClassVar[str]
    KIND: ClassVar[str]
    HINT: ClassVar[str]

    @classmethod
    def read(cls, folder: str | Path, *, verify: bool = True):
        """Read and check the manifest of `folder` (see the module docstring); verify=False skips the hashes."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise ManifestError(f"{folder} is not {cls.KIND} (no {MANIFEST})", cls.HINT)
        raw = read_json(path, "manifest", ManifestError)
        problems = []
        if raw.get("format") != cls.FORMAT:
            problems.append(f"format is {raw.get('format')!r}, want {cls.FORMAT!r}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("folder", "extra")}
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in raw:
                if required:
                    problems.append(f"no {name!r} entry")
                continue
            want = _TYPES.get(str(f.type))
            if want and not isinstance(raw[name], want) or isinstance(raw[name], bool) and want == (int,):
                problems.append(f"{name!r} is a {type(raw[name]).__name__}, want {str(f.type)}")
                continue
            kwargs[name] = raw[name]
        if problems:
            raise ManifestError(f"{path} is not a valid {cls.KIND} manifest:", cls.HINT, problems)
        extra = {k: v for k, v in raw.items() if k not in known and k != "format"}
        m = cls(**kwargs, folder=folder, extra=extra)
        problems = m._problems(verify)
        if problems:
            raise ManifestError(f"{cls.KIND} {folder} cannot be used:", m._fix_hint(), problems)
        return m

    def write(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / MANIFEST, self.to_dict(), what="manifest")

    def to_dict(self) -> dict:
        d = {"format": self.FORMAT}
        for f in dataclasses.fields(self):
            if f.name not in ("folder", "extra"):
                d[f.name] = getattr(self, f.name)
        d.update(self.extra)
        return d

    # ------------------------------------------------------------ shared checks

    @property
    def cfg(self):
        """The model config: an LRUConfig, or a contract.ModuleConfig for an export of your own nn.Module."""
        return contract.config_from_dict(self.config)

    @property
    def is_module(self) -> bool:
        """An export of your own nn.Module (lru_deploy.export_module): its reference lies in the folder."""
        return isinstance(self.config, dict) and self.config.get("kind") == "module"

    def spec(self, graph: str) -> contract.GraphSpec:
        """The graph's I/O contract as this manifest records it."""
        return contract.GraphSpec.from_dict(graph, self.contract[graph])

    def _files(self) -> dict[str, dict]:
        raise NotImplementedError

    def _fix_hint(self) -> str:
        raise NotImplementedError

    def _problems(self, verify: bool) -> list[str]:
        problems = self._contract_problems()
        for key, ent in self._files().items():
            if not isinstance(ent, dict) or not isinstance(ent.get("path"), str):
                problems.append(f"{key}: no path recorded")
                continue
            p = self.folder / ent["path"]
            if Path(ent["path"]).is_absolute() or not inside(p, self.folder):
                problems.append(f"{key}: path {ent['path']!r} leaves the folder; a manifest names files inside it")
            elif not p.is_file():
                problems.append(f"{key}: {p} is missing")
            elif verify and ent.get("sha256") and file_sha256(p) != ent["sha256"]:
                problems.append(f"{key}: {p} does not match the sha256 recorded in the manifest (changed or damaged)")
        return problems

    def _contract_problems(self) -> list[str]:
        from .errors import ConfigError
        problems = []
        missing = [g for g in contract.GRAPHS if g not in self.contract]
        if missing:
            return [f"the contract has no {', '.join(missing)} graph"]
        for g in contract.GRAPHS:
            try:
                self.spec(g)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"the contract's {g} entry is malformed ({e})")
        if problems:
            return problems
        try:
            cfg = self.cfg
        except ConfigError as e:
            return [f"config: {p}" for p in (e.problems or [e.message])]
        implied = contract.contract(cfg, self.prefill_outputs)
        for g in contract.GRAPHS:
            if implied[g] != self.contract[g]:
                problems += [f"the contract disagrees with the config: {p}"
                             for p in contract.spec_differences(self.spec(g), contract.GraphSpec.from_dict(
                                 g, implied[g]))] or [f"the {g} contract disagrees with the config"]
        return problems


_TYPES = {"str": (str,), "int": (int,), "dict": (dict,), "list": (list,), "bool": (bool,),
          "float": (int, float), "Optional[float]": (int, float, type(None)), "Optional[int]": (int, type(None))}


@dataclass
class ExportManifest(_Manifest):
    """manifest.json of an export folder: what `lru-deploy export` wrote and how."""

    FORMAT: ClassVar[str] = EXPORT_FORMAT
    KIND: ClassVar[str] = "an export folder"
    HINT: ClassVar[str] = "pass the folder that `lru-deploy export` wrote, or export again"

    name: str
    config: dict  # the model config (LRUConfig fields)
    contract: dict  # graph -> {"inputs": [...], "outputs": [...]} (lru_deploy.contract)
    graphs: dict  # precision -> graph -> {"path", "sha256", "nodes", "bytes"}
    chunk: int  # the scan's chunk T
    max_seq: int  # the longest prefill call the graphs take
    opset: int
    prefill_outputs: str = "all"  # pooling none: outputs at every position (all) or the last (last)
    intra: str = "toeplitz"
    precisions: list = field(default_factory=list)
    model: dict = field(default_factory=dict)  # {"path", "sha256"} of the checkpoint it was made from
    precision_policy: str = ""
    tools: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    lint: dict = field(default_factory=dict)
    export_seconds: float = 0.0
    reference: dict = field(default_factory=dict)  # module exports: name -> {"path", "sha256"} (torch.export .pt2)
    folder: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path, *, precision: Optional[str] = None, verify: bool = True) -> "ExportManifest":
        m = super().read(folder, verify=verify)
        if precision is not None and precision not in m.graphs:
            raise ManifestError(f"export folder {m.folder} has no {precision} graphs (it has "
                                f"{', '.join(m.graphs) or 'none'})", f"choose one of {', '.join(m.graphs)} or "
                                f"export again with --precision {precision}")
        return m

    def graph_path(self, precision: str, graph: str) -> Path:
        return self.folder / self.graphs[precision][graph]["path"]

    def _files(self) -> dict[str, dict]:
        files = {}
        for prec, gs in self.graphs.items():
            if prec not in contract.PRECISIONS:
                continue  # reported as an unknown precision
            if not isinstance(gs, dict):
                gs = {}
            for g in contract.GRAPHS:
                files[f"{prec}/{g}"] = gs.get(g)
        for key, ent in (self.reference.items() if isinstance(self.reference, dict) else ()):
            files[f"reference/{key}"] = ent
        if self.is_module and not self.reference:
            files["reference"] = None  # reported: a module export without its reference program
        return files

    def _problems(self, verify: bool) -> list[str]:
        problems = [f"precision {p!r} is unknown (known: {', '.join(contract.PRECISIONS)})"
                    for p in self.graphs if p not in contract.PRECISIONS]
        if self.precisions and sorted(self.precisions) != sorted(self.graphs):
            problems.append(f"precisions {self.precisions} but graphs for {sorted(self.graphs)}")
        if not self.graphs:
            problems.append("no graphs recorded")
        return problems + super()._problems(verify)

    def _fix_hint(self) -> str:
        if self.is_module:
            return f"export the model again: lru_deploy.export_module(model, example_inputs, {str(self.folder)!r})"
        src = self.model.get("path", "MODEL_DIR") if isinstance(self.model, dict) else "MODEL_DIR"
        return f"export again: lru-deploy export {src} --out {self.folder} --overwrite"

    def graph_problems(self, precisions: Optional[list] = None) -> list[str]:
        """The graphs' own inputs, outputs and recorded limits against this manifest (loads each ONNX file)."""
        import onnx
        from google.protobuf.message import DecodeError
        problems = []
        for prec in precisions or list(self.graphs):
            for g in contract.GRAPHS:
                path = self.graph_path(prec, g)
                try:
                    m = onnx.load(str(path), load_external_data=False)
                except (OSError, ValueError, DecodeError) as e:
                    problems.append(f"{prec}/{g}: {path} is not a readable ONNX model ({e})")
                    continue
                problems += [f"{prec}/{g}: {p}" for p in contract.onnx_io_problems(self.spec(g), m)]
                problems += [f"{prec}/{g}: {p}" for p in self.limit_problems(m)]
        return problems

    def limit_problems(self, model) -> list[str]:
        """The limits a graph records in its metadata (max_seq, chunk, scan reach) against this manifest's.
        `model`: an onnx.ModelProto or ONNX Runtime's custom metadata map of a loaded session."""
        from .export.graphs import graph_limits
        from .export.scan import scan_reach
        limits = graph_limits(model)
        wants = [("max_seq", self.max_seq), ("chunk", self.chunk)]
        if all(isinstance(v, int) and v >= 1 for _, v in wants):
            wants.append(("scan_reach", scan_reach(self.max_seq, self.chunk)))
        return [f"the graph was built for {key} {limits[key]}, the manifest says {want}"
                for key, want in wants
                if key in limits and limits[key] != want]


@dataclass
class EngineManifest(_Manifest):
    """manifest.json of an engine folder: the plans, what they are tied to, and the export they came from."""

    FORMAT: ClassVar[str] = FORMAT
    KIND: ClassVar[str] = "an engine folder"
    HINT: ClassVar[str] = "pass the folder that `lru-deploy build` wrote, or build again"

    name: str
    precision: str
    engines: dict  # graph -> {"path", "sha256", "bytes"}
    gpu: dict  # {"name", "compute_capability"}
    tensorrt: dict  # {"version"}
    config: dict
    contract: dict
    profiles: dict  # graph -> tensor -> {"min", "opt", "max"}
    max_seq: int
    chunk: int = 0  # the export's scan chunk (0: a folder written before it was recorded)
    platform: str = ""
    batch: list = field(default_factory=list)
    seq: list = field(default_factory=list)
    tf32: bool = False
    hardware_compat: str = "none"
    version_compatible: bool = False
    builder_optimization_level: Optional[int] = None
    workspace_gib: Optional[float] = None
    source: dict = field(default_factory=dict)  # {"export_dir", "export_max_seq", "graphs"}
    prefill_outputs: str = "all"
    build_seconds: dict = field(default_factory=dict)
    trtexec: dict = field(default_factory=dict)
    folder: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    def engine_path(self, graph: str) -> Path:
        return self.folder / self.engines[graph]["path"]

    def source_export(self) -> Optional[Path]:
        """The export folder the engines were built from, if it is still there."""
        src = self.source.get("export_dir")
        return Path(src) if src and folder_kind(src) == "export" else None

    def _files(self) -> dict[str, dict]:
        return {g: self.engines.get(g) for g in contract.GRAPHS}

    def _problems(self, verify: bool) -> list[str]:
        problems = [f"no engine for {g}" for g in contract.GRAPHS if g not in self.engines]
        problems += [f"no optimization profile for {g}" for g in contract.GRAPHS if g not in self.profiles]
        return problems + super()._problems(verify)

    def _fix_hint(self) -> str:
        return f"build it again: lru-deploy build {self.source.get('export_dir', 'EXPORT_DIR')} --out {self.folder}"
