"""The I/O contract as data (the two graphs' tensors): graph specs per config variant, and input checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lru_deploy import contract
from lru_deploy.contract import TOLERANCES, check_arrays, graph_spec, validate_arrays
from lru_deploy.errors import InputError
from lru_deploy.model import gold


def _specs(spec):
    return [(t.name, t.dtype, tuple(t.shape)) for t in spec]


STATE = ("state", "float32", ("batch", 2, 2, 5))
POOL_IN = [("pool_sum", "float32", ("batch", 6)), ("pool_count", "float32", ("batch", 1))]
STATE_OUT = ("state_out", "float32", ("batch", 2, 2, 5))
POOL_OUT = [("pool_sum_out", "float32", ("batch", 6)), ("pool_count_out", "float32", ("batch", 1))]


@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("pooling", ["none", "last", "mean"])
@pytest.mark.parametrize("prefill_outputs", ["all", "last"])
def test_graph_spec_names_and_shapes(lru, tokens, pooling, prefill_outputs):
    cfg = lru.small_config(pooling=pooling, **({} if tokens else {"d_input": 3}))
    pool_in, pool_out = (POOL_IN, POOL_OUT) if pooling == "mean" else ([], [])
    pre = graph_spec(cfg, "prefill", prefill_outputs)
    step = graph_spec(cfg, "step", prefill_outputs)
    x_pre = ("input_ids", "int64", ("batch", "seq")) if tokens else ("inputs", "float32", ("batch", "seq", 3))
    x_step = ("input_ids", "int64", ("batch",)) if tokens else ("inputs", "float32", ("batch", 3))
    per_position = pooling == "none" and prefill_outputs == "all"
    out_pre = ("outputs", "float32", ("batch", "seq", 7) if per_position else ("batch", 7))
    assert pre.graph == "prefill" and step.graph == "step"
    assert _specs(pre.inputs) == [x_pre, STATE] + pool_in
    assert _specs(pre.outputs) == [out_pre, STATE_OUT] + pool_out
    assert _specs(step.inputs) == [x_step, STATE] + pool_in
    assert _specs(step.outputs) == [("outputs", "float32", ("batch", 7)), STATE_OUT] + pool_out
    assert pre.input_names == [t[0] for t in [x_pre, STATE] + pool_in]
    assert step.output_names == [t[0] for t in [out_pre, STATE_OUT] + pool_out]
    assert contract.input_name(cfg) == x_pre[0]
    d = contract.contract(cfg, prefill_outputs)
    assert set(d) == {"prefill", "step"}
    assert json.loads(json.dumps(d)) == d  # JSON-ready for the manifest
    assert d["prefill"]["inputs"][1] == {"name": "state", "dtype": "float32", "shape": ["batch", 2, 2, 5]}


def test_unknown_graph_is_rejected(lru):
    with pytest.raises(ValueError, match="graph"):
        graph_spec(lru.small_config(), "decode")


@pytest.mark.parametrize("variant", [dict(), dict(pooling="last"), dict(pooling="mean", d_input=3),
                                     dict(d_input=2, skip="full")])
def test_model_outputs_follow_the_spec(lru, variant):
    """The reference model's outputs have the shapes the contract promises, for prefill and step."""
    cfg = lru.small_config(**variant)
    g = gold(lru.make_model(cfg))
    batch, seq = 3, 5
    sizes = {"batch": batch, "seq": seq}
    x = torch.from_numpy(lru.random_inputs(cfg, batch, seq))
    with torch.no_grad():
        pre, step = g(x), g.step(x[:, 0])
    for spec, res in ((graph_spec(cfg, "prefill"), pre), (graph_spec(cfg, "step"), step)):
        got = {"outputs": res.outputs, "state_out": res.state, "pool_sum_out": res.pool_sum,
               "pool_count_out": res.pool_count}
        for t in spec.outputs:
            assert tuple(got[t.name].shape) == tuple(sizes.get(d, d) for d in t.shape), (spec.graph, t.name)
        if cfg.pooling != "mean":
            assert res.pool_sum is None


# ----------------------------------------------------------------------------- check_arrays
def _good_feeds(cfg, batch=2, seq=4):
    feeds = {contract.input_name(cfg): np.zeros((batch, seq), np.int64) if cfg.tokens
             else np.zeros((batch, seq, cfg.d_input), np.float32),
             "state": np.zeros((batch, cfg.n_layers, 2, cfg.d_hidden), np.float32)}
    if cfg.pooling == "mean":
        feeds["pool_sum"] = np.zeros((batch, cfg.d_model), np.float32)
        feeds["pool_count"] = np.ones((batch, 1), np.float32)
    return feeds


@pytest.mark.parametrize("variant", [dict(), dict(pooling="mean"), dict(d_input=3), dict(d_input=3, pooling="mean")])
def test_good_arrays_pass(lru, variant):
    cfg = lru.small_config(**variant)
    for graph in ("prefill", "step"):
        feeds = _good_feeds(cfg)
        if graph == "step":
            feeds = {k: (v[:, 0] if k == contract.input_name(cfg) else v) for k, v in feeds.items()}
        assert check_arrays(graph_spec(cfg, graph), feeds, cfg) == []
        assert check_arrays(graph_spec(cfg, graph), feeds, cfg, batch=2) == []
        validate_arrays(graph_spec(cfg, graph), feeds, cfg)


def test_check_arrays_lists_every_problem(lru):
    cfg = lru.small_config(pooling="mean")
    spec = graph_spec(cfg, "prefill")
    feeds = {
        "input_ids": np.array([[0, 5, 13]], np.int32),  # wrong dtype and out of range (vocab 13)
        "state": np.zeros((2, 2, 2, 5), np.float32),  # batch 2 against 1
        "pool_sum": np.full((1, 6), np.nan, np.float32),  # NaN
        # pool_count missing
        "hidden": np.zeros(3, np.float32),  # unexpected
    }
    probs = check_arrays(spec, feeds, cfg)
    text = "\n".join(probs)
    for needle in ["missing inputs: pool_count", "unexpected inputs: hidden", "input_ids: dtype int32, want int64",
                   "input_ids: values in [0, 13], want [0, 12]", "state: axis 0 (batch) is 2, but another input "
                   "has batch = 1", "pool_sum: holds NaN or Inf"]:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert len(probs) == 6
    with pytest.raises(InputError) as ei:
        validate_arrays(spec, feeds, cfg)
    assert ei.value.problems == probs
    assert "input_ids int64 [batch, seq]" in ei.value.hint


def test_check_arrays_shapes(lru):
    cfg = lru.small_config(d_input=3)
    spec = graph_spec(cfg, "prefill")
    feeds = {"inputs": np.zeros((2, 4, 4), np.float64), "state": np.zeros((2, 2, 5), np.float32)}
    text = "\n".join(check_arrays(spec, feeds, cfg))
    assert "inputs: dtype float64, want float32" in text
    assert "inputs: shape [2, 4, 4], want [batch, seq, 3]" in text
    assert "state: shape [2, 2, 5], want [batch, 2, 2, 5] (rank 4)" in text
    empty = {"inputs": np.zeros((2, 0, 3), np.float32), "state": np.zeros((2, 2, 2, 5), np.float32)}
    assert check_arrays(spec, empty, cfg) == ["inputs: axis 1 (seq) is empty"]
    assert "batch" in "\n".join(check_arrays(spec, _good_feeds(cfg, batch=2), cfg, batch=3))
    inf = _good_feeds(cfg)
    inf["inputs"][0, 0, 0] = np.inf
    assert check_arrays(spec, inf, cfg) == ["inputs: holds NaN or Inf"]


def test_check_arrays_step(lru):
    cfg = lru.small_config()
    spec = graph_spec(cfg, "step")
    probs = check_arrays(spec, {"input_ids": np.zeros((2, 3), np.int64),
                                "state": np.zeros((2, 2, 2, 5), np.float32)}, cfg)
    assert probs == ["input_ids: shape [2, 3], want [batch] (rank 1)"]


# ----------------------------------------------------------------------------- tolerances and the table
def test_tolerances_are_ordered_and_tighter_than_peers():
    assert set(TOLERANCES) == set(contract.PRECISIONS) == {"fp32", "fp16", "bf16"}
    keys = ("atol", "rtol", "rel_l2", "drift_rel_l2")
    for k in keys:
        assert 0 < TOLERANCES["fp32"][k] <= TOLERANCES["fp16"][k] <= TOLERANCES["bf16"][k], k
    # mamba's selective-scan tests: fp32 (6e-4, 2e-3), fp16 (3e-3, 5e-3), bf16 (3e-2, 5e-2)
    assert TOLERANCES["fp32"]["rtol"] <= 6e-4 and TOLERANCES["fp32"]["atol"] <= 2e-3
    assert TOLERANCES["fp16"]["atol"] <= 5e-2 and TOLERANCES["bf16"]["rtol"] <= 1e-1


def test_markdown_table_lists_every_tensor(lru):
    cfg = lru.small_config(pooling="mean")
    table = contract.markdown_table(cfg)
    for g in ("prefill", "step"):
        spec = graph_spec(cfg, g)
        for t in spec.inputs + spec.outputs:
            assert f"| {g} | `{t.name}` |" in table
    assert table.count("\n") + 1 == 2 + 2 * 8


def test_the_readme_contract_table_is_the_bundled_models_contract():
    """The README's table is rendered by contract.markdown_table for the bundled model; this keeps it so."""
    from pathlib import Path

    from lru_deploy.checkpoints import default_model_dir, load_config
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert contract.markdown_table(load_config(default_model_dir())) in readme


def test_state_pairs_and_carry_follow_the_out_suffix(lru):
    cfg = lru.small_config(pooling="mean")
    spec = graph_spec(cfg, "step")
    assert contract.state_pairs(spec) == [("state", "state_out"), ("pool_sum", "pool_sum_out"),
                                          ("pool_count", "pool_count_out")]
    outs = {"outputs": 1, "state_out": 2, "pool_sum_out": 3, "pool_count_out": 4}
    assert contract.carry(spec, outs) == {"state": 2, "pool_sum": 3, "pool_count": 4}
    assert [t.name for t in spec.model_inputs] == ["input_ids"]
    assert contract.GraphSpec.from_dict("step", spec.to_dict()) == spec
