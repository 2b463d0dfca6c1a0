"""The reference LRU model (Orvieto et al. 2023), the ground truth every artifact is judged against.

One LRU layer (state size N = d_hidden, width H = d_model), as in Orvieto et al. 2023:

    lambda = exp(-exp(nu_log) + i*exp(theta_log))          (N,) complex, |lambda| < 1
    B_norm = (B_re + i*B_im) * exp(gamma_log)[:, None]      (N, H) complex
    x_k    = lambda * x_{k-1} + B_norm @ u_k               x_{-1} = h0 (zeros by default)
    y_k    = Re((C_re + i*C_im) @ x_k) + D * u_k           D: (H,) or a full (H, H) matrix

The reference computes in complex arithmetic. `LRUModel(cfg).double()` is the float64/complex128 gold
standard used by parity checks. It has a sequential form (a plain loop over positions) and a parallel
form (Hillis-Steele doubling over positions); both are written here, independently of the export path.
Powers of lambda are always formed in float64 from the parameters, then cast to the compute type, so the
float32 mode does not carry lambda's float32 rounding into lambda^k.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

NORMS = ("layer", "batch", "none")
GELUS = ("exact", "tanh")
SKIPS = ("diagonal", "full")
POOLINGS = ("none", "last", "mean")


@dataclass(frozen=True)
class LRUConfig:
    # Inputs: exactly one of vocab_size (token ids int64 [batch, seq]) or d_input (float32 [batch, seq, d_input]).
    vocab_size: Optional[int] = 256  # byte-level tokens: any text encodes, no tokenizer file to ship
    d_input: Optional[int] = None
    d_model: int = 128  # H: width of the residual stream; B is (N, H), C is (H, N)
    d_hidden: int = 128  # N: complex state per layer; the contract's state is [batch, n_layers, 2, N]
    n_layers: int = 4
    d_output: int = 256  # decoder width: logits over the 256 bytes for the default language model
    norm: str = "layer"  # layer | batch | none; batch is an affine map at inference
    prenorm: bool = True  # minimal-LRU default; older minimal-LRU checkpoints are always pre-norm
    norm_eps: float = 1e-5  # torch's default; Flax LayerNorm uses 1e-6 (the importer sets it)
    gelu: str = "exact"  # exact (erf) | tanh (Flax's nn.gelu default)
    skip: str = "diagonal"  # diagonal D (H,) as in the paper | full D (H, H) as several PyTorch ports
    pooling: str = "none"  # none | last | mean, over time
    log_softmax: bool = False  # applied to the decoder output (minimal-LRU's classifier does)
    r_min: float = 0.0  # |lambda| initialised uniformly on the ring [r_min, r_max] (paper appendix A)
    r_max: float = 1.0
    max_phase: float = 2 * math.pi  # arg(lambda) initialised in [0, max_phase)
    dropout: float = 0.0  # training only; inference ignores it

    @property
    def tokens(self) -> bool:
        return self.vocab_size is not None

    def problems(self) -> list[str]:
        """Every problem with this config, empty when it is valid."""
        out = []
        if (self.vocab_size is None) == (self.d_input is None):
            out.append("exactly one of vocab_size (token model) and d_input (continuous inputs) must be set")
        for name in ("vocab_size", "d_input"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                out.append(f"{name} must be a positive integer, got {v!r}")
        for name in ("d_model", "d_hidden", "n_layers", "d_output"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                out.append(f"{name} must be a positive integer, got {v!r}")
        for name, allowed in (("norm", NORMS), ("gelu", GELUS), ("skip", SKIPS), ("pooling", POOLINGS)):
            if getattr(self, name) not in allowed:
                out.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("prenorm", "log_softmax"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (_is_num(self.norm_eps) and 0 < self.norm_eps < 1):
            out.append(f"norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if not (_is_num(self.r_min) and _is_num(self.r_max) and 0 <= self.r_min < self.r_max <= 1):
            out.append(f"need 0 <= r_min < r_max <= 1, got r_min={self.r_min!r}, r_max={self.r_max!r}")
        if not (_is_num(self.max_phase) and 0 < self.max_phase <= 2 * math.pi + 1e-9):
            out.append(f"max_phase must be in (0, 2*pi], got {self.max_phase!r}")
        if not (_is_num(self.dropout) and 0 <= self.dropout < 1):
            out.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        return out

    def validate(self) -> "LRUConfig":
        probs = self.problems()
        if probs:
            raise ConfigError("invalid model config:", "fix the fields named above in config.json", probs)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LRUConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(d).__name__}",
                              "write the config as {\"d_model\": 128, ...}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        d = {k: v for k, v in d.items() if k in known}
        if "d_input" in d and d.get("d_input") is not None and "vocab_size" not in d:
            d["vocab_size"] = None  # a continuous model need not spell out vocab_size: null
        problems = [f"unknown config field {k!r}" for k in unknown] + cls(**d).problems()
        if problems:
            raise ConfigError("invalid model config:", f"known fields: {', '.join(sorted(known))}", problems)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LRUConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}", "fix the JSON syntax at the position named") from None
        return cls.from_dict(d)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class LRUOutput(NamedTuple):
    outputs: torch.Tensor  # [batch, seq, d_output] (pooling none) or [batch, d_output]
    state: torch.Tensor  # real [batch, n_layers, 2, d_hidden]: [:, l, 0] real part, [:, l, 1] imaginary part
    pool_sum: Optional[torch.Tensor] = None  # [batch, d_model], pooling mean only
    pool_count: Optional[torch.Tensor] = None  # [batch, 1], pooling mean only


class Norm(nn.Module):
    """LayerNorm, inference-time BatchNorm (an affine map from running statistics) or identity, over the last axis."""

    def __init__(self, kind: str, d: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind in ("layer", "batch"):
            self.weight = nn.Parameter(torch.ones(d))
            self.bias = nn.Parameter(torch.zeros(d))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(d))
            self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        if self.kind == "batch":
            return (x - self.running_mean) / torch.sqrt(self.running_var + self.eps) * self.weight + self.bias
        return x


class LRU(nn.Module):
    """One LRU layer. `forward(u [B,T,H] real, h0 [B,N] complex) -> (y [B,T,H] real, x_last [B,N] complex)`."""

    def __init__(self, d_model: int, d_hidden: int, skip: str = "diagonal"):
        super().__init__()
        H, N = d_model, d_hidden
        self.nu_log = nn.Parameter(torch.zeros(N))
        self.theta_log = nn.Parameter(torch.zeros(N))
        self.gamma_log = nn.Parameter(torch.zeros(N))
        self.B_re = nn.Parameter(torch.zeros(N, H))
        self.B_im = nn.Parameter(torch.zeros(N, H))
        self.C_re = nn.Parameter(torch.zeros(H, N))
        self.C_im = nn.Parameter(torch.zeros(H, N))
        self.D = nn.Parameter(torch.zeros(H) if skip == "diagonal" else torch.zeros(H, H))
        self.skip = skip

    def lam_pow(self, k: int) -> torch.Tensor:
        """lambda**k, computed in float64 from the parameters and cast to the compute type."""
        mod = torch.exp(-k * torch.exp(self.nu_log.double()))
        ang = k * torch.exp(self.theta_log.double())
        return torch.polar(mod, ang).to(_cdtype(self.nu_log.dtype))

    def forward(self, u: torch.Tensor, h0: torch.Tensor, mode: str = "parallel"):
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C_re, self.C_im)
        bu = u.to(B.dtype) @ B.T  # [batch, T, N]
        if mode == "sequential":
            xs = _scan_sequential(self.lam_pow(1), bu, h0)
        elif mode == "parallel":
            xs = _scan_parallel(self.lam_pow, bu, h0)
        else:
            raise ValueError(f"mode must be 'sequential' or 'parallel', got {mode!r}")
        y = (xs @ C.T).real
        y = y + (u * self.D if self.skip == "diagonal" else u @ self.D.T)
        return y, xs[:, -1]


def _scan_sequential(lam: torch.Tensor, bu: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """x_t = lam * x_{t-1} + bu_t, one position at a time."""
    x, xs = h0, []
    for t in range(bu.shape[1]):
        x = lam * x + bu[:, t]
        xs.append(x)
    return torch.stack(xs, dim=1)


def _scan_parallel(lam_pow, bu: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The same recurrence by doubling: after the step with shift s, x_t sums the 2s inputs ending at t."""
    T = bu.shape[1]
    first = bu[:, :1] + (lam_pow(1) * h0)[:, None]
    x = torch.cat([first, bu[:, 1:]], dim=1)
    shift = 1
    while shift < T:
        zeros = torch.zeros_like(x[:, :shift])
        x = x + torch.cat([zeros, lam_pow(shift) * x[:, :-shift]], dim=1)
        shift *= 2
    return x


def _cdtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class Block(nn.Module):
    def __init__(self, cfg: LRUConfig):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.approximate = "tanh" if cfg.gelu == "tanh" else "none"
        self.norm = Norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lru = LRU(cfg.d_model, cfg.d_hidden, cfg.skip)
        self.out1 = nn.Linear(cfg.d_model, cfg.d_model)
        self.out2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, u: torch.Tensor, h0: torch.Tensor, mode: str):
        x = self.norm(u) if self.prenorm else u
        x, h = self.lru(x, h0, mode)
        x = self.drop(F.gelu(x, approximate=self.approximate))
        x = self.out1(x) * torch.sigmoid(self.out2(x))
        u = u + self.drop(x)
        if not self.prenorm:
            u = self.norm(u)
        return u, h


class LRUModel(nn.Module):
    """The deep LRU network. Parameter names are the native checkpoint's keys (see checkpoints.py)."""

    def __init__(self, cfg: LRUConfig):
        super().__init__()
        self.cfg = cfg.validate()
        if cfg.tokens:
            self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        else:
            self.encoder = nn.Linear(cfg.d_input, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.weight.dtype

    def zero_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.n_layers, 2, self.cfg.d_hidden, dtype=self.dtype)

    def forward(self, inputs: torch.Tensor, state: Optional[torch.Tensor] = None,
                pool_sum: Optional[torch.Tensor] = None, pool_count: Optional[torch.Tensor] = None,
                mode: str = "parallel", prefill_outputs: str = "all") -> LRUOutput:
        """Run a whole sequence. inputs: int64 [batch, seq] or float [batch, seq, d_input]."""
        cfg = self.cfg
        u = self.embedding(inputs) if cfg.tokens else self.encoder(inputs.to(self.dtype))
        batch, seq = u.shape[:2]
        state = self.zero_state(batch) if state is None else state.to(self.dtype)
        h0 = torch.complex(state[:, :, 0], state[:, :, 1])  # [batch, L, N]
        finals = []
        for i, layer in enumerate(self.layers):
            u, h = layer(u, h0[:, i], mode)
            finals.append(h)
        h = torch.stack(finals, dim=1)
        new_state = torch.stack([h.real, h.imag], dim=2)
        if cfg.pooling == "mean":
            zeros = torch.zeros(batch, 1, dtype=self.dtype)
            pool_sum = (0 if pool_sum is None else pool_sum.to(self.dtype)) + u.sum(dim=1)
            pool_count = (zeros if pool_count is None else pool_count.to(self.dtype)) + seq
            out = self.decoder(pool_sum / pool_count)
        elif cfg.pooling == "last" or prefill_outputs == "last":
            pool_sum = pool_count = None
            out = self.decoder(u[:, -1])
        else:
            pool_sum = pool_count = None
            out = self.decoder(u)
        if cfg.log_softmax:
            out = F.log_softmax(out, dim=-1)
        return LRUOutput(out, new_state, pool_sum, pool_count)

    def step(self, inputs: torch.Tensor, state: Optional[torch.Tensor] = None,
             pool_sum: Optional[torch.Tensor] = None, pool_count: Optional[torch.Tensor] = None) -> LRUOutput:
        """Advance one position. inputs: int64 [batch] or float [batch, d_input]; outputs [batch, d_output]."""
        res = self.forward(inputs[:, None], state, pool_sum, pool_count, mode="sequential", prefill_outputs="last")
        return res


def init_parameters(model: LRUModel, seed: int = 0) -> LRUModel:
    """Paper appendix A initialisation for the LRU; torch defaults for Linear layers; N(0, 1) embeddings."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    H, N = cfg.d_model, cfg.d_hidden
    with torch.no_grad():
        for p in model.parameters():  # deterministic Linear init from the seed, torch's default scale
            if p.dim() == 2:
                bound = 1 / math.sqrt(p.shape[1])
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=g))
            else:
                p.zero_()
        if cfg.tokens:
            model.embedding.weight.copy_(torch.randn(cfg.vocab_size, H, generator=g))
        for layer in model.layers:
            if cfg.norm != "none":
                layer.norm.weight.fill_(1.0)
            lru = layer.lru
            u1 = torch.rand(N, generator=g, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
            u2 = torch.rand(N, generator=g, dtype=torch.float64).clamp_min(1e-7)
            nu_log = torch.log(-0.5 * torch.log(u1 * (cfg.r_max ** 2 - cfg.r_min ** 2) + cfg.r_min ** 2))
            theta_log = torch.log(cfg.max_phase * u2)
            mod = torch.exp(-torch.exp(nu_log))
            lru.nu_log.copy_(nu_log)
            lru.theta_log.copy_(theta_log)
            lru.gamma_log.copy_(torch.log(torch.sqrt(1 - mod ** 2)))
            lru.B_re.copy_(torch.randn(N, H, generator=g) / math.sqrt(2 * H))
            lru.B_im.copy_(torch.randn(N, H, generator=g) / math.sqrt(2 * H))
            lru.C_re.copy_(torch.randn(H, N, generator=g) / math.sqrt(N))
            lru.C_im.copy_(torch.randn(H, N, generator=g) / math.sqrt(N))
            lru.D.copy_(torch.randn(lru.D.shape, generator=g) / (1 if cfg.skip == "diagonal" else math.sqrt(H)))
    return model


def gold(model: LRUModel) -> LRUModel:
    """A float64/complex128 copy of the model: the gold standard for parity."""
    m = LRUModel(model.cfg)
    m.load_state_dict(model.state_dict())
    return m.double().eval()
