"""Memory estimates made before anything large is allocated, and the refusal of what cannot fit.

`init` allocates the model's parameters; `export` also holds, per precision, a prefill graph whose largest
constants are the Toeplitz blocks of the scan: per layer one (N, 2T, 2T+2) matrix (N = d_hidden, T = the
chunk), built in float64 from complex128 powers of lambda and stored in float32. So an export's memory grows
as n_layers * N * T^2, and a chunk of 4096 on the bundled model would need a 32 GiB complex128 array for one
layer. Each estimate is compared with the memory this machine has available (/proc/meminfo MemAvailable, else
os.sysconf) and with the ceiling LRU_DEPLOY_MEMORY_LIMIT_GIB when set; a graph must also stay below ONNX's
2 GiB protobuf limit. What does not fit is refused with the estimate in the message, before any allocation.

The factors below were measured on the bundled model and on larger random models (peak RSS of a fresh
process, Linux, Python 3.11, torch 2.13, onnxruntime 1.32); the estimates came out 1-15% above the measured
peaks (tests/test_memory.py checks the parts that can be counted exactly: parameters and graph sizes).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from .model import LRUConfig

GIB = 2 ** 30
MIB = 2 ** 20
ENV_LIMIT = "LRU_DEPLOY_MEMORY_LIMIT_GIB"  # a ceiling below the machine's available memory, in GiB
PROTOBUF_LIMIT = 2 ** 31 - 1  # an ONNX file is one protobuf message, which cannot reach 2 GiB

# The largest scan chunk `export --chunk` takes. Measured on the bundled model (4 layers, d_hidden 128),
# `lru-deploy export --chunk T` with the default precisions fp32,fp16 on 2 CPU cores:
#     T      16      32      64      128      256
#     time   12.8 s  10.5 s  17.0 s  16.6 s   80.4 s
#     RSS    490     516     615     1142     3430 MiB   (peak of the process)
#     ONNX   11 MB   24 MB   75 MB   279 MB   1088 MB   (the four graphs on disk)
# 512 cannot be written at all for this model: its prefill graph would hold 2.15 GB of Toeplitz blocks, over
# the 2 GiB protobuf limit. Past T = 32 a chunk only costs (the default T = 32 is the fastest measured
# prefill on the CPU, benchmarks/RESULTS.md), so 256 is the limit: the largest chunk the bundled model can be
# exported with, in under 2 minutes and 4 GiB. Smaller models that fit could take larger chunks, but nothing
# is gained by them; larger models at 256 are refused by the estimate below.
MAX_CHUNK = 256

# Fixed costs: Python with torch, onnx and onnxruntime imported (measured 260 MiB) plus ONNX Runtime's arenas
# (an export of the bundled model at chunk 16, whose graphs are 11 MB, peaks at 490 MiB with its activations).
EXPORT_BASELINE = 416 * MIB
INIT_BASELINE = 256 * MIB  # init imports torch and safetensors only (measured 226 MB)


@dataclass(frozen=True)
class Estimate:
    """The memory a command will need: named parts in bytes, and the largest file it writes, if that matters."""

    what: str  # e.g. "init of this config", "export --chunk 256 --precision fp32,fp16"
    parts: tuple[tuple[str, int], ...]
    largest_graph: int = 0  # bytes of the largest ONNX graph (0: no graph)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        items = ", ".join(f"{name} {human(b)}" for name, b in self.parts if b >= MIB)
        return f"{human(self.total)} ({items})" if items else human(self.total)


def human(n: float) -> str:
    """1.5 GiB, 320 MiB, 16.0 TiB."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", GIB), ("MiB", MIB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2 ** 10:.0f} KiB"


# ---------------------------------------------------------------- what the machine has

def available_memory() -> tuple[Optional[int], str]:
    """(bytes, where the number came from): MemAvailable from /proc/meminfo, else os.sysconf's available
    physical pages, else (None, why)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return pages * size, "os.sysconf (available physical pages)"
    except (OSError, ValueError, AttributeError):
        pass
    return None, "unknown (neither /proc/meminfo nor os.sysconf says)"


def memory_limit() -> tuple[Optional[int], str]:
    """The most memory a command may plan to use: the machine's available memory, or the lower ceiling
    LRU_DEPLOY_MEMORY_LIMIT_GIB when set. A ceiling that is not a positive number is ignored, with its reason
    in the returned description."""
    avail, source = available_memory()
    raw = os.environ.get(ENV_LIMIT)
    if raw is None:
        return avail, f"available memory ({source})"
    try:
        ceiling = float(raw)
    except ValueError:
        ceiling = float("nan")
    if not (math.isfinite(ceiling) and ceiling > 0):
        return avail, f"available memory ({source}; {ENV_LIMIT}={raw!r} ignored: not a positive number)"
    ceiling_b = int(ceiling * GIB)
    if avail is None or ceiling_b < avail:
        return ceiling_b, f"the ceiling {ENV_LIMIT}={raw}"
    return avail, f"available memory ({source}, below {ENV_LIMIT}={raw})"


# ---------------------------------------------------------------- what a command needs

def parameter_count(cfg: LRUConfig) -> int:
    """The model's parameters and buffers (the native checkpoint's values), from the config alone."""
    from .checkpoints import expected_shapes
    return sum(math.prod(shape) for shape in expected_shapes(cfg).values())


def prefill_graph_floats(cfg: LRUConfig, chunk: int) -> int:
    """The constants of one prefill graph, in values: the weights, and per layer the Toeplitz block
    (N, 2T, 2T+2), its chunk-end rows (N, 2, 2T) and the scan's multipliers."""
    N, T = cfg.d_hidden, chunk
    per_layer = N * 2 * T * (2 * T + 2) + N * 2 * 2 * T + 64 * N
    return parameter_count(cfg) + cfg.n_layers * per_layer


def init_estimate(cfg: LRUConfig) -> Estimate:
    """`init`: the float32 parameters, the initialisation's temporaries and the safetensors writer's buffers
    (measured 1.23x and 1.50x the parameters beyond the baseline for 612 MB and 155 MB of parameters;
    estimated 1.5x: 1132 MiB against 980 measured, and 478 against 460)."""
    params = 4 * parameter_count(cfg)
    return Estimate("init of this config", (("parameters (float32)", params),
                                            ("initialisation and writing", params // 2),
                                            ("Python and torch", INIT_BASELINE)))


def export_estimate(cfg: LRUConfig, options) -> Estimate:
    """`export` with ExportOptions `options`: the weights (read in float32, then the float64 reference); the
    prefill graph (float32 constants) held as a protobuf, serialised for the checker and for the file, and
    loaded by ONNX Runtime for validation (its initializers and pre-packed MatMul weights): 4 copies, 5 with a
    second precision, whose graphs are built while the previous ones are still held; one layer's Toeplitz
    construction (complex128 powers of lambda and the float64 block: 48 bytes per N * T^2); the validation's
    activations. On the bundled model this is 1-11% above the measured peak RSS from chunk 16 to 256
    (table at MAX_CHUNK) and 1% above it at chunk 256 with one precision (2.87 GiB estimated, 2.85 measured)."""
    T, N = options.chunk, cfg.d_hidden
    graph = 4 * prefill_graph_floats(cfg, T)
    copies = 5 if len(options.precisions) > 1 else 4
    longest = max(min(options.long_seq, options.max_seq), 3 * (2 * T + 7), 3 * T + 5)  # cases.shape_matrix
    width = 2 * cfg.d_model + 4 * N + cfg.d_output + (cfg.d_input or 0)
    parts = (("weights (float32 and float64)", 16 * parameter_count(cfg)),
             (f"prefill graphs ({copies} copies of {human(graph)})", copies * graph),
             ("Toeplitz construction (one layer)", 48 * N * T * T),
             ("validation activations", 2 * 8 * longest * width),
             ("Python, torch, onnxruntime", EXPORT_BASELINE))
    what = f"export --chunk {T} --precision {','.join(options.precisions)}"
    return Estimate(what, parts, largest_graph=graph)


# ---------------------------------------------------------------- refusing

def problems(estimate: Estimate) -> list[str]:
    """Why `estimate` cannot run here: over the memory limit, or a graph over the protobuf limit."""
    out = []
    if estimate.largest_graph > PROTOBUF_LIMIT:
        out.append(f"its prefill graph would be {human(estimate.largest_graph)}, over ONNX's 2 GiB limit for "
                   f"one file (protobuf)")
    limit, source = memory_limit()
    if limit is not None and estimate.total > limit:
        out.append(f"it needs about {estimate.describe()}; the limit is {human(limit)}: {source}")
    return out


def require(estimate: Estimate, error: type, hint: str) -> None:
    """Raise `error` (an LRUDeployError class) naming the estimate when it cannot run here."""
    found = problems(estimate)
    if found:
        raise error(f"{estimate.what} cannot run on this machine:", hint, found)
