"""LRU layers for your own PyTorch models, and converters from the public PyTorch LRU implementations.

    from lru_deploy.nn import LRU, Pool
    self.lru = LRU(64, 128)          # [batch, seq, 64] -> [batch, seq, 64], the paper's layer
    self.pool = Pool("mean")         # [batch, seq, d] -> [batch, d]: mean over time (or "last")

`LRU` is the native layer of lru_deploy.model (same parameter names, `nu_log, theta_log, gamma_log, B_re, B_im,
C_re, C_im, D`, same math) with the paper's initialisation (appendix A) and a one-argument forward. A model built
from these layers and position-wise PyTorch modules exports with `lru_deploy.export_module`.

State. Each LRU layer's state is real float [batch, 2, d_hidden] (planes: real, imaginary part). Eagerly the
layers start from zeros; inside `carrying(model, states)` each layer starts from the state given under its
name and leaves its final state there, which is how export_module runs the eager model as a stateful
reference. `Pool("mean")` carries a running sum and count the same way, so that a sequence split into calls
pools exactly like the whole.

Converting: `from_module(layer)` returns an `LRU` holding the weights of an LRU layer of Gothos LRU-pytorch
(`LRU_pytorch.LRU`), lrnnx (`lrnnx.models.lti.LRU`) or lru-reduction (`lru.linear.LRU`), recognised by its
parameters, and checks by running both on the same input that the outputs agree; `swap(model)` replaces every
such layer inside a model.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from types import SimpleNamespace
from typing import Iterator, Optional

import torch
from torch import nn

from . import model as _native
from .errors import ConfigError, ExportError

POOLS = ("mean", "last")
# True while export_module traces a model: the layers then call the custom ops below, which the ONNX exporter
# turns into placeholder nodes and torch.export keeps as calls (the reference program).
_TRACING: contextvars.ContextVar[bool] = contextvars.ContextVar("lru_deploy_tracing", default=False)


# ---------------------------------------------------------------- the math, shared by the eager layer and the ops

def _lru_apply(x: torch.Tensor, h0: Optional[torch.Tensor], params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The native LRU math (lru_deploy.model.LRU.forward) on explicit parameters.

    x [B, T, H_in]; h0 real [B, 2, N] or None (zeros). Returns (y [B, T, H_out], final state real [B, 2, N])."""
    ns = SimpleNamespace(**params, skip="diagonal" if params["D"].dim() == 1 else "full", bias=False)
    ns.lam_pow = lambda k: _native.LRU.lam_pow(ns, k)
    N = params["nu_log"].shape[0]
    cdt = torch.complex128 if params["B_re"].dtype == torch.float64 else torch.complex64
    if h0 is None:
        h0c = torch.zeros(x.shape[0], N, dtype=cdt)
    else:
        h0c = torch.complex(h0[:, 0].to(params["B_re"].dtype), h0[:, 1].to(params["B_re"].dtype))
    y, hT = _native.LRU.forward(ns, x, h0c, "parallel")
    return y.to(x.dtype), torch.stack([hT.real, hT.imag], dim=1).to(x.dtype)


_PARAMS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")


@torch.library.custom_op("lru_deploy::lru", mutates_args=())
def lru_op(x: torch.Tensor, h0: torch.Tensor, nu_log: torch.Tensor, theta_log: torch.Tensor,
           gamma_log: torch.Tensor, B_re: torch.Tensor, B_im: torch.Tensor, C_re: torch.Tensor, C_im: torch.Tensor,
           D: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One LRU layer over a sequence from state h0 [B, 2, N]: (y [B, T, H_out], final state [B, 2, N]).
    `layer` numbers the layer in the model (export_module's placeholder nodes carry it)."""
    params = dict(zip(_PARAMS, (nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D)))
    y, h = _lru_apply(x, h0, params)
    return y.contiguous(), h.contiguous()


@lru_op.register_fake
def _lru_fake(x, h0, nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D, layer):
    return x.new_empty(tuple(x.shape[:-1]) + (C_re.shape[0],)), torch.empty_like(h0)


@torch.library.custom_op("lru_deploy::mean_pool", mutates_args=())
def mean_pool_op(x: torch.Tensor, pool_sum: torch.Tensor, pool_count: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over time with a running sum [B, d] and count [B, 1]: (mean [B, d], new sum, new count)."""
    s = pool_sum + x.sum(dim=1)
    c = pool_count + x.shape[1]
    return s / c, s, c


@mean_pool_op.register_fake
def _mean_pool_fake(x, pool_sum, pool_count):
    return torch.empty_like(pool_sum), torch.empty_like(pool_sum), torch.empty_like(pool_count)


@torch.library.custom_op("lru_deploy::last_pool", mutates_args=())
def last_pool_op(x: torch.Tensor) -> torch.Tensor:
    """The last position [B, d] of x [B, T, d]."""
    return x[:, -1].clone()


@last_pool_op.register_fake
def _last_pool_fake(x):
    return x.new_empty((x.shape[0],) + tuple(x.shape[2:]))


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """Inside, LRU and Pool layers call their custom ops (for torch.export and torch.onnx.export)."""
    tok = _TRACING.set(True)
    try:
        yield
    finally:
        _TRACING.reset(tok)


# ---------------------------------------------------------------- the layers

class LRU(_native.LRU):
    """The paper's LRU layer: x [batch, seq, d_model] -> y [batch, seq, d_output (= d_model)].

        lambda = exp(-exp(nu_log) + i exp(theta_log));  x_k = lambda x_{k-1} + (B_re + i B_im) exp(gamma_log) u_k
        y_k = Re((C_re + i C_im) x_k) + D u_k

    Initialised as in Orvieto et al. 2023, appendix A: |lambda| uniform on the ring [r_min, r_max], arg(lambda)
    uniform in [0, max_phase), gamma_log = log sqrt(1 - |lambda|^2), B ~ N(0, 1/(2 d_model)) per part,
    C ~ N(0, 1/d_hidden) per part, D ~ N(0, 1). `skip="full"` makes D a (d_output, d_model) matrix and
    `d_output` may differ from d_model (the layouts of Gothos LRU-pytorch and lru-reduction).
    """

    def __init__(self, d_model: int, d_hidden: int, r_min: float = 0.0, r_max: float = 1.0,
                 max_phase: float = 2 * math.pi, *, skip: str = "diagonal", d_output: Optional[int] = None):
        problems = []
        for name, v in (("d_model", d_model), ("d_hidden", d_hidden)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not (0 <= r_min < r_max <= 1):
            problems.append(f"need 0 <= r_min < r_max <= 1, got r_min={r_min!r}, r_max={r_max!r}")
        if not (0 < max_phase <= 2 * math.pi + 1e-9):
            problems.append(f"max_phase must be in (0, 2*pi], got {max_phase!r}")
        if skip not in ("diagonal", "full"):
            problems.append(f"skip must be diagonal or full, got {skip!r}")
        d_output = d_model if d_output is None else d_output
        if d_output != d_model and skip == "diagonal":
            problems.append(f"d_output {d_output} != d_model {d_model} needs skip='full'")
        if problems:
            raise ConfigError("invalid LRU layer:", "fix the arguments named above", problems)
        super().__init__(d_model, d_hidden, skip, d_out=d_output)
        self.d_model, self.d_hidden, self.d_output = d_model, d_hidden, d_output
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.reset_parameters()
        self._carry: Optional[dict] = None  # set by `carrying`: {"state": [B, 2, N] in, final state out}
        self._layer = 0  # the layer's number in a traced model (export_module sets it)

    def reset_parameters(self) -> None:
        H, N = self.d_model, self.d_hidden
        with torch.no_grad():
            u1 = torch.rand(N, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
            u2 = torch.rand(N, dtype=torch.float64).clamp_min(1e-7)
            nu_log = torch.log(-0.5 * torch.log(u1 * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2))
            mod = torch.exp(-torch.exp(nu_log))
            self.nu_log.copy_(nu_log)
            self.theta_log.copy_(torch.log(self.max_phase * u2))
            self.gamma_log.copy_(torch.log(torch.sqrt(1 - mod ** 2)))
            self.B_re.copy_(torch.randn(N, H) / math.sqrt(2 * H))
            self.B_im.copy_(torch.randn(N, H) / math.sqrt(2 * H))
            self.C_re.copy_(torch.randn(self.C_re.shape) / math.sqrt(N))
            self.C_im.copy_(torch.randn(self.C_im.shape) / math.sqrt(N))
            self.D.copy_(torch.randn(self.D.shape) / (1 if self.skip == "diagonal" else math.sqrt(H)))

    def extra_repr(self) -> str:
        out = f", d_output={self.d_output}" if self.d_output != self.d_model else ""
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}{out}, skip={self.skip!r}"

    def forward(self, x: torch.Tensor, h0=None, mode: str = "parallel"):
        if h0 is not None:  # the native two-argument form: (u, h0 complex [B, N]) -> (y, x_last complex)
            return super().forward(x, h0, mode)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"LRU expects [batch, seq, {self.d_model}], got {list(x.shape)}")
        carry = self._carry
        state = None if carry is None else carry.get("state")
        if _TRACING.get():
            if state is None:
                state = x.new_zeros(x.shape[0], 2, self.d_hidden)
            y, h = torch.ops.lru_deploy.lru(x, state, *(getattr(self, p) for p in _PARAMS), self._layer)
        else:
            y, h = _lru_apply(x, state, {p: getattr(self, p) for p in _PARAMS})
        if carry is not None:
            carry["state"] = h
        return y


class Pool(nn.Module):
    """Pooling over time, [batch, seq, d] -> [batch, d]: "mean" (with a running sum and count, so a sequence
    split into calls pools like the whole) or "last" (the last position). The modules after it see one vector
    per sequence; export_module's step graph then returns what the model returns after each new position."""

    def __init__(self, kind: str = "mean"):
        super().__init__()
        if kind not in POOLS:
            raise ConfigError(f"Pool kind must be one of {', '.join(POOLS)}, got {kind!r}")
        self.kind = kind
        self._carry: Optional[dict] = None  # set by `carrying`: {"pool_sum", "pool_count", "positions"}

    def extra_repr(self) -> str:
        return repr(self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"Pool expects [batch, seq, d], got {list(x.shape)}")
        carry = self._carry or {}
        if carry.get("positions"):  # every prefix's pooled value [batch, seq, d] (the reference of a step run)
            if self.kind == "last":
                return x
            count = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
            s0 = carry.get("pool_sum")
            c0 = carry.get("pool_count")
            s0 = torch.zeros_like(x[:, 0]) if s0 is None else s0
            c0 = torch.zeros_like(x[:, 0, :1]) if c0 is None else c0
            return (s0[:, None] + x.cumsum(1)) / (c0[:, None] + count)
        if self.kind == "last":
            return torch.ops.lru_deploy.last_pool(x) if _TRACING.get() else x[:, -1]
        s0 = carry.get("pool_sum")
        c0 = carry.get("pool_count")
        s0 = x.new_zeros(x.shape[0], x.shape[2]) if s0 is None else s0
        c0 = x.new_zeros(x.shape[0], 1) if c0 is None else c0
        if _TRACING.get():
            y, s, c = torch.ops.lru_deploy.mean_pool(x, s0, c0)
        else:
            s = s0 + x.sum(dim=1)
            c = c0 + x.shape[1]
            y = s / c
        if self._carry is not None:
            self._carry.update(pool_sum=s, pool_count=c)
        return y


# ---------------------------------------------------------------- running a model with state

def lru_layers(model: nn.Module) -> list[tuple[str, LRU]]:
    """(qualified name, layer) of every lru_deploy.nn.LRU in the model, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LRU)]


def pool_layers(model: nn.Module) -> list[tuple[str, Pool]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Pool)]


@contextlib.contextmanager
def carrying(model: nn.Module, states: Optional[dict] = None, positions: bool = False) -> Iterator[dict]:
    """Run `model` with state: each LRU layer named `name` starts from states[name] ([B, 2, N]; absent: zeros)
    and a Pool from states["pool_sum"], states["pool_count"]. The dict yielded holds the final states under the
    same names once the model has run. positions=True makes a Pool return every prefix's value [B, seq, d]."""
    states = dict(states or {})
    out: dict = {}
    layers = lru_layers(model)
    pools = pool_layers(model)
    try:
        for name, m in layers:
            m._carry = {"state": states.get(name)}
        for _, p in pools:
            p._carry = {"pool_sum": states.get("pool_sum"), "pool_count": states.get("pool_count"),
                        "positions": positions}
        yield out
        for name, m in layers:
            out[name] = m._carry["state"]
        for _, p in pools:
            if p.kind == "mean" and not positions:
                out.update(pool_sum=p._carry["pool_sum"], pool_count=p._carry["pool_count"])
    finally:
        for _, m in layers:
            m._carry = None
        for _, p in pools:
            p._carry = None


# ---------------------------------------------------------------- converting other implementations

def _recognise(layer: nn.Module) -> Optional[str]:
    """Which public layout `layer` has: 'native' (split real/imaginary parameters: lrnnx, lru_deploy.model),
    'complex' (complex B and C, full D: Gothos LRU-pytorch, lru-reduction), or None."""
    p = dict(layer.named_parameters(recurse=False))
    if not all(k in p for k in ("nu_log", "theta_log", "gamma_log", "D")):
        return None
    if all(k in p for k in ("B_re", "B_im", "C_re", "C_im")):
        return "native"
    if "B" in p and "C" in p and p["B"].is_complex() and p["C"].is_complex():
        return "complex"
    return None


def from_module(layer: nn.Module, check: bool = True, seed: int = 0) -> LRU:
    """An lru_deploy.nn.LRU with the weights of `layer` (Gothos LRU-pytorch, lrnnx or lru-reduction LRU, or
    lru_deploy.model.LRU). check=True runs both on one random input [2, 9, d_in] and raises ConfigError unless
    the outputs agree (relative L2 <= 1e-5 against float64, or 1e-4 for a float32-only source)."""
    if isinstance(layer, LRU):
        return layer
    kind = _recognise(layer)
    if kind is None:
        names = ", ".join(n for n, _ in layer.named_parameters(recurse=False)) or "none"
        raise ConfigError(f"{type(layer).__module__}.{type(layer).__qualname__} is not an LRU layer lru-deploy "
                          f"knows (its parameters: {names})",
                          "from_module converts Gothos LRU-pytorch, lrnnx and lru-reduction LRU layers: "
                          "nu_log, theta_log, gamma_log and D with B_re/B_im/C_re/C_im or complex B and C")
    f = lambda t: t.detach().to(torch.float64)  # noqa: E731
    p = dict(layer.named_parameters(recurse=False))
    if kind == "native":
        B_re, B_im, C_re, C_im = f(p["B_re"]), f(p["B_im"]), f(p["C_re"]), f(p["C_im"])
    else:
        B, C = p["B"].detach().to(torch.complex128), p["C"].detach().to(torch.complex128)
        B_re, B_im, C_re, C_im = B.real, B.imag, C.real, C.imag
    N, H_in = B_re.shape
    H_out = C_re.shape[0]
    D = f(p["D"])
    problems = []
    if D.dim() == 1 and (D.shape[0] != H_in or H_out != H_in):
        problems.append(f"diagonal D has {D.shape[0]} entries for d_in {H_in}, d_out {H_out}")
    if D.dim() == 2 and tuple(D.shape) != (H_out, H_in):
        problems.append(f"D is {list(D.shape)}, want [{H_out}, {H_in}]")
    if tuple(C_re.shape) != (H_out, N) or any(p[k].shape[0] != N for k in ("nu_log", "theta_log", "gamma_log")):
        problems.append(f"B is [{N}, {H_in}] but C is {list(C_re.shape)} and nu_log {list(p['nu_log'].shape)}")
    if problems:
        raise ConfigError(f"cannot convert {type(layer).__qualname__}:", "the layer's shapes are inconsistent",
                          problems)
    dtype = p["nu_log"].dtype
    out = LRU(H_in, N, skip="diagonal" if D.dim() == 1 else "full", d_output=H_out)
    with torch.no_grad():
        for name, v in (("nu_log", f(p["nu_log"])), ("theta_log", f(p["theta_log"])),
                        ("gamma_log", f(p["gamma_log"])), ("B_re", B_re), ("B_im", B_im), ("C_re", C_re),
                        ("C_im", C_im), ("D", D)):
            getattr(out, name).copy_(v)
    out = out.to(dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    out.train(layer.training)
    if check:
        _check_same(layer, out, H_in, seed)
    return out


def _check_same(src: nn.Module, ours: LRU, d_in: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, d_in, generator=g)
    with torch.no_grad():
        try:
            want = src(x.to(src.nu_log.dtype))
        except (RuntimeError, TypeError, ValueError) as e:
            raise ConfigError(f"cannot run {type(src).__qualname__} to verify the conversion: {e}",
                              "pass check=False to convert without verifying") from None
        if isinstance(want, tuple):
            want = want[0]
        ref = copy.deepcopy(ours).double()(x.double())
    want = want.detach().to(torch.float64)
    if want.shape != ref.shape:
        raise ConfigError(f"{type(src).__qualname__} returned {list(want.shape)}, the converted layer "
                          f"{list(ref.shape)}", "this layer's forward is not the LRU recurrence lru-deploy knows")
    err = float((want - ref).norm() / ref.norm().clamp_min(1e-30))
    bound = 1e-5 if src.nu_log.dtype == torch.float64 else 1e-4
    if not err <= bound:
        raise ConfigError(f"{type(src).__qualname__} and the converted layer disagree: relative L2 {err:.1e} > "
                          f"{bound:.0e} on a random input",
                          "the layer computes something other than the paper's LRU (an output delay, another "
                          "normalisation of B?); it cannot be converted as it is")


def swap(model: nn.Module, check: bool = True) -> list[str]:
    """Replace, in place, every LRU layer of a known public implementation inside `model` with
    lru_deploy.nn.LRU (same weights, verified by `from_module`). Returns the qualified names replaced."""
    swapped = []
    for name, mod in list(model.named_modules()):
        if not name or isinstance(mod, LRU) or _recognise(mod) is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, from_module(mod, check=check))
        swapped.append(name)
    if not swapped and _recognise(model) is not None:
        raise ExportError("the model itself is an LRU layer: swap replaces layers inside a model",
                          "use lru_deploy.nn.from_module(layer) for a single layer")
    return swapped
