"""`lru-deploy triton`: a Triton model repository from an export or engine folder's manifest.

    REPO/
      README.md                 how to serve it (lru-deploy serve, the official container)
      NAME/                     Python backend: lru-deploy's runtime, state per correlation id (serves here)
        config.pbtxt
        1/model.py              lru_deploy/serve/python_model.py
        1/export/ or 1/engines/ the folder's manifest and graphs (or plans), verified again at load
      NAME_onnx/ or NAME_trt/   the prefill graph under Triton's onnxruntime / TensorRT backend, implicit state
        config.pbtxt
        1/model.onnx or 1/model.plan

Every number in the configs comes from the manifest (contract dims, engine profiles); every config.pbtxt is
parsed against Triton's schema before the folder is renamed into place (lru_deploy.files.staged_dir).
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import contract
from ..errors import InputError
from ..files import check_destination, staged_dir
from ..manifest import MANIFEST, EngineManifest, ExportManifest, folder_kind
from . import config as tc

log = logging.getLogger(__name__)

KIND = "triton"  # the files.py marker kind of a repository folder
MODEL_FILE = Path(__file__).with_name("python_model.py")
TRITON_RELEASE = "2.51"  # the tritonserver that nvidia-pytriton 0.7.0 bundles (lru-deploy serve)
CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # NGC's container of Triton 2.51
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Repository:
    folder: Path
    models: dict  # model name -> flavour ("python", "onnxruntime", "tensorrt")
    source_kind: str  # "export" | "engines"


def write_repository(source, out, *, name: str = "lru", max_batch: int = 8, instances: int = 1,
                     idle_s: float = 60.0, precision: Optional[str] = None, overwrite: bool = False) -> Repository:
    """Write the repository (see the module docstring); the folder appears whole or not at all."""
    source = Path(source)
    problems = []
    if not _NAME.match(name or ""):
        problems.append(f"--name {name!r}: a Triton model name here is letters, digits, '_', '.' and '-', "
                        f"starting with a letter or digit")
    if not (isinstance(max_batch, int) and max_batch >= 1):
        problems.append(f"--max-batch must be >= 1, got {max_batch}")
    if not (isinstance(instances, int) and instances >= 1):
        problems.append(f"--instances must be >= 1, got {instances}")
    if not idle_s > 0:
        problems.append(f"--idle-timeout must be > 0 seconds, got {idle_s}")
    if problems:
        raise InputError("cannot write a Triton repository:", "fix the options named above", problems)
    kind = folder_kind(source) if source.is_dir() else None
    if kind == "export":
        m = ExportManifest.read(source, precision=precision or _default_precision(source))
        precision = precision or _default_precision(source)
    elif kind == "engines":
        m = EngineManifest.read(source)
        if precision and precision != m.precision:
            raise InputError(f"engine folder {source} holds {m.precision} engines, not {precision}",
                             f"drop --precision or pass --precision {m.precision}")
        precision = m.precision
        _check_profiles(m, max_batch)
    else:
        raise InputError(f"{source} is neither an export folder nor an engine folder",
                         "pass the folder that `lru-deploy export` or `lru-deploy build` wrote")
    out = check_destination(out, KIND, reads=[source], overwrite=overwrite)
    tc.schema()  # before any copying: without Triton's schema nothing can be checked
    spec = m.spec("prefill")
    idle_us = max(1, int(round(idle_s * 1e6)))
    flavour = "onnxruntime" if kind == "export" else "tensorrt"
    graph_name = f"{name}_{'onnx' if kind == 'export' else 'trt'}"
    models = {name: "python", graph_name: flavour}
    with staged_dir(out, KIND, reads=[source], overwrite=overwrite) as tmp:
        # the Python-backend model: this package's runtime on a copy of the folder
        version = tmp / name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(MODEL_FILE, version / "model.py")
        _copy_folder(m, version / kind)
        params = {tc.P_TARGET: kind, tc.P_BACKEND: "onnxruntime" if kind == "export" else "tensorrt"}
        if kind == "export":
            params[tc.P_PRECISION] = precision
        configs = {name: tc.python_config(name, spec, max_batch=max_batch, instances=instances, idle_us=idle_us,
                                          kind="KIND_CPU" if kind == "export" else "KIND_GPU", params=params)}
        # the prefill graph for Triton's own backend
        gversion = tmp / graph_name / "1"
        gversion.mkdir(parents=True)
        if kind == "export":
            shutil.copyfile(m.graph_path(precision, "prefill"), gversion / "model.onnx")
            configs[graph_name] = tc.graph_config(graph_name, spec, max_batch=max_batch, instances=instances,
                                                  idle_us=idle_us, backend="onnxruntime", model_file="model.onnx")
        else:
            shutil.copyfile(m.engine_path("prefill"), gversion / "model.plan")
            configs[graph_name] = tc.graph_config(graph_name, spec, max_batch=max_batch, instances=instances,
                                                  idle_us=idle_us, platform="tensorrt_plan", kind="KIND_GPU",
                                                  model_file="model.plan")
        for model, text in configs.items():
            tc.parse_config(text, f"{model}/config.pbtxt")
            (tmp / model / "config.pbtxt").write_text(text)
        (tmp / "README.md").write_text(_readme(out, m, kind, name, graph_name, precision, max_batch, instances,
                                               idle_s))
    log.debug("wrote the Triton repository %s: %s", out, ", ".join(f"{k} ({v})" for k, v in models.items()))
    return Repository(out, models, kind)


def _default_precision(folder: Path) -> str:
    graphs = ExportManifest.read(folder, verify=False).graphs
    return "fp32" if "fp32" in graphs else next(iter(graphs), "fp32")


def _check_profiles(m: EngineManifest, max_batch: int) -> None:
    """The engines must take every batch from 1 to max_batch, and the prefill engine seq 1 (one token)."""
    problems = []
    for graph, tensors in m.profiles.items():
        for tensor, prof in tensors.items():
            lo, hi = prof["min"][0], prof["max"][0]
            if lo > 1 or hi < max_batch:
                problems.append(f"{graph} {tensor}: batch {lo}..{hi} does not cover 1..{max_batch}")
    ids = m.spec("prefill").model_inputs[0].name
    seq_lo = m.profiles.get("prefill", {}).get(ids, {}).get("min", [1, 1])
    if len(seq_lo) > 1 and seq_lo[1] > 1:
        problems.append(f"prefill {ids}: seq starts at {seq_lo[1]}, but decoding sends one position per request")
    if problems:
        top = min(p["max"][0] for t in m.profiles.values() for p in t.values())
        raise InputError(f"the engines in {m.folder} cannot serve --max-batch {max_batch}:",
                         f"pass --max-batch {top} or less, or build again with --batch 1:1:{max_batch} "
                         f"(and --seq 1:OPT:MAX)", problems)


def _copy_folder(m, dest: Path) -> None:
    """The manifest and the files it names (graphs of every precision, or the plans)."""
    dest.mkdir(parents=True)
    shutil.copyfile(m.folder / MANIFEST, dest / MANIFEST)
    files = ([ent["path"] for gs in m.graphs.values() for ent in gs.values()] if isinstance(m, ExportManifest)
             else [m.engines[g]["path"] for g in contract.GRAPHS])
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(m.folder / rel, dest / rel)


def _readme(out: Path, m, kind: str, name: str, graph_name: str, precision: str, max_batch: int,
            instances: int, idle_s: float) -> str:
    spec = m.spec("prefill")
    x = spec.model_inputs[0]
    out_t = next(t for t in spec.outputs if t.name == contract.OUTPUTS)
    dims = f"`{x.name}` {x.dtype} {tc.per_request_dims(x)} and answer `{out_t.name}` {out_t.dtype} " \
           f"{tc.per_request_dims(out_t)}"
    states = ", ".join(f"`{i}` -> `{o}`" for i, o in contract.state_pairs(spec))
    backend = "onnxruntime" if kind == "export" else "TensorRT"
    trt_note = ""
    if kind == "engines":
        trt_note = (f"\nThe plans were built with TensorRT {m.tensorrt.get('version', '?')} on "
                    f"{m.gpu.get('name', '?')}: use the container whose TensorRT is that release (NGC's release "
                    f"notes list it), on that kind of GPU.\n")
    return f"""# Triton model repository: {m.name} ({precision}, from an {kind} folder)

Written by `lru-deploy triton` from `{m.folder}`. Capacity: {max_batch} live sequences per instance x
{instances} instance(s); a sequence that sends nothing for {idle_s:g} s is released by Triton.

| model | backend | what it runs |
|---|---|---|
| `{name}` | Python | lru-deploy's {backend} session (`1/model.py`); prompt through prefill, each further token through step, batched across sequences; state kept per correlation id |
| `{graph_name}` | {backend} | the prefill graph with implicit state ({states}, zeros at START); the prompt and each further token (seq 1) |

Both take {dims} per request (batch 1, `max_batch_size` {max_batch}) under the sequence batcher: send a
sequence id with every request, `sequence_start` on the first, `sequence_end` on the last.

## Serve it here (CPU, the Python backend)

```
lru-deploy serve {out} --http-port 8000 --grpc-port 8001
lru-deploy generate --server 127.0.0.1:8000/{name} --prompt "def "
```

`lru-deploy serve` runs the tritonserver {TRITON_RELEASE} that the `nvidia-pytriton` wheel bundles (Python
backend only), from an environment with `nvidia-pytriton`, `numpy<2` and lru-deploy installed; it loads `{name}`
and skips `{graph_name}`, whose backend that server lacks.

## Serve it with NVIDIA's container

```
docker run --rm --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -v "{out}:/models" \\
  {CONTAINER} \\
  tritonserver --model-repository=/models --model-control-mode=explicit --load-model={graph_name}
```

`{graph_name}` needs nothing but the container. `{name}` needs lru-deploy and `numpy<2` in the container's
Python; with lru-deploy's source at /path/to/lru-deploy:

```
docker run --rm --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -v "{out}:/models" \\
  -v /path/to/lru-deploy:/src {CONTAINER} \\
  bash -c "pip install /src 'numpy<2' && tritonserver --model-repository=/models"
```
{trt_note}"""
