"""The reference LRU model (Orvieto et al. 2023), the ground truth every artifact is judged against.

One LRU layer (state size N = d_hidden, width H = d_model), as in Orvieto et al. 2023:

    lambda = exp(-exp(nu_log) + i*exp(theta_log))          (N,) complex, |lambda| < 1
    B_norm = (B_re + i*B_im) * exp(gamma_log)[:, None]      (N, H) complex
    x_k    = lambda * x_{k-1} + B_norm @ u_k               x_{-1} = h0 (zeros by default)
    y_k    = Re((C_re + i*C_im) @ x_k) + D * u_k           D: (H,) or a full (H, H) matrix

A block around the layer (LRUConfig says which pieces it has; the defaults are minimal-LRU's block):

    x = norm(u) if prenorm else u
    y = LRU(x)                                      [+ Re(b_C) when lru_bias; the state is driven by
                                                     exp(gamma_log) * (B x + b_B)]
    y = ff(y) unless ff_sublayer                    glu: GLU(GELU(y)); mlp: W2 act(W1 y); none: y
    v = u + y if residual else y;  v = v if prenorm else norm(v)
    if ff_sublayer: w = norm2(v) if prenorm else v;  v = v + ff(w);  v = v if prenorm else norm2(v)

The network: embedding or encoder (or none), [embedding norm], blocks, pooling, decoder ([final norm], a
Linear, the embedding table transposed (tied), or none), [log_softmax].

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

NORMS = ("layer", "rms", "batch", "none")
GELUS = ("exact", "tanh")
SKIPS = ("diagonal", "full", "identity")
POOLINGS = ("none", "last", "mean")
FFS = ("glu", "mlp", "none")
ACTIVATIONS = ("gelu", "relu", "silu")
ENCODERS = ("linear", "none")
DECODERS = ("linear", "tied", "none")


@dataclass(frozen=True)
class LRUConfig:
        # Inputs: exactly one of vocab_size (token ids int64 [batch, seq]) or d_input (float32 [batch, seq, d_input]).
    vocab_size: Optional[int] = 256  # byte-level tokens: any text encodes, no tokenizer file to ship
    d_input: Optional[int] = None
    d_model: int = 128  # H: width of the residual stream; B is (N, H), C is (H, N)
    d_hidden: int = 128  # N: complex state per layer; the contract's state is [batch, n_layers, 2, N]
    n_layers: int = 4
    d_output: int = 256  # decoder width: logits over the 256 bytes for the default language model
    norm: str = "layer"  # layer | rms (x / sqrt(mean(x^2) + eps) * weight: lrnnx's LM) | batch | none; batch is an
        # affine map at inference
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
    # The block and network options below exist for PyTorch ports whose networks differ from minimal-LRU's
    # (lru_deploy.importers.torch_layouts names which port needs which); each default keeps the model above.
    ff: str = "glu"  # glu (GELU, then Linear(H, 2H) + GLU: minimal-LRU, lru-reduction) | mlp (Linear(H, d_ff),
        # activation, Linear(d_ff, H): sysid-pytorch-lru ff='MLP', LRURec) | none (lrnnx's blocks)
    d_ff: Optional[int] = None  # the mlp's hidden width (4 * d_model in sysid-pytorch-lru and LRURec)
    activation: str = "gelu"  # the mlp's activation: gelu (of the kind in `gelu`) | relu | silu
    ff_sublayer: bool = False  # the feed-forward has its own residual and norm (norm2) after the LRU's, as in
        # Transformer blocks (LRURec: x = LN(LRU(x)); x = LN2(x + W2 GELU(W1 x)))
    residual: bool = True  # u + block(u); false where the layer's own skip is the only path (LRURec's identity
        # skip, a bare layer)
    lru_bias: bool = False  # complex biases on the LRU's projections: x_k = lambda x_{k-1} + exp(gamma_log) *
        # (B u_k + b_B), y_k = Re(C x_k + b_C) (LRURec's complex nn.Linear in_proj/out_proj)
    encoder: str = "linear"  # linear | none: continuous inputs enter layer 0 as they are (a bare layer, whose
        # B then is (N, d_input))
    embedding_norm: bool = False  # a norm (kind `norm`) right after the embedding or encoder (LRURec)
    final_norm: bool = False  # a norm (kind `norm`) before the decoder, after pooling (lrnnx's norm_f)
    decoder: str = "linear"  # linear | tied (logits = x E^T with E the embedding table: lrnnx, LRURec) | none
        # (a bare layer: outputs are the last block's, d_output = d_model)
    decoder_bias: bool = True  # the decoder's bias (lrnnx's tied lm_head has none, LRURec's scores have one)

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
        for name, allowed in (("norm", NORMS), ("gelu", GELUS), ("skip", SKIPS), ("pooling", POOLINGS),
                              ("ff", FFS), ("activation", ACTIVATIONS), ("encoder", ENCODERS),
                              ("decoder", DECODERS)):
            if getattr(self, name) not in allowed:
                out.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("prenorm", "log_softmax", "ff_sublayer", "residual", "lru_bias", "embedding_norm",
                     "final_norm", "decoder_bias"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        out += self._layout_problems()
        if not (_is_num(self.norm_eps) and 0 < self.norm_eps < 1):
            out.append(f"norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if not (_is_num(self.r_min) and _is_num(self.r_max) and 0 <= self.r_min < self.r_max <= 1):
            out.append(f"need 0 <= r_min < r_max <= 1, got r_min={self.r_min!r}, r_max={self.r_max!r}")
        if not (_is_num(self.max_phase) and 0 < self.max_phase <= 2 * math.pi + 1e-9):
            out.append(f"max_phase must be in (0, 2*pi], got {self.max_phase!r}")
        if not (_is_num(self.dropout) and 0 <= self.dropout < 1):
            out.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        return out

    def layer_widths(self, i: int) -> tuple[int, int]:
        """(input, output) width of layer i: d_model, except layer 0's input without an encoder (d_input)."""
        return (self.d_input if i == 0 and self.encoder == "none" and not self.tokens else self.d_model,
                self.d_model)

    def _layout_problems(self) -> list[str]:
        out = []
        pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        if self.ff == "mlp" and not pos(self.d_ff):
            out.append(f"ff mlp needs d_ff, its hidden width, a positive integer; got {self.d_ff!r}")
        if self.ff != "mlp" and self.d_ff is not None:
            out.append(f"d_ff is the mlp's width; with ff {self.ff!r} it must be null, got {self.d_ff!r}")
        if self.ff_sublayer and self.ff == "none":
            out.append("ff_sublayer needs a feed-forward (ff glu or mlp)")
        if self.tokens and self.encoder == "none":
            out.append("encoder none is for continuous inputs; a token model always has its embedding")
        if self.decoder == "tied" and not (self.tokens and self.d_output == self.vocab_size):
            out.append("decoder tied needs a token model with d_output == vocab_size (it is the embedding table)")
        if self.decoder == "none":
            if self.d_output != self.d_model:
                out.append(f"decoder none outputs the residual stream: d_output must equal d_model "
                           f"({self.d_model}), got {self.d_output!r}")
            if self.log_softmax or self.final_norm:
                out.append("decoder none has no final_norm and no log_softmax (the outputs are the stream)")
        if self.norm == "none" and (self.embedding_norm or self.final_norm):
            out.append("embedding_norm and final_norm use the kind in `norm`, which is none")
        if self.encoder == "none" and not self.tokens and pos(self.d_input) and pos(self.d_model) \
                and self.d_input != self.d_model:
            if self.residual or self.ff_sublayer or self.embedding_norm or self.skip == "diagonal" \
                    or self.skip == "identity":
                out.append(f"without an encoder layer 0 maps d_input {self.d_input} to d_model {self.d_model}: "
                           f"it can have no residual, no ff_sublayer, no embedding_norm, and a full or no "
                           f"skip (skip full)")
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
    """LayerNorm, RMSNorm, inference-time BatchNorm (an affine map from running statistics) or identity, over
    the last axis."""

    def __init__(self, kind: str, d: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind in ("layer", "batch", "rms"):
            self.weight = nn.Parameter(torch.ones(d))
        if kind in ("layer", "batch"):
            self.bias = nn.Parameter(torch.zeros(d))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(d))
            self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        if self.kind == "rms":  # torch.nn.RMSNorm's formula
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        if self.kind == "batch":
            return (x - self.running_mean) / torch.sqrt(self.running_var + self.eps) * self.weight + self.bias
        return x


class LRU(nn.Module):
    """One LRU layer. `forward(u [B,T,H_in] real, h0 [B,N] complex) -> (y [B,T,H_out] real, x_last [B,N] complex)`.

    skip: diagonal D (H,), full D (H_out, H_in), identity (y += u, no parameter). bias: complex b_B (N,) as
    B_bias_re/B_bias_im, scaled by exp(gamma_log) like B, and the real part of b_C as C_bias (H_out,) (its
    imaginary part never reaches Re(C x + b_C)).
    """

    def __init__(self, d_model: int, d_hidden: int, skip: str = "diagonal", d_out: Optional[int] = None,
                 bias: bool = False):
        super().__init__()
        H, N = d_model, d_hidden
        Ho = H if d_out is None else d_out
        self.nu_log = nn.Parameter(torch.zeros(N))
        self.theta_log = nn.Parameter(torch.zeros(N))
        self.gamma_log = nn.Parameter(torch.zeros(N))
        self.B_re = nn.Parameter(torch.zeros(N, H))
        self.B_im = nn.Parameter(torch.zeros(N, H))
        self.C_re = nn.Parameter(torch.zeros(Ho, N))
        self.C_im = nn.Parameter(torch.zeros(Ho, N))
        if skip in ("diagonal", "full"):
            self.D = nn.Parameter(torch.zeros(H) if skip == "diagonal" else torch.zeros(Ho, H))
        if bias:
            self.B_bias_re = nn.Parameter(torch.zeros(N))
            self.B_bias_im = nn.Parameter(torch.zeros(N))
            self.C_bias = nn.Parameter(torch.zeros(Ho))
        self.skip, self.bias = skip, bias

    def lam_pow(self, k: int) -> torch.Tensor:
        """lambda**k, computed in float64 from the parameters and cast to the compute type."""
        mod = torch.exp(-k * torch.exp(self.nu_log.double()))
        ang = k * torch.exp(self.theta_log.double())
        return torch.polar(mod, ang).to(_cdtype(self.nu_log.dtype))

    def forward(self, u: torch.Tensor, h0: torch.Tensor, mode: str = "parallel"):
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C_re, self.C_im)
        bu = u.to(B.dtype) @ B.T  # [batch, T, N]
        if self.bias:
            bu = bu + torch.complex(self.B_bias_re, self.B_bias_im) * torch.exp(self.gamma_log)
        if mode == "sequential":
            xs = _scan_sequential(self.lam_pow(1), bu, h0)
        elif mode == "parallel":
            xs = _scan_parallel(self.lam_pow, bu, h0)
        else:
            raise ValueError(f"mode must be 'sequential' or 'parallel', got {mode!r}")
        y = (xs @ C.T).real
        if self.bias:
            y = y + self.C_bias
        if self.skip == "diagonal":
            y = y + u * self.D
        elif self.skip == "full":
            y = y + u @ self.D.T
        else:
            y = y + u
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


def _activation(x: torch.Tensor, kind: str, gelu: str) -> torch.Tensor:
    if kind == "relu":
        return F.relu(x)
    if kind == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if gelu == "tanh" else "none")


class Block(nn.Module):
    """One block; see the module docstring. Keys: norm, lru, out1/out2 (glu) or fc1/fc2 (mlp), norm2."""

    def __init__(self, cfg: LRUConfig, index: int = 0):
        super().__init__()
        d_in, d_out = cfg.layer_widths(index)
        self.prenorm, self.residual, self.ff_sublayer = cfg.prenorm, cfg.residual, cfg.ff_sublayer
        self.ff, self.activation, self.gelu = cfg.ff, cfg.activation, cfg.gelu
        self.norm = Norm(cfg.norm, d_in if cfg.prenorm else d_out, cfg.norm_eps)
        self.lru = LRU(d_in, cfg.d_hidden, cfg.skip, d_out, cfg.lru_bias)
        if cfg.ff == "glu":
            self.out1 = nn.Linear(d_out, d_out)
            self.out2 = nn.Linear(d_out, d_out)
        elif cfg.ff == "mlp":
            self.fc1 = nn.Linear(d_out, cfg.d_ff)
            self.fc2 = nn.Linear(cfg.d_ff, d_out)
        if cfg.ff_sublayer:
            self.norm2 = Norm(cfg.norm, d_out, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ff == "glu":
            x = self.drop(_activation(x, "gelu", self.gelu))
            return self.out1(x) * torch.sigmoid(self.out2(x))
        if self.ff == "mlp":
            return self.fc2(self.drop(_activation(self.fc1(x), self.activation, self.gelu)))
        return x

    def forward(self, u: torch.Tensor, h0: torch.Tensor, mode: str):
        x = self.norm(u) if self.prenorm else u
        x, h = self.lru(x, h0, mode)
        if not self.ff_sublayer:
            x = self.feed_forward(x)
        v = u + self.drop(x) if self.residual else self.drop(x)
        if not self.prenorm:
            v = self.norm(v)
        if self.ff_sublayer:
            w = self.norm2(v) if self.prenorm else v
            v = v + self.drop(self.feed_forward(w))
            if not self.prenorm:
                v = self.norm2(v)
        return v, h


class Decoder(nn.Module):
    """[final norm], then a Linear (weight, [bias]), the embedding table transposed (tied, [bias]), or nothing.

    Keys: decoder.weight (linear only), decoder.bias (when decoder_bias), decoder.norm.* (final_norm).
    A tied decoder reads the table from its model's embedding at every call, so the two cannot drift apart.
    """

    def __init__(self, cfg: LRUConfig, embedding: Optional[nn.Embedding] = None):
        super().__init__()
        self.kind = cfg.decoder
        if cfg.final_norm:
            self.norm = Norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        if cfg.decoder == "linear":
            self.weight = nn.Parameter(torch.zeros(cfg.d_output, cfg.d_model))
        if cfg.decoder != "none" and cfg.decoder_bias:
            self.bias = nn.Parameter(torch.zeros(cfg.d_output))
        self._tied = [embedding]  # a list: the embedding stays the model's submodule, not this one's

    def table(self) -> torch.Tensor:
        """The (d_output, d_model) decoder matrix."""
        return self.weight if self.kind == "linear" else self._tied[0].weight

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "norm"):
            u = self.norm(u)
        if self.kind == "none":
            return u
        return F.linear(u, self.table(), getattr(self, "bias", None))


class LRUModel(nn.Module):
    """The deep LRU network. Parameter names are the native checkpoint's keys (see checkpoints.py)."""

    def __init__(self, cfg: LRUConfig):
        super().__init__()
        self.cfg = cfg.validate()
        if cfg.tokens:
            self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        elif cfg.encoder == "linear":
            self.encoder = nn.Linear(cfg.d_input, cfg.d_model)
        if cfg.embedding_norm:
            self.embedding_norm = Norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.decoder = Decoder(cfg, getattr(self, "embedding", None))
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].lru.nu_log.dtype

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids or inputs -> the residual stream entering layer 0."""
        cfg = self.cfg
        if cfg.tokens:
            u = self.embedding(inputs)
        elif cfg.encoder == "linear":
            u = self.encoder(inputs.to(self.dtype))
        else:
            u = inputs.to(self.dtype)
        return self.embedding_norm(u) if cfg.embedding_norm else u

    def zero_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.n_layers, 2, self.cfg.d_hidden, dtype=self.dtype)

    def forward(self, inputs: torch.Tensor, state: Optional[torch.Tensor] = None,
                pool_sum: Optional[torch.Tensor] = None, pool_count: Optional[torch.Tensor] = None,
                mode: str = "parallel", prefill_outputs: str = "all") -> LRUOutput:
        """Run a whole sequence. inputs: int64 [batch, seq] or float [batch, seq, d_input]."""
        cfg = self.cfg
        u = self.encode(inputs)
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
    with torch.no_grad():
        for p in model.parameters():  # deterministic Linear init from the seed, torch's default scale
            if p.dim() == 2:
                bound = 1 / math.sqrt(p.shape[1])
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=g))
            else:
                p.zero_()
        if cfg.tokens:
            model.embedding.weight.copy_(torch.randn(cfg.vocab_size, cfg.d_model, generator=g))
        for norm in (m for m in model.modules() if isinstance(m, Norm) and m.kind != "none"):
            norm.weight.fill_(1.0)
        for layer in model.layers:
            lru = layer.lru
            N, H = lru.B_re.shape  # H: the layer's input width (d_input for a bare layer)
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
            lru.C_re.copy_(torch.randn(lru.C_re.shape, generator=g) / math.sqrt(N))
            lru.C_im.copy_(torch.randn(lru.C_im.shape, generator=g) / math.sqrt(N))
            if cfg.skip in ("diagonal", "full"):
                lru.D.copy_(torch.randn(lru.D.shape, generator=g) / (1 if cfg.skip == "diagonal" else math.sqrt(H)))
    return model


def gold(model: LRUModel) -> LRUModel:
    """A float64/complex128 copy of the model: the gold standard for parity."""
    m = LRUModel(model.cfg)
    m.load_state_dict(model.state_dict())
    return m.double().eval()
