"""The manifests of export and engine folders: the one place that reads or writes `manifest.json`."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Optional

from . import __version__, contract
from .errors import EngineError, ExportError
from .files import file_sha256

MANIFEST = "manifest.json"
EXPORT_FORMAT = "lru-deploy-export-v1"
FORMAT = "lru-deploy-engines-v1"


def tool_versions() -> dict:
    import numpy as np
    import onnx
    import torch
    import onnxruntime
    import polygraphy
    return {"lru_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "polygraphy": polygraphy.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _read_manifest(folder: Path, what: str, err) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise err(f"{folder} is not {what} (no {MANIFEST})",
                  "pass the folder that `lru-deploy export` or `lru-deploy build` wrote")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise err(f"cannot read {path}: {e}", "the manifest is damaged; write the folder again") from None


def _file_problems(folder: Path, entries: dict, verify: bool) -> list[str]:
    problems = []
    for key, ent in entries.items():
        if not isinstance(ent, dict) or "path" not in ent:
            problems.append(f"{key}: no path recorded")
            continue
        p = folder / ent["path"]
        if not p.is_file():
            problems.append(f"{key}: {p} is missing")
        elif verify and ent.get("sha256") and file_sha256(p) != ent["sha256"]:
            problems.append(f"{key}: {p} does not match the sha256 recorded in the manifest (changed or damaged)")
    return problems


def read_export_manifest(export_dir, precision: Optional[str] = None, verify: bool = True) -> dict:
    """The manifest of an export folder, checked: format, config, contract, the precision's graphs on disk."""
    folder = Path(export_dir)
    m = _read_manifest(folder, "an export folder", ExportError)
    problems = []
    if m.get("format") != EXPORT_FORMAT:
        problems.append(f"format is {m.get('format')!r}, want {EXPORT_FORMAT!r}")
    for key in ("config", "contract", "graphs", "max_seq"):
        if key not in m:
            problems.append(f"no {key!r} entry")
    graphs = m.get("graphs", {})
    if precision is not None and "graphs" in m and precision not in graphs:
        problems.append(f"no {precision} graphs (this export has {', '.join(graphs) or 'none'})")
    for p in ([precision] if precision else list(graphs)):
        if p in graphs:
            problems += [f"{p} {g}" for g in _file_problems(folder, graphs[p], verify)]
    if problems:
        raise ExportError(f"export folder {folder} cannot be used:",
                          "export again: lru-deploy export MODEL_DIR --out " + str(folder), problems)
    return m


def read_engine_manifest(engine_dir, verify: bool = True) -> dict:
    """The manifest of an engine folder, checked: format, entries, both plans on disk with their sha256."""
    folder = Path(engine_dir)
    m = _read_manifest(folder, "an engine folder", EngineError)
    problems = []
    if m.get("format") != FORMAT:
        problems.append(f"format is {m.get('format')!r}, want {FORMAT!r}")
    for key in ("engines", "config", "contract", "profiles", "gpu", "tensorrt"):
        if key not in m:
            problems.append(f"no {key!r} entry")
    engines = m.get("engines", {})
    missing = [g for g in contract.GRAPHS if g not in engines]
    if "engines" in m and missing:
        problems.append(f"no engine for {', '.join(missing)}")
    problems += _file_problems(folder, {g: e for g, e in engines.items() if g in contract.GRAPHS}, verify)
    if problems:
        src = m.get("source", {}).get("export_dir", "EXPORT_DIR")
        raise EngineError(f"engine folder {folder} cannot be used:",
                          f"build it again: lru-deploy build {src} --out {folder}", problems)
    return m
