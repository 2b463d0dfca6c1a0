"""The reference model against an independent float64 numpy recurrence (the paper's equations), and its identities.

`np_reference` below reads the weights from the state dict and follows the paper's equations step by step,
one position at a time in complex128; it shares no code with lru_deploy.model.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lru_deploy.errors import ConfigError
from lru_deploy.model import LRUConfig, LRUModel, gold, init_parameters

REL64 = 1e-10  # float64 gold against the numpy recurrence


# ----------------------------------------------------------------------------- the independent reference
def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "exact":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _norm(cfg: LRUConfig, P: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    if cfg.norm == "none":
        return x
    w, b = P[prefix + "norm.weight"], P[prefix + "norm.bias"]
    if cfg.norm == "layer":
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + cfg.norm_eps) * w + b
    mean, var = P[prefix + "norm.running_mean"], P[prefix + "norm.running_var"]
    return (x - mean) / np.sqrt(var + cfg.norm_eps) * w + b


def np_params(model: LRUModel) -> dict[str, np.ndarray]:
    return {k: v.detach().to(torch.float64).numpy().copy() for k, v in model.state_dict().items()}


def np_reference(cfg: LRUConfig, P: dict, inputs: np.ndarray, state=None, pool_sum=None, pool_count=None,
                 last_only: bool = False):
    """Returns (outputs, state [B, L, 2, N], pool_sum, pool_count) in float64."""
    if cfg.tokens:
        u = P["embedding.weight"][np.asarray(inputs)]
    else:
        u = np.asarray(inputs, np.float64) @ P["encoder.weight"].T + P["encoder.bias"]
    batch, seq, H = u.shape
    N, L = cfg.d_hidden, cfg.n_layers
    state = np.zeros((batch, L, 2, N)) if state is None else np.asarray(state, np.float64)
    new_state = np.zeros((batch, L, 2, N))
    for i in range(L):
        p = f"layers.{i}."
        x = _norm(cfg, P, p, u) if cfg.prenorm else u
        lam = np.exp(-np.exp(P[p + "lru.nu_log"]) + 1j * np.exp(P[p + "lru.theta_log"]))
        b_norm = (P[p + "lru.B_re"] + 1j * P[p + "lru.B_im"]) * np.exp(P[p + "lru.gamma_log"])[:, None]
        c = P[p + "lru.C_re"] + 1j * P[p + "lru.C_im"]
        d = P[p + "lru.D"]
        h = state[:, i, 0] + 1j * state[:, i, 1]
        y = np.zeros((batch, seq, H))
        for t in range(seq):
            h = lam * h + x[:, t] @ b_norm.T
            skip = d * x[:, t] if d.ndim == 1 else x[:, t] @ d.T
            y[:, t] = (h @ c.T).real + skip
        new_state[:, i, 0], new_state[:, i, 1] = h.real, h.imag
        g = _gelu(y, cfg.gelu)
        g = (g @ P[p + "out1.weight"].T + P[p + "out1.bias"]) * _sigmoid(g @ P[p + "out2.weight"].T
                                                                          + P[p + "out2.bias"])
        u = u + g
        if not cfg.prenorm:
            u = _norm(cfg, P, p, u)
    if cfg.pooling == "mean":
        pool_sum = (0.0 if pool_sum is None else np.asarray(pool_sum, np.float64)) + u.sum(axis=1)
        pool_count = (np.zeros((batch, 1)) if pool_count is None else np.asarray(pool_count, np.float64)) + seq
        feat = pool_sum / pool_count
    else:
        pool_sum = pool_count = None
        feat = u[:, -1] if (cfg.pooling == "last" or last_only) else u
    out = feat @ P["decoder.weight"].T + P["decoder.bias"]
    if cfg.log_softmax:
        m = out.max(axis=-1, keepdims=True)
        out = out - m - np.log(np.exp(out - m).sum(axis=-1, keepdims=True))
    return out, new_state, pool_sum, pool_count


# ----------------------------------------------------------------------------- helpers
def assert_rel(actual, desired, rel: float, what: str = "") -> None:
    """Elementwise |a - d| <= rel * |d| + rel * max|d|: relative to each value and to the array's scale."""
    a = actual.detach().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    d = np.asarray(desired, np.float64)
    assert a.shape == d.shape, f"{what}: shape {a.shape} != {d.shape}"
    scale = float(np.abs(d).max()) if d.size else 0.0
    np.testing.assert_allclose(a, d, rtol=rel, atol=rel * scale, err_msg=what)


def rel_l2(a, b) -> float:
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_feeds(cfg, x, st, dtype=torch.float64):
    t = torch.from_numpy(x)
    s = {k: torch.from_numpy(v).to(dtype) for k, v in st.items()}
    return t, s.get("state"), s.get("pool_sum"), s.get("pool_count")


def check_against_reference(model: LRUModel, x: np.ndarray, st: dict, mode: str, last_only: bool = False):
    cfg = model.cfg
    g = gold(model)
    assert g.dtype == torch.float64
    inp, state, ps, pc = torch_feeds(cfg, x, st)
    with torch.no_grad():
        res = g(inp, state, ps, pc, mode=mode, prefill_outputs="last" if last_only else "all")
    ref = np_reference(cfg, np_params(model), x, st.get("state"), st.get("pool_sum"), st.get("pool_count"),
                       last_only=last_only)
    assert res.outputs.dtype == torch.float64
    assert_rel(res.outputs, ref[0], REL64, "outputs")
    assert_rel(res.state, ref[1], REL64, "state")
    if cfg.pooling == "mean":
        assert_rel(res.pool_sum, ref[2], REL64, "pool_sum")
        assert_rel(res.pool_count, ref[3], REL64, "pool_count")
    else:
        assert res.pool_sum is None and res.pool_count is None


# ----------------------------------------------------------------------------- (a) against the reference
VARIANTS = [
    dict(),  # tokens, layer norm, prenorm, diagonal skip, exact gelu, pooling none
    dict(d_input=3),
    dict(d_input=3, norm="batch", prenorm=False, skip="full", gelu="tanh", log_softmax=True),
    dict(norm="none", pooling="last", gelu="tanh"),
    dict(d_input=2, norm="layer", prenorm=False, pooling="mean", log_softmax=True, norm_eps=1e-3),
    dict(norm="batch", prenorm=True, pooling="mean", skip="full"),
    dict(d_input=4, norm="none", pooling="last", skip="full", log_softmax=True, n_layers=3),
    dict(norm="layer", pooling="none", skip="full", gelu="tanh", prenorm=False, n_layers=1),
]


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "default")
def test_reference_matches_numpy_recurrence(lru, variant, mode):
    cfg = lru.small_config(**variant)
    model = lru.make_model(cfg, seed=11)
    x = lru.random_inputs(cfg, batch=3, seq=9, seed=3)
    check_against_reference(model, x, lru.random_state(cfg, 3, seed=4), mode)  # non-zero initial state
    check_against_reference(model, x, {}, mode)  # start of sequence
    if cfg.pooling == "none":
        check_against_reference(model, x, lru.random_state(cfg, 3, seed=5), mode, last_only=True)


@settings(max_examples=25, deadline=None)
@given(tokens=st.booleans(), norm=st.sampled_from(["layer", "batch", "none"]), prenorm=st.booleans(),
       skip=st.sampled_from(["diagonal", "full"]), gelu=st.sampled_from(["exact", "tanh"]),
       pooling=st.sampled_from(["none", "last", "mean"]), log_softmax=st.booleans(),
       n_layers=st.integers(1, 3), d_model=st.integers(1, 6), d_hidden=st.integers(1, 6),
       d_output=st.integers(1, 5), batch=st.integers(1, 3), seq=st.integers(1, 12),
       zero_state=st.booleans(), mode=st.sampled_from(["sequential", "parallel"]), seed=st.integers(0, 2**16))
def test_reference_matches_numpy_recurrence_random_configs(lru, tokens, norm, prenorm, skip, gelu, pooling,
                                                             log_softmax, n_layers, d_model, d_hidden, d_output,
                                                             batch, seq, zero_state, mode, seed):
    cfg = lru.small_config(vocab_size=7 if tokens else None, d_input=None if tokens else 2, norm=norm,
                           prenorm=prenorm, skip=skip, gelu=gelu, pooling=pooling, log_softmax=log_softmax,
                           n_layers=n_layers, d_model=d_model, d_hidden=d_hidden, d_output=d_output)
    model = lru.make_model(cfg, seed=seed)
    x = lru.random_inputs(cfg, batch, seq, seed=seed + 1)
    st_ = {} if zero_state else lru.random_state(cfg, batch, seed=seed + 2)
    check_against_reference(model, x, st_, mode)


def test_paper_initialisation_matches_the_reference(lru):
    """init_parameters' values (not only `randomize`'s) go through the same math; |lambda| lands in the ring."""
    cfg = lru.small_config(r_min=0.4, r_max=0.9, max_phase=math.pi / 4, d_hidden=64)
    model = init_parameters(LRUModel(cfg), seed=5)
    for layer in model.layers:
        mod = torch.exp(-torch.exp(layer.lru.nu_log.detach().double()))
        assert float(mod.min()) >= 0.4 - 1e-6 and float(mod.max()) <= 0.9 + 1e-6
        phase = torch.exp(layer.lru.theta_log.detach().double())
        assert float(phase.max()) <= math.pi / 4 + 1e-6
        torch.testing.assert_close(torch.exp(layer.lru.gamma_log.detach().double()), torch.sqrt(1 - mod ** 2),
                                   rtol=1e-6, atol=1e-7)
    check_against_reference(model, lru.random_inputs(cfg, 2, 6), lru.random_state(cfg, 2), "parallel")
    again = init_parameters(LRUModel(cfg), seed=5)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), f"init_parameters is not deterministic for {k}"


# ----------------------------------------------------------------------------- (b) sequential vs parallel
@pytest.mark.parametrize("pooling", ["none", "last", "mean"])
@pytest.mark.parametrize("seq", [1, 2, 7, 64, 130])
def test_sequential_equals_parallel(lru, pooling, seq):
    cfg = lru.small_config(pooling=pooling, d_model=8, d_hidden=8)
    model = lru.make_model(cfg, seed=seq, r_lo=0.9, r_hi=0.9999)
    x = lru.random_inputs(cfg, 2, seq, seed=1)
    st = lru.random_state(cfg, 2, seed=2)
    for m, rel in ((gold(model), 1e-12), (model, 2e-5)):
        inp, state, ps, pc = torch_feeds(cfg, x, st, m.dtype)
        with torch.no_grad():
            a = m(inp, state, ps, pc, mode="sequential")
            b = m(inp, state, ps, pc, mode="parallel")
        assert_rel(a.outputs, b.outputs.double(), rel, f"outputs {m.dtype}")
        assert_rel(a.state, b.state.double(), rel, f"state {m.dtype}")
        if pooling == "mean":
            assert_rel(a.pool_sum, b.pool_sum.double(), rel, "pool_sum")


def test_unknown_mode_is_rejected(lru, token_model):
    with pytest.raises(ValueError, match="mode"):
        token_model(torch.zeros(1, 2, dtype=torch.int64), mode="scan")


# ----------------------------------------------------------------------------- (c) step against forward
@pytest.mark.parametrize("variant", [dict(pooling="none"), dict(pooling="last"), dict(pooling="mean"),
                                     dict(d_input=3, pooling="mean", log_softmax=True, prenorm=False),
                                     dict(d_input=3, pooling="none", skip="full")])
def test_step_equals_forward_at_every_position(lru, variant):
    cfg = lru.small_config(**variant)
    g = gold(lru.make_model(cfg, seed=21))
    seq = 8
    x = torch.from_numpy(lru.random_inputs(cfg, 2, seq, seed=6))
    st0 = {k: torch.from_numpy(v).double() for k, v in lru.random_state(cfg, 2, seed=7).items()}
    with torch.no_grad():
        full = g(x, st0["state"], st0.get("pool_sum"), st0.get("pool_count"))
        state, ps, pc = st0["state"], st0.get("pool_sum"), st0.get("pool_count")
        for t in range(seq):
            s = g.step(x[:, t], state, ps, pc)
            pre = g(x[:, :t + 1], st0["state"], st0.get("pool_sum"), st0.get("pool_count"), prefill_outputs="last")
            assert s.outputs.shape == (2, cfg.d_output)
            assert_rel(s.outputs, pre.outputs, 1e-12, f"step output at {t}")
            assert_rel(s.state, pre.state, 1e-12, f"step state at {t}")
            if cfg.pooling == "none":
                assert_rel(s.outputs, full.outputs[:, t], 1e-12, f"step vs forward output at {t}")
            if cfg.pooling == "mean":
                assert_rel(s.pool_sum, pre.pool_sum, 1e-12, f"pool_sum at {t}")
                assert_rel(s.pool_count, pre.pool_count, 0, f"pool_count at {t}")
            state, ps, pc = s.state, s.pool_sum, s.pool_count
        assert_rel(state, full.state, 1e-12, "final state")
        if cfg.pooling != "none":
            assert_rel(s.outputs, full.outputs, 1e-12, "final pooled output")


# ----------------------------------------------------------------------------- (d) state carry
@pytest.mark.parametrize("pooling", ["none", "last", "mean"])
@pytest.mark.parametrize("split", [1, 5, 12])
def test_state_carry(lru, pooling, split):
    cfg = lru.small_config(pooling=pooling, d_input=3)
    model = lru.make_model(cfg, seed=31)
    x = torch.from_numpy(lru.random_inputs(cfg, 2, 13, seed=8))
    st0 = {k: torch.from_numpy(v) for k, v in lru.random_state(cfg, 2, seed=9).items()}
    for m, rel in ((gold(model), 1e-12), (model, 2e-5)):
        s0 = {k: v.to(m.dtype) for k, v in st0.items()}
        with torch.no_grad():
            whole = m(x, s0["state"], s0.get("pool_sum"), s0.get("pool_count"))
            a = m(x[:, :split], s0["state"], s0.get("pool_sum"), s0.get("pool_count"))
            b = m(x[:, split:], a.state, a.pool_sum, a.pool_count)
        joined = torch.cat([a.outputs, b.outputs], dim=1) if pooling == "none" else b.outputs
        assert_rel(joined, whole.outputs.double(), rel, f"outputs {m.dtype}")
        assert_rel(b.state, whole.state.double(), rel, f"state {m.dtype}")
        if pooling == "mean":
            assert_rel(b.pool_sum, whole.pool_sum.double(), rel, "pool_sum")
            assert_rel(b.pool_count, whole.pool_count.double(), 0, "pool_count")


# ----------------------------------------------------------------------------- (e) float32 against gold
@pytest.mark.parametrize("mode, seq, tol_out, tol_state, rtol, atol", [
    ("parallel", 4096, 1e-6, 1e-6, 1e-4, 1e-5),  # measured 1.1e-7 (outputs), 2.4e-7 (state)
    ("sequential", 1024, 1e-5, 6e-5, 1e-3, 2e-4),  # measured 3.1e-6, 1.9e-5: the float32 state drifts
])
def test_float32_against_gold_near_unit_circle(lru, mode, seq, tol_out, tol_state, rtol, atol):
    """|lambda| in [0.9999, 0.99999], gamma as in the paper: float32 mode stays near float64 gold."""
    cfg = lru.small_config(d_input=4, d_model=16, d_hidden=16, n_layers=2, d_output=8)
    model = lru.make_model(cfg, seed=41, r_lo=0.9999, r_hi=0.99999)
    with torch.no_grad():
        for layer in model.layers:
            layer.lru.nu_log[:2] = torch.log(-torch.log(torch.tensor([0.99999, 0.9999], dtype=torch.float64)))
            mod = torch.exp(-torch.exp(layer.lru.nu_log.double()))
            assert 0.9999 - 1e-9 <= float(mod.min()) and abs(float(mod.max()) - 0.99999) < 1e-9
            layer.lru.gamma_log.copy_(torch.log(torch.sqrt(1 - mod ** 2)))
    x = torch.from_numpy(lru.random_inputs(cfg, 1, seq, seed=10))
    st = torch.from_numpy(lru.random_state(cfg, 1, seed=11)["state"])
    with torch.no_grad():
        ref = gold(model)(x, st, mode="parallel")
        got = model(x, st, mode=mode)
    assert got.outputs.dtype == torch.float32
    e_out, e_state = rel_l2(got.outputs, ref.outputs), rel_l2(got.state, ref.state)
    assert e_out < tol_out, f"outputs rel L2 {e_out:.2e}"
    assert e_state < tol_state, f"state rel L2 {e_state:.2e}"
    np.testing.assert_allclose(got.outputs.double().numpy(), ref.outputs.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.state.double().numpy(), ref.state.numpy(), rtol=rtol, atol=atol)


def test_gold_is_a_float64_copy(token_model):
    g = gold(token_model)
    assert g is not token_model and g.dtype == torch.float64 and token_model.dtype == torch.float32
    for (k, a), (_, b) in zip(token_model.state_dict().items(), g.state_dict().items()):
        assert torch.equal(a.double(), b), k


# ----------------------------------------------------------------------------- (f) LRUConfig
def test_config_json_round_trip(lru):
    for cfg in (LRUConfig(), lru.small_config(d_input=3, norm="batch", prenorm=False, skip="full",
                                              pooling="mean", log_softmax=True, gelu="tanh", r_min=0.2,
                                              r_max=0.95, max_phase=1.0, dropout=0.1, norm_eps=1e-6)):
        text = cfg.to_json()
        assert json.loads(text) == cfg.to_dict()
        assert LRUConfig.from_json(text) == cfg
        assert LRUConfig.from_dict(json.loads(text)) == cfg


def test_config_continuous_needs_no_vocab_size():
    cfg = LRUConfig.from_dict({"d_input": 5})
    assert cfg.vocab_size is None and cfg.d_input == 5 and not cfg.tokens


INVALID = {
    "d_model": 0, "d_hidden": -1, "n_layers": 1.5, "d_output": True, "vocab_size": "256",
    "norm": "group", "gelu": "fast", "skip": "none", "pooling": "max", "prenorm": 1, "log_softmax": "yes",
    "norm_eps": 0.0, "r_min": -0.1, "r_max": 1.5, "max_phase": 7.0, "dropout": 1.0,
    "ff": "swiglu", "activation": "tanh", "encoder": "conv", "decoder": "shared", "residual": "no", "lru_bias": 1,
    "ff_sublayer": None, "embedding_norm": "yes", "final_norm": 0, "decoder_bias": "none",
}


@pytest.mark.parametrize("field", sorted(INVALID))
def test_each_invalid_config_field_is_rejected(field):
    with pytest.raises(ConfigError) as ei:
        LRUConfig.from_dict({field: INVALID[field]})
    text = "\n".join(ei.value.problems)
    assert field in text, ei.value.render()
    assert ei.value.hint


def test_all_config_problems_listed_at_once():
    bad = dict(INVALID)
    with pytest.raises(ConfigError) as ei:
        LRUConfig.from_dict(bad)
    problems = ei.value.problems
    named = {f for f in bad if any(f in p for p in problems)}
    assert named == set(bad), f"not named: {set(bad) - named}"
    assert len(problems) >= 15  # r_min and r_max share one problem
    rendered = ei.value.render()
    assert all(p in rendered for p in problems) and "hint:" in rendered


@pytest.mark.parametrize("bad", [
    {"vocab_size": None},  # neither input kind
    {"vocab_size": 10, "d_input": 3},  # both
    {"r_min": float("nan")}, {"r_min": 0.9, "r_max": 0.5}, {"r_min": 0.5, "r_max": 0.5}, {"norm_eps": float("inf")}, {"max_phase": 0},
])
def test_more_invalid_configs(bad):
    with pytest.raises(ConfigError):
        LRUConfig.from_dict(bad)


def test_unknown_config_field_and_bad_json():
    with pytest.raises(ConfigError, match="unknown config field .colour."):
        LRUConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        LRUConfig.from_json("{d_model: 3")
    with pytest.raises(ConfigError, match="JSON object"):
        LRUConfig.from_json("[1, 2]")


def test_unknown_and_invalid_fields_listed_together():
    with pytest.raises(ConfigError) as ei:
        LRUConfig.from_dict({"colour": "red", "d_model": 0})
    text = ei.value.message + "\n".join(ei.value.problems)
    assert "colour" in text and "d_model must be a positive integer" in text


def test_model_refuses_invalid_config():
    with pytest.raises(ConfigError):
        LRUModel(LRUConfig(d_model=0))


# ----------------------------------------------------------------------------- (f) the PyTorch ports' layouts
# The block and network options the importers use (lru_deploy.importers.torch_layouts); their outputs against
# each upstream's own code are in tests/test_importers_torch_layouts.py. Here: the identities every layout keeps.
LAYOUT_VARIANTS = {
    "bare layer": dict(d_input=3, d_model=4, d_output=4, n_layers=1, encoder="none", decoder="none", norm="none",
                       ff="none", residual=False, skip="full"),
    "lrnnx classifier": dict(d_input=3, norm="layer", prenorm=False, ff="none", pooling="last"),
    "lrnnx lm": dict(norm="rms", ff="none", final_norm=True, decoder="tied", decoder_bias=False, d_output=13),
    "lrurec": dict(norm="layer", prenorm=False, skip="identity", residual=False, lru_bias=True, ff="mlp", d_ff=12,
                   ff_sublayer=True, embedding_norm=True, decoder="tied", d_output=13),
    "sysid mlp": dict(d_input=3, ff="mlp", d_ff=24, skip="full"),
    "pre sublayer, silu, mean": dict(ff="mlp", d_ff=10, activation="silu", ff_sublayer=True, pooling="mean",
                                     norm="rms", embedding_norm=True),
    "relu, glu sublayer, batch": dict(d_input=2, ff="glu", ff_sublayer=True, prenorm=False, norm="batch",
                                      final_norm=True, lru_bias=True, activation="relu"),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_VARIANTS))
def test_layout_variants_keep_the_identities(lru, name):
    """sequential == parallel, step == forward at every position, and a split prefill == the whole one."""
    cfg = lru.small_config(**LAYOUT_VARIANTS[name])
    g = gold(lru.make_model(cfg, seed=51))
    seq = 7
    x = torch.from_numpy(lru.random_inputs(cfg, 2, seq, seed=12))
    st0 = {k: torch.from_numpy(v).double() for k, v in lru.random_state(cfg, 2, seed=13).items()}
    args = (st0["state"], st0.get("pool_sum"), st0.get("pool_count"))
    with torch.no_grad():
        par, seqn = g(x, *args, mode="parallel"), g(x, *args, mode="sequential")
        assert_rel(par.outputs, seqn.outputs, 1e-12, "sequential vs parallel")
        state, ps, pc = args
        for t in range(seq):
            s = g.step(x[:, t], state, ps, pc)
            pre = g(x[:, :t + 1], *args, prefill_outputs="last")
            assert_rel(s.outputs, pre.outputs, 1e-12, f"step output at {t}")
            state, ps, pc = s.state, s.pool_sum, s.pool_count
        assert_rel(state, par.state, 1e-12, "final state")
        a = g(x[:, :3], *args)
        b = g(x[:, 3:], a.state, a.pool_sum, a.pool_count)
        joined = torch.cat([a.outputs, b.outputs], dim=1) if cfg.pooling == "none" else b.outputs
        assert_rel(joined, par.outputs, 1e-12, "split prefill")
    assert par.outputs.shape[-1] == cfg.d_output


def test_layout_pieces_compute_what_they_say(lru):
    """Tied decoder = x E^T (+ b), rms norm = torch's RMSNorm, identity skip adds the input, lru_bias drives the
    state by exp(gamma_log) * (B u + b_B) and adds Re(b_C) to the output."""
    cfg = lru.small_config(**LAYOUT_VARIANTS["lrurec"])
    g = gold(lru.make_model(cfg, seed=52))
    u = torch.randn(2, 5, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        E = g.embedding.weight
        torch.testing.assert_close(g.decoder(u), u @ E.T + g.decoder.bias, atol=1e-12, rtol=0)
        lru_ = g.layers[0].lru
        h0 = torch.zeros(2, cfg.d_hidden, dtype=torch.complex128)
        y, _ = lru_(u, h0, "sequential")
        lam = torch.exp(torch.complex(-torch.exp(lru_.nu_log), torch.exp(lru_.theta_log)))
        gam = torch.exp(lru_.gamma_log)
        B, C = torch.complex(lru_.B_re, lru_.B_im), torch.complex(lru_.C_re, lru_.C_im)
        bB = torch.complex(lru_.B_bias_re, lru_.B_bias_im)
        h, want = h0, []
        for t in range(5):
            h = lam * h + gam * (u[:, t].to(B.dtype) @ B.T + bB)
            want.append((h @ C.T).real + lru_.C_bias + u[:, t])
        torch.testing.assert_close(y, torch.stack(want, 1), atol=1e-12, rtol=0)
    rms = gold(lru.make_model(lru.small_config(**LAYOUT_VARIANTS["lrnnx lm"]), seed=53)).layers[0].norm
    ref = torch.nn.RMSNorm(cfg.d_model, eps=rms.eps).double()
    with torch.no_grad():
        ref.weight.copy_(rms.weight)
        torch.testing.assert_close(rms(u), ref(u), atol=1e-12, rtol=0)


@pytest.mark.parametrize("over, piece", [
    (dict(ff="mlp"), "ff mlp needs d_ff"), (dict(d_ff=8), "d_ff is the mlp's width"),
    (dict(ff="none", ff_sublayer=True), "ff_sublayer needs a feed-forward"),
    (dict(encoder="none"), "encoder none is for continuous inputs"),
    (dict(d_input=3, decoder="tied"), "decoder tied needs a token model"),
    (dict(decoder="tied", d_output=5), "decoder tied needs a token model with d_output == vocab_size"),
    (dict(decoder="none", d_output=5), "d_output must equal d_model"),
    (dict(decoder="none", d_output=6, log_softmax=True), "decoder none has no final_norm"),
    (dict(norm="none", final_norm=True), "embedding_norm and final_norm use the kind in `norm`"),
    (dict(d_input=3, encoder="none"), "without an encoder layer 0 maps d_input 3 to d_model 6"),
    (dict(d_input=3, encoder="none", residual=False, skip="identity"), "a full or no skip"),
])
def test_layout_config_problems(lru, over, piece):
    base = dict(vocab_size=13, d_model=6, d_hidden=5, n_layers=2, d_output=7)
    if over.get("d_input") is not None:
        base["vocab_size"] = None
    with pytest.raises(ConfigError) as ei:
        LRUConfig(**{**base, **over}).validate()
    assert any(piece in p for p in ei.value.problems), ei.value.render()


def test_new_fields_default_to_the_old_meaning():
    """A config.json written before these options existed reads as the same model (the bundled one's does)."""
    old = {k: v for k, v in LRUConfig().to_dict().items()
           if k not in ("ff", "d_ff", "activation", "ff_sublayer", "residual", "lru_bias", "encoder",
                        "embedding_norm", "final_norm", "decoder", "decoder_bias")}
    cfg = LRUConfig.from_dict(old)
    assert (cfg.ff, cfg.ff_sublayer, cfg.residual, cfg.lru_bias, cfg.encoder, cfg.embedding_norm, cfg.final_norm,
            cfg.decoder, cfg.decoder_bias) == ("glu", False, True, False, "linear", False, False, "linear", True)
