"""Finding the module that mixes positions: prefill on a sequence against steps position by position.

A model can have a step graph only if every module outside its LRU layers acts on each position alone (Pool
carries its own running state). Run once over a whole sequence and once position by position (state carried,
inside `lru_deploy.nn.carrying`), every module call sees, position for position, the same inputs and must give
the same outputs. A tensor that has the sequence axis (size seq in the whole run, 1 in the steps) is compared
along it; one without is compared with the last step's value. The module that breaks this first, in the order
of the calls, whose tensor inputs all agreed, is the culprit: the innermost such module, or the model itself
when the mixing happens in a function call of its forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ...nn import LRU, Pool, carrying

RTOL = 1e-7  # float64 throughout: position-wise modules agree to rounding


@dataclass
class Call:
    module: str
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _record(model: nn.Module, x: torch.Tensor, states: dict) -> tuple[list, dict, object]:
    calls: list[Call] = []
    names = {m: n for n, m in model.named_modules()}

    def pre(mod, args, kwargs):
        c = Call(names.get(mod, type(mod).__name__), [t.detach().clone() for t in _tensors((args, kwargs))])
        calls.append(c)
        return None

    def post(mod, args, kwargs, out):
        c = [c for c in calls if c.module == names.get(mod) and not c.outputs]
        if c:
            c[-1].outputs = [t.detach().clone() for t in _tensors(out)]
        return None

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad(), carrying(model, states) as out:
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return calls, dict(out), y


def _agree(whole: torch.Tensor, steps: list, seq: int) -> bool:
    """Whole-sequence tensor against the per-step tensors (see the module docstring)."""
    if not steps or any(s.shape != steps[0].shape for s in steps) or whole.dtype != steps[0].dtype:
        return False
    w, s = whole, steps[0]
    if w.dim() == s.dim():
        axes = [a for a in range(w.dim()) if w.shape[a] == seq and s.shape[a] == 1
                and all(w.shape[b] == s.shape[b] for b in range(w.dim()) if b != a)]
        if axes:
            got = torch.cat(steps, dim=axes[0])
            return _close(w, got)
        if w.shape == s.shape:
            return _close(w, steps[-1])
    return False


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point() and not a.is_complex():
        return bool(torch.equal(a, b))
    scale = float(a.abs().max()) if a.numel() else 0.0
    return bool((a - b).abs().max() <= RTOL * max(scale, 1.0)) if a.numel() else True


def find_mixing(model64: nn.Module, x: torch.Tensor) -> Optional[str]:
    """None when the model acts position by position (LRU and Pool state aside); otherwise a sentence naming
    the module that mixes positions. x: [batch, seq(, ...)] with seq >= 2, float64 or int64."""
    seq = x.shape[1]
    whole, _, y_whole = _record(model64, x, {})
    steps, states, ys = [], {}, []
    for t in range(seq):
        calls, states, y = _record(model64, x[:, t:t + 1], states)
        steps.append(calls)
        ys.append(y)
    if any(len(c) != len(whole) or [k.module for k in c] != [k.module for k in whole] for c in steps):
        return ("the model calls its modules differently for a whole sequence and for one position (control "
                "flow that depends on the sequence length)")
    culprits = []
    for i, call in enumerate(whole):
        if call.module and isinstance(model64.get_submodule(call.module), (LRU, Pool)):
            continue  # these carry state; their agreement is the point of the state
        ins_ok = all(_agree(w, [s[i].inputs[k] for s in steps], seq) for k, w in enumerate(call.inputs))
        outs_ok = all(_agree(w, [s[i].outputs[k] for s in steps], seq) for k, w in enumerate(call.outputs))
        if ins_ok and not outs_ok:
            culprits.append(call)
    if not culprits:
        if all(_agree(w, [_tensors(y)[k] for y in ys], seq) for k, w in enumerate(_tensors(y_whole))):
            return None
        return (f"{type(model64).__name__}.forward mixes positions outside its submodules (a cumsum, a reduction "
                f"or an index over the sequence axis in its own code)")
    # the innermost culprit among those of the first call that failed: its children did not fail
    first = culprits[0]
    inner = [c for c in culprits if c.module.startswith(first.module + ".") or not first.module] or [first]
    c = max(inner, key=lambda k: k.module.count(".") + (1 if k.module else 0))
    if not c.module:
        return (f"{type(model64).__name__}.forward mixes positions outside its submodules (a cumsum, a reduction "
                f"or an index over the sequence axis in its own code)")
    mod = model64.get_submodule(c.module)
    return f"module {c.module!r} ({type(mod).__name__}) mixes positions"
