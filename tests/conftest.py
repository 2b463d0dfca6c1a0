"""Shared fixtures: small random models (every parameter randomised, norms and batch statistics included).

`init_parameters` leaves norm weights at 1 and biases / batch statistics at their defaults, which would hide
mistakes in the norm code; `randomize` below perturbs everything, with |lambda| drawn from a chosen ring.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lru_deploy.checkpoints import save_model
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.model import LRUConfig, LRUModel


def small_config(**overrides) -> LRUConfig:
    """A tiny token model by default; pass d_input=k to get a continuous one."""
    base = dict(vocab_size=13, d_model=6, d_hidden=5, n_layers=2, d_output=7)
    if overrides.get("d_input") is not None:
        base["vocab_size"] = None
    base.update(overrides)
    return LRUConfig(**base).validate()


def randomize(model: LRUModel, seed: int = 0, r_lo: float = 0.5, r_hi: float = 0.999) -> LRUModel:
    """Fill every parameter and buffer with seeded random values; |lambda| uniform in [r_lo, r_hi]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            n = t.shape[0] if t.dim() else 1
            if leaf == "nu_log":
                r = r_lo + (r_hi - r_lo) * torch.rand(n, generator=g, dtype=torch.float64)
                t.copy_(torch.log(-torch.log(r)))  # |lambda| = exp(-exp(nu_log)) = r
            elif leaf == "theta_log":
                t.copy_(torch.log(2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-3)))
            elif leaf == "gamma_log":
                t.copy_(0.3 * torch.randn(n, generator=g) - 1.0)
            elif leaf == "running_var":
                t.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            elif name.endswith("norm.weight"):
                t.copy_(1 + 0.2 * torch.randn(n, generator=g))
            elif t.dim() == 2:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1]))
            else:
                t.copy_(0.3 * torch.randn(t.shape, generator=g))
    return model


def make_model(cfg: LRUConfig, seed: int = 0, **ring) -> LRUModel:
    return randomize(LRUModel(cfg), seed, **ring)


def random_inputs(cfg: LRUConfig, batch: int, seq: int | None, seed: int = 0) -> np.ndarray:
    """int64 ids [batch, seq] or float32 [batch, seq, d_input]; seq=None gives step inputs [batch(, d_input)]."""
    rng = np.random.default_rng(seed)
    lead = (batch,) if seq is None else (batch, seq)
    if cfg.tokens:
        return rng.integers(0, cfg.vocab_size, size=lead, dtype=np.int64)
    return rng.standard_normal(lead + (cfg.d_input,)).astype(np.float32)


def random_state(cfg: LRUConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A non-zero state dict with the contract's names (pool_count > 0 for mean pooling)."""
    rng = np.random.default_rng(seed)
    st = {"state": (0.5 * rng.standard_normal((batch, cfg.n_layers, 2, cfg.d_hidden))).astype(np.float32)}
    if cfg.pooling == "mean":
        st["pool_sum"] = rng.standard_normal((batch, cfg.d_model)).astype(np.float32)
        st["pool_count"] = rng.integers(1, 9, size=(batch, 1)).astype(np.float32)
    return st


def tokens(session, prompt, n=12, seed=3, temperature=0.9, top_k=5) -> np.ndarray:
    """`n` sampled tokens per prompt row from any session's generate, [batch, n]."""
    return np.stack(list(session.generate(prompt, n, temperature, top_k, seed)), axis=1)


@pytest.fixture(scope="session")
def lru():
    """The helpers above, for tests: lru.small_config(...), lru.make_model(cfg, seed), lru.random_inputs(...)."""
    return SimpleNamespace(small_config=small_config, randomize=randomize, make_model=make_model,
                           random_inputs=random_inputs, random_state=random_state, tokens=tokens)


@pytest.fixture
def token_model() -> LRUModel:
    return make_model(small_config(), seed=1)


@pytest.fixture
def continuous_model() -> LRUModel:
    return make_model(small_config(d_input=3, pooling="none"), seed=2)


@pytest.fixture
def model_dir(tmp_path, token_model):
    """A saved native model folder of `token_model`."""
    return save_model(token_model, tmp_path / "model")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, lru):
    """A token model, its folder, and an export (fp32 + fp16) with max_seq 16 so that prompts get split."""
    root = tmp_path_factory.mktemp("rb")
    model = lru.make_model(lru.small_config(), seed=5)
    model_dir = save_model(model, root / "tiny")
    export = export_model(model_dir, root / "export", ExportOptions(precisions=("fp32", "fp16"), chunk=4,
                          max_seq=16, validate=False, lint=False))
    return model, model_dir, export


@pytest.fixture(scope="session")
def pooled(tmp_path_factory, lru):
    """A continuous-input model with mean pooling (its state carries a running sum and count)."""
    root = tmp_path_factory.mktemp("rbp")
    model = lru.make_model(lru.small_config(d_input=3, pooling="mean", d_output=4), seed=6)
    model_dir = save_model(model, root / "pooled")
    export = export_model(model_dir, root / "export", ExportOptions(precisions=("fp32",), chunk=4, max_seq=16,
                          validate=False, lint=False))
    return model, model_dir, export
