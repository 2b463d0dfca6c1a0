"""`export_module`: export your own PyTorch model built with lru_deploy.nn layers, like `lru-deploy export`.

    from lru_deploy import export_module
    export_module(model.eval(), (torch.randn(2, 40, 5),), "export/mynet")   # fp32 and fp16

Writes `<precision>/prefill.onnx`, `<precision>/step.onnx`, `reference/*.pt2` (the float64 reference as
torch.export programs) and `manifest.json`, whose `config` (contract.ModuleConfig) and `contract` name the
tensors: the model's input (`inputs` float [batch, seq, d_input] or `input_ids` int64 [batch, seq]), one state
per LRU layer `state.<module name>` [batch, 2, d_hidden] (zeros start a sequence), `pool_sum`/`pool_count` for
a mean Pool, and `outputs`, each state coming back as `<name>_out`.

In order, nothing written unless all of it passes:
1. the arguments and the model: one input tensor, one output tensor, at least one lru_deploy.nn.LRU, each LRU
   layer called once, at most one Pool, no LRU layer of another implementation left (`lru_deploy.nn.swap`);
2. positions: the eager float64 model over a sequence against the same model position by position (mixing.py);
   a module that mixes positions is refused by name;
3. PyTorch's exporter (torch.onnx.export, dynamo) on the float32 model, LRU and Pool layers as placeholders;
   placeholders replaced by the scan (onnx_graphs.py), per precision;
4. validation as `lru-deploy export` does it (export.validate over cases.shape_matrix) against the eager model in
   float64, every failure listed; the reference programs checked against the eager model; the TensorRT lint.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ... import contract
from ...cases import rel_l2, shape_matrix
from ...contract import ModuleConfig
from ...errors import ExportError
from ...files import staged_dir
from ...manifest import ExportManifest, tool_versions
from ...nn import LRU, _recognise, lru_layers, pool_layers
from .. import save_graphs
from ..scan import LRUWeights
from ..validate import validation_entry
from .mixing import find_mixing
from .onnx_graphs import build, trace
from .reference import ModuleReference, Stateful

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 32  # as lru-deploy export's (export.DEFAULT_CHUNK)
OPSETS = (18, 19, 20)
POLICY = ("state, scans, the LRU skip, norms and every non-matmul op float32; PyTorch's MatMul/Gemm and the LRU "
          "projections in the precision's type between explicit Casts")


def export_module(model: nn.Module, example_inputs, out_dir, precision=("fp32", "fp16"), chunk: int = DEFAULT_CHUNK,
                  max_seq: int = 65536, *, opset: int = 18, validate: bool = True, long_seq: int = 4096,
                  lint: bool = True, overwrite: bool = False, name: Optional[str] = None) -> Path:
    """Export `model` (an nn.Module built with lru_deploy.nn.LRU layers) to `out_dir`; returns the folder.

    example_inputs: a tuple holding one tensor, float [batch, seq, d_input] or int64 token ids [batch, seq]
    (batch and seq >= 2; they only have to run through the model). precision: a tuple of fp32, fp16, bf16 (or a
    comma string). Raises ExportError listing every problem; on any failure nothing is written."""
    t_start = time.perf_counter()
    precisions = tuple(p.strip() for p in precision.split(",")) if isinstance(precision, str) else tuple(precision)
    x = _check_args(model, example_inputs, precisions, chunk, max_seq, opset, long_seq)
    model32 = copy.deepcopy(model).float().eval()
    model64 = copy.deepcopy(model).double().eval()
    x64 = x if x.dtype == torch.int64 else x.to(torch.float64)
    cfg, pool_dim = _describe(model64, x64, type(model).__name__)
    why = find_mixing(model64, x64[:, :min(x64.shape[1], 8)])
    if why:
        raise ExportError(f"cannot export {type(model).__name__}: {why}, so it can have no step graph",
                          "every module outside the LRU layers must act on each position alone (no Conv1d over "
                          "time, attention, cumsum or reduction over the sequence); pool with "
                          "lru_deploy.nn.Pool('mean') or Pool('last'), which carry their running state")
    for i, (_, m) in enumerate(lru_layers(model32)):
        m._layer = i
    ref = ModuleReference.eager(model64, cfg)
    weights = [LRUWeights.from_lru(m) for _, m in lru_layers(model64)]
    name = name or Path(out_dir).resolve().name
    example32 = _example(cfg, x.to(torch.float32) if x.is_floating_point() else x, torch.float32)
    src = trace(Stateful(model32, cfg), example32, cfg, opset)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, "export", overwrite=overwrite) as tmp:
        graphs_meta, validation, problems = {}, {}, []
        cases = shape_matrix(chunk, max_seq, min(long_seq, max_seq))
        for pi, prec in enumerate(precisions):
            t0 = time.perf_counter()
            graphs = {g: build(src, g, prec, cfg, weights, pool_dim, chunk, max_seq, opset, name)
                      for g in contract.GRAPHS}
            graphs_meta[prec] = save_graphs(tmp, prec, graphs)
            log.info("[%d/%d] %s: graphs built (%d + %d nodes, %.1f s)", pi + 1, len(precisions), prec,
                     len(graphs["prefill"].graph.node), len(graphs["step"].graph.node), time.perf_counter() - t0)
            if validate:
                p, validation[prec] = validation_entry(ref, graphs, prec, cases, "all")
                problems += p
        example64 = _example(cfg, x64, torch.float64)
        entries = ref.save(tmp, example64)
        problems += _check_programs(tmp, entries, ref, cfg, chunk)
        if problems:
            raise ExportError(f"export of {type(model).__name__} failed ({len(problems)} problem(s)); nothing was "
                              f"written:", "the graphs disagree with the eager model beyond the tolerance; a model "
                              "whose weights are extreme may need precision=('fp32',), otherwise please report "
                              "this", problems)
        manifest = ExportManifest(
            name=name, config=cfg.to_dict(), contract=contract.contract(cfg), graphs=graphs_meta, chunk=chunk,
            max_seq=max_seq, opset=opset, prefill_outputs="all", intra="toeplitz", precisions=list(precisions),
            model={"class": f"{type(model).__module__}.{type(model).__qualname__}"}, precision_policy=POLICY,
            tools=tool_versions(), validation=validation, reference=entries,
            export_seconds=round(time.perf_counter() - t_start, 2))
        if lint:
            from ...lint import lint_export
            report = lint_export(tmp, cfg=cfg)
            manifest.lint = {"ok": report.ok, "findings": len(report.findings)}
            if not report.ok:
                raise ExportError("the exported graphs fail the TensorRT-readiness lint:",
                                  "an op of the model that TensorRT does not take (see the table), or a bug in "
                                  "export_module", [report.table()])
        manifest.write(tmp)
    log.info("export written to %s", out_dir)
    return out_dir


def _check_args(model, example_inputs, precisions, chunk, max_seq, opset, long_seq) -> torch.Tensor:
    problems = []
    if not isinstance(model, nn.Module):
        raise ExportError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    valid = ", ".join(contract.PRECISIONS)
    problems += [f"precision {p!r} is unknown; valid precisions: {valid}" for p in precisions
                 if p not in contract.PRECISIONS]
    if not precisions or len(set(precisions)) != len(precisions):
        problems.append(f"precision must name each of {valid} at most once, at least one")
    isint = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not (isint(max_seq) and max_seq >= 1):
        problems.append(f"max_seq must be a positive integer, got {max_seq!r}")
    if not (isint(chunk) and 2 <= chunk and chunk & (chunk - 1) == 0):
        problems.append(f"chunk must be a power of two >= 2, got {chunk!r}")
    elif isint(max_seq) and max_seq < chunk:
        problems.append(f"max_seq {max_seq} is shorter than the chunk {chunk}")
    if opset not in OPSETS:
        problems.append(f"opset {opset!r} unsupported; choose {', '.join(map(str, OPSETS))}")
    if not (isint(long_seq) and long_seq >= 1):
        problems.append(f"long_seq must be a positive integer, got {long_seq!r}")
    x = None
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not (isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1
            and isinstance(example_inputs[0], torch.Tensor)):
        problems.append("example_inputs must be a tuple holding one tensor (the model's input over a sequence)")
    else:
        x = example_inputs[0].detach()
        if x.dtype == torch.int64 and x.dim() == 2 or x.is_floating_point() and x.dim() == 3:
            if x.shape[0] < 2 or x.shape[1] < 2:
                problems.append(f"example input {list(x.shape)}: batch and seq must be >= 2 (PyTorch's exporter "
                                f"would fix an axis of size 1)")
        else:
            problems.append(f"example input is {x.dtype} {list(x.shape)}; export_module takes int64 token ids "
                            f"[batch, seq] or float [batch, seq, d_input]")
    foreign = [n for n, m in model.named_modules() if _recognise(m) and not isinstance(m, LRU)]
    if foreign:
        problems.append(f"LRU layers of another implementation: {', '.join(foreign)} (convert them first: "
                        f"lru_deploy.nn.swap(model))")
    if not lru_layers(model):
        problems.append(f"{type(model).__name__} has no lru_deploy.nn.LRU layer")
    if len(pool_layers(model)) > 1:
        problems.append(f"more than one Pool ({', '.join(n for n, _ in pool_layers(model))}); a model pools once")
    if problems:
        raise ExportError(f"cannot export {type(model).__name__}:", "fix the problems named above", problems)
    return x


def _describe(model64: nn.Module, x64: torch.Tensor, cls: str) -> tuple[ModuleConfig, Optional[int]]:
    """Run the model once (float64) to learn its output, each LRU layer's calls and the pooled width."""
    calls: dict[str, int] = {}
    pooled: dict[str, int] = {}
    hooks = []
    for n, m in lru_layers(model64):
        hooks.append(m.register_forward_hook(lambda mod, a, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)))
    for n, p in pool_layers(model64):
        hooks.append(p.register_forward_hook(lambda mod, a, o, n=n: pooled.__setitem__(n, a[0].shape[-1])))
    try:
        with torch.no_grad():
            y = model64(x64)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ExportError(f"{cls} does not run on the example input {list(x64.shape)}: {e}",
                          "pass example_inputs the model takes") from None
    finally:
        for h in hooks:
            h.remove()
    problems = []
    layers = lru_layers(model64)
    problems += [f"LRU layer {n!r} is called {calls.get(n, 0)} times per forward; each layer must run exactly once "
                 f"(it owns one state)" for n, _ in layers if calls.get(n, 0) != 1]
    pools = pool_layers(model64)
    if pools and not pooled:
        problems.append(f"Pool {pools[0][0]!r} is not called")
    if not isinstance(y, torch.Tensor):
        problems.append(f"{cls}.forward returns {type(y).__name__}; export_module takes a model returning one tensor")
    elif pools and y.dim() != 2 or not pools and (y.dim() != 3 or y.shape[1] != x64.shape[1]):
        problems.append(f"{cls} returns {list(y.shape)} for input {list(x64.shape)}; want [batch, seq, d_output] "
                        f"(or [batch, d_output] after a Pool)")
    if problems:
        raise ExportError(f"cannot export {cls}:", "see the problems above", problems)
    pooling = pools[0][1].kind if pools else "none"
    pool_dim = next(iter(pooled.values())) if pooled else None
    cfg = ModuleConfig(layers=tuple((n, m.d_hidden) for n, m in layers), d_output=int(y.shape[-1]),
                       vocab_size=_vocab(model64) if x64.dtype == torch.int64 else None,
                       d_input=None if x64.dtype == torch.int64 else int(x64.shape[-1]), pooling=pooling,
                       d_pool=pool_dim if pooling == "mean" else None, model_class=cls)
    return cfg, pool_dim


def _vocab(model: nn.Module) -> int:
    embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embs:
        raise ExportError("a token model (int64 inputs) needs an nn.Embedding to read the ids",
                          "pass float inputs for a continuous model")
    return int(embs[0].num_embeddings)


def _example(cfg: ModuleConfig, x: torch.Tensor, dtype: torch.dtype) -> tuple:
    B = x.shape[0]
    states = [torch.zeros(B, 2, n, dtype=dtype) for _, n in cfg.layers]
    if cfg.pooling == "mean":
        states += [torch.zeros(B, cfg.d_pool, dtype=dtype), torch.zeros(B, 1, dtype=dtype)]
    return (x, *states)


def _check_programs(tmp: Path, entries: dict, ref: ModuleReference, cfg: ModuleConfig, chunk: int) -> list[str]:
    """The saved reference programs, loaded back, against the eager model on one non-zero-state call."""
    import numpy as np
    from ...cases import random_inputs

    class _M:  # the shape of a manifest that ModuleReference.load reads
        folder, reference = tmp, entries
        _fix_hint = staticmethod(lambda: "please report this")
    _M.cfg = cfg
    loaded = ModuleReference.load(_M)
    feeds = random_inputs(cfg, 2, chunk + 3, True, np.random.default_rng(5))
    problems = []
    for what, a, b in (("prefill", loaded.reference_outputs("prefill", feeds), ref.reference_outputs("prefill", feeds)),
                       ("positions", loaded.positions_outputs(feeds), ref.positions_outputs(feeds))):
        for k in b:
            err = rel_l2(a[k], b[k])
            if not err <= 1e-12:
                problems.append(f"reference/{what}.pt2: {k} differs from the eager model (relative L2 {err:.1e})")
    return problems
