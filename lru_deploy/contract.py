"""The I/O contract of the two graphs, and the tolerance table, as data. This module owns the tensor names.

    prefill: inputs `input_ids` int64 [batch, seq] (or `inputs` float32 [batch, seq, d_input]),
             `state` float32 [batch, n_layers, 2, d_hidden] (+ `pool_sum`, `pool_count` for mean pooling);
             outputs `outputs`, `state_out` (+ `pool_sum_out`, `pool_count_out`)
    step:    the same with one position: `input_ids` [batch] or `inputs` [batch, d_input]

Every input other than the model's own input is state carried from call to call: its new value comes back as
the output of the same name with `_out` appended (`state_pairs`, `carry`). Export names the graph tensors from
here, the manifest records the contract, and lint, parity, the runtime and the apps check against it with
`io_problems` (graphs, sessions, engines) and `check_arrays` (arrays fed to a graph). Shapes use named dynamic
axes ("batch", "seq"); the other dims are numbers. `markdown_table` renders it; a test keeps the README's
table equal to its rendering for the bundled model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import numpy as np

from .errors import ConfigError, InputError
from .model import LRUConfig

GRAPHS = ("prefill", "step")
OUTPUTS = "outputs"  # the model's output in both graphs
OUT_SUFFIX = "_out"  # state input `x` comes back as output `x_out`
PRECISIONS = ("fp32", "fp16", "bf16")
Dim = Union[int, str]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32 | int64
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class GraphSpec:
    graph: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, graph: str, d: dict) -> "GraphSpec":
        """The inverse of to_dict (a manifest's contract entry); raises KeyError/TypeError when malformed."""
        def specs(items):
            return tuple(TensorSpec(str(t["name"]), str(t["dtype"]), tuple(t["shape"])) for t in items)
        return cls(graph, specs(d["inputs"]), specs(d["outputs"]))

    @property
    def state_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs carried from call to call (every input that has an `_out` partner)."""
        outs = set(self.output_names)
        return tuple(t for t in self.inputs if out_name(t.name) in outs)

    @property
    def model_inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.inputs if t not in self.state_inputs)


def out_name(state: str) -> str:
    """The output that carries state input `state` to the next call."""
    return state + OUT_SUFFIX


def state_pairs(spec: GraphSpec) -> list[tuple[str, str]]:
    """(state input, its output) for every state the graph carries."""
    return [(t.name, out_name(t.name)) for t in spec.state_inputs]


def carry(spec: GraphSpec, outputs: dict) -> dict:
    """The state for the next call, from one call's outputs (named as the state inputs)."""
    return {i: outputs[o] for i, o in state_pairs(spec)}


def input_name(cfg: LRUConfig) -> str:
    return "input_ids" if cfg.tokens else "inputs"


def state_inputs(cfg: LRUConfig) -> tuple[TensorSpec, ...]:
    specs = [TensorSpec("state", "float32", ("batch", cfg.n_layers, 2, cfg.d_hidden))]
    if cfg.pooling == "mean":
        specs += [TensorSpec("pool_sum", "float32", ("batch", cfg.d_model)),
                  TensorSpec("pool_count", "float32", ("batch", 1))]
    return tuple(specs)


def graph_spec(cfg: LRUConfig, graph: str, prefill_outputs: str = "all") -> GraphSpec:
    """The contract of one graph. prefill_outputs='last' makes a pooling-none prefill return [batch, d_output].
    `cfg` may also be a ModuleConfig (an export of your own nn.Module), which has its own state layout."""
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if isinstance(cfg, ModuleConfig):
        return cfg.graph_spec(graph)
    seq_axes: tuple[Dim, ...] = ("batch", "seq") if graph == "prefill" else ("batch",)
    x = (TensorSpec("input_ids", "int64", seq_axes) if cfg.tokens
         else TensorSpec("inputs", "float32", seq_axes + (cfg.d_input,)))
    per_position = graph == "prefill" and cfg.pooling == "none" and prefill_outputs == "all"
    out_shape = ("batch", "seq", cfg.d_output) if per_position else ("batch", cfg.d_output)
    outs = [TensorSpec("outputs", "float32", out_shape),
            TensorSpec("state_out", "float32", ("batch", cfg.n_layers, 2, cfg.d_hidden))]
    if cfg.pooling == "mean":
        outs += [TensorSpec("pool_sum_out", "float32", ("batch", cfg.d_model)),
                 TensorSpec("pool_count_out", "float32", ("batch", 1))]
    return GraphSpec(graph, (x,) + state_inputs(cfg), tuple(outs))


def contract(cfg: LRUConfig, prefill_outputs: str = "all") -> dict:
    return {g: graph_spec(cfg, g, prefill_outputs).to_dict() for g in GRAPHS}


# Tolerances per precision against the complex128 reference: (atol, rtol) per element for Polygraphy's
# CompareFunc.simple, and the relative-L2 bound on each whole output. Tighter than the peers' tests
# (mamba's selective scan fp32 rtol 6e-4 atol 2e-3; TensorRT-LLM's rg_lru atol 2e-3 fp32, 5e-2 fp16/bf16)
# where the numbers allow. The step graph's float32 state drifts over many steps (it is rounded every
# step); `drift_rel_l2` bounds that separately over a 10,000-step run.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-4, "rel_l2": 1e-5, "drift_rel_l2": 3e-4},
    "fp16": {"atol": 2e-2, "rtol": 2e-2, "rel_l2": 3e-3, "drift_rel_l2": 3e-3},
    "bf16": {"atol": 1.5e-1, "rtol": 1e-1, "rel_l2": 2e-2, "drift_rel_l2": 2e-2},
}


def check_arrays(spec: GraphSpec, arrays: dict[str, np.ndarray], cfg: LRUConfig,
                 batch: Optional[int] = None) -> list[str]:
    """Names, then dtypes and shapes, of arrays fed to a graph; every problem listed. Empty when all is well."""
    problems = []
    missing = [t.name for t in spec.inputs if t.name not in arrays]
    extra = [k for k in arrays if k not in spec.input_names]
    if missing:
        problems.append(f"missing inputs: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected inputs: {', '.join(extra)} (the {spec.graph} graph takes "
                        f"{', '.join(spec.input_names)})")
    sizes: dict[str, int] = {} if batch is None else {"batch": batch}
    for t in spec.inputs:
        a = arrays.get(t.name)
        if a is None:
            continue
        a = np.asarray(a)
        if str(a.dtype) != t.dtype:
            problems.append(f"{t.name}: dtype {a.dtype}, want {t.dtype}")
        if a.ndim != len(t.shape):
            problems.append(f"{t.name}: shape {list(a.shape)}, want {_fmt(t.shape)} (rank {len(t.shape)})")
            continue
        for axis, (got, want) in enumerate(zip(a.shape, t.shape)):
            if isinstance(want, str):
                if sizes.setdefault(want, got) != got:
                    problems.append(f"{t.name}: axis {axis} ({want}) is {got}, but another input has {want} = "
                                    f"{sizes[want]}")
                elif got < 1:
                    problems.append(f"{t.name}: axis {axis} ({want}) is empty")
            elif got != want:
                problems.append(f"{t.name}: shape {list(a.shape)}, want {_fmt(t.shape)}")
                break
        if t.name == "input_ids" and a.size and a.dtype.kind in "iu":
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= cfg.vocab_size:
                problems.append(f"input_ids: values in [{lo}, {hi}], want [0, {cfg.vocab_size - 1}]")
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            problems.append(f"{t.name}: holds NaN or Inf")
    return problems


def validate_arrays(spec: GraphSpec, arrays: dict[str, np.ndarray], cfg: LRUConfig) -> None:
    problems = check_arrays(spec, arrays, cfg)
    if problems:
        raise InputError(f"inputs do not match the {spec.graph} contract:",
                         f"the {spec.graph} graph takes {_describe(spec)}", problems)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _describe(spec: GraphSpec) -> str:
    return ", ".join(f"{t.name} {t.dtype} {_fmt(t.shape)}" for t in spec.inputs)


def markdown_table(cfg: LRUConfig) -> str:
    rows = ["| graph | tensor | direction | dtype | shape |", "|---|---|---|---|---|"]
    for g in GRAPHS:
        spec = graph_spec(cfg, g)
        for direction, ts in (("input", spec.inputs), ("output", spec.outputs)):
            for t in ts:
                rows.append(f"| {g} | `{t.name}` | {direction} | {t.dtype} | {_fmt(t.shape)} |")
    return "\n".join(rows)


def io_findings(spec: GraphSpec, io: dict) -> list[tuple[str, str]]:
    """A graph's, session's or engine's tensors against the contract: (tensor, problem) for every problem.

    io: name -> (direction 'input'|'output', dtype or None, shape or None); a shape lists ints for fixed
    dims and anything else (a name, None, -1) for dynamic ones. Whether dynamic axes are dynamic is lint's
    business (rules dynamic-batch, dynamic-seq) and an engine profile's."""
    want = {t.name: ("input", t) for t in spec.inputs}
    want.update({t.name: ("output", t) for t in spec.outputs})
    found = [(n, f"no {want[n][0]} {n!r} (the contract's {want[n][0]}s: "
                 f"{', '.join(k for k, v in want.items() if v[0] == want[n][0])})") for n in want if n not in io]
    found += [(n, f"unexpected tensor {n!r} (the contract has {', '.join(want)})") for n in io if n not in want]
    for name, entry in io.items():
        if name not in want:
            continue
        direction, dtype, shape = (tuple(entry) + (None, None))[:3]
        kind, t = want[name]
        if direction != kind:
            found.append((name, f"{name} is an {direction}, the contract has it as an {kind}"))
        if dtype is not None and str(np.dtype(dtype)) != t.dtype:
            found.append((name, f"{kind} {name} is {np.dtype(dtype)}, the contract says {t.dtype}"))
        if shape is None:
            continue
        shape = list(shape)
        if len(shape) != len(t.shape):
            found.append((name, f"{kind} {name} has rank {len(shape)} {shape}, the contract says {_fmt(t.shape)}"))
            continue
        for axis, (have, w) in enumerate(zip(shape, t.shape)):
            if isinstance(w, int) and isinstance(have, int) and have >= 0 and have != w:
                found.append((name, f"{kind} {name} axis {axis} is {have}, the contract says {w} {_fmt(t.shape)}"))
    return found


def io_problems(graph: str, spec: GraphSpec, io: dict) -> list[str]:
    """io_findings as messages prefixed with the graph."""
    return [f"{graph}: {msg}" for _, msg in io_findings(spec, io)]


def onnx_io(model) -> dict:
    """An onnx.ModelProto's graph inputs and outputs in the form io_problems takes."""
    import onnx
    inits = {t.name for t in model.graph.initializer}

    def entry(direction, vi):
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        shape = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                 if tt.HasField("shape") else None)
        return direction, dtype, shape

    io = {vi.name: entry("input", vi) for vi in model.graph.input if vi.name not in inits}
    io.update({vi.name: entry("output", vi) for vi in model.graph.output})
    return io


def onnx_io_problems(spec: GraphSpec, model) -> list[str]:
    return io_problems(spec.graph, spec, onnx_io(model))


def spec_differences(got: GraphSpec, want: GraphSpec) -> list[str]:
    """How a recorded contract differs from the one expected (for messages)."""
    io = {t.name: ("input", t.dtype, list(t.shape)) for t in got.inputs}
    io.update({t.name: ("output", t.dtype, list(t.shape)) for t in got.outputs})
    return io_problems(want.graph, want, io)


# ---------------------------------------------------------------- exports of your own nn.Module


@dataclass(frozen=True)
class ModuleConfig:
    """The I/O of an `export_module` export (a PyTorch model built with lru_deploy.nn layers), as the manifest's
    `config` records it (`kind: "module"`). It stands where an LRUConfig stands for the contract, the shape
    matrix, the runtime and check.

        prefill: `input_ids` int64 [batch, seq] or `inputs` float32 [batch, seq, d_input];
                 one state per LRU layer, `state.<module name>` float32 [batch, 2, d_hidden of that layer]
                 (planes: real, imaginary part), in the order of `layers`; with a mean Pool also `pool_sum`
                 [batch, d_pool] and `pool_count` [batch, 1];
                 outputs `outputs` [batch, seq, d_output] (or [batch, d_output] when the model pools), then each
                 state input's `_out` partner in the same order
        step:    the same with one position: `input_ids` [batch] or `inputs` [batch, d_input], `outputs`
                 [batch, d_output]
    """

    layers: tuple  # ((module name, d_hidden), ...) in the model's order of registration
    d_output: int
    vocab_size: Optional[int] = None  # token models: ids in [0, vocab_size)
    d_input: Optional[int] = None  # continuous models
    pooling: str = "none"  # none | mean | last (a lru_deploy.nn.Pool inside the model)
    d_pool: Optional[int] = None  # mean pooling: the width of the pooled tensor
    model_class: str = ""  # the exported model's class, for messages
    kind: str = "module"
    log_softmax: bool = False  # the native field consumers read; a module's own log_softmax is in its graph

    @property
    def tokens(self) -> bool:
        return self.vocab_size is not None

    @staticmethod
    def state_name(module: str) -> str:
        return f"state.{module}"

    def graph_spec(self, graph: str) -> GraphSpec:
        seq_axes: tuple[Dim, ...] = ("batch", "seq") if graph == "prefill" else ("batch",)
        x = (TensorSpec("input_ids", "int64", seq_axes) if self.tokens
             else TensorSpec("inputs", "float32", seq_axes + (self.d_input,)))
        states = [TensorSpec(self.state_name(name), "float32", ("batch", 2, n)) for name, n in self.layers]
        if self.pooling == "mean":
            states += [TensorSpec("pool_sum", "float32", ("batch", self.d_pool)),
                       TensorSpec("pool_count", "float32", ("batch", 1))]
        per_position = graph == "prefill" and self.pooling == "none"
        out = TensorSpec(OUTPUTS, "float32", ("batch", "seq", self.d_output) if per_position
                         else ("batch", self.d_output))
        outs = [out] + [TensorSpec(out_name(t.name), t.dtype, t.shape) for t in states]
        return GraphSpec(graph, (x,) + tuple(states), tuple(outs))

    def problems(self) -> list[str]:
        out = []
        if (self.vocab_size is None) == (self.d_input is None):
            out.append("exactly one of vocab_size (token ids) and d_input (continuous inputs) must be set")
        if self.pooling not in ("none", "mean", "last"):
            out.append(f"pooling must be none, mean or last, got {self.pooling!r}")
        if self.pooling == "mean" and not (isinstance(self.d_pool, int) and self.d_pool >= 1):
            out.append(f"mean pooling needs d_pool >= 1, got {self.d_pool!r}")
        if not self.layers:
            out.append("no LRU layers")
        for entry in self.layers:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and entry[1] >= 1):
                out.append(f"layer entry {entry!r} is not [module name, d_hidden]")
        names = [e[0] for e in self.layers if isinstance(e, (tuple, list)) and e]
        if len(set(names)) != len(names):
            out.append("two LRU layers share a name")
        if not (isinstance(self.d_output, int) and self.d_output >= 1):
            out.append(f"d_output must be a positive integer, got {self.d_output!r}")
        if self.kind != "module":
            out.append(f"kind must be 'module', got {self.kind!r}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [[n, h] for n, h in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModuleConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict):
            raise ConfigError(f"a module config must be a JSON object, got {type(d).__name__}")
        problems = [f"unknown config field {k!r}" for k in sorted(set(d) - known)]
        missing = [k for k in ("layers", "d_output") if k not in d]
        problems += [f"no {k!r} entry" for k in missing]
        if not problems:
            layers = d["layers"]
            layers = tuple(tuple(e) if isinstance(e, list) else e for e in layers) if isinstance(layers, list) \
                else layers
            cfg = cls(**{**{k: v for k, v in d.items() if k in known}, "layers": layers})
            problems = cfg.problems()
        if problems:
            raise ConfigError("invalid module config:", "export the model again with lru_deploy.export_module",
                              problems)
        return cfg


def config_from_dict(d: dict):
    """The config a manifest records: a ModuleConfig for `kind: "module"`, otherwise an LRUConfig."""
    if isinstance(d, dict) and d.get("kind") == "module":
        return ModuleConfig.from_dict(d)
    return LRUConfig.from_dict(d)
