"""Localization: a constant perturbed in one layer is found at that layer and sub-step, in both graphs."""
import numpy as np
import pytest
from onnx import numpy_helper

from lru_deploy.cases import random_inputs
from lru_deploy.export.graphs import build_prefill, build_step
from lru_deploy.model import gold
from lru_deploy.parity.localize import localize, probe_order, sequence_order, with_probe_outputs

CHUNK = 4


def perturb(model, name: str, rel: float = 1e-3):
    for init in model.graph.initializer:
        if init.name == name:
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((a * (1 + rel)).astype(a.dtype), name))
            return model
    raise AssertionError(f"no initializer {name}")


@pytest.fixture(scope="module")
def model64(lru):
    return gold(lru.make_model(lru.small_config(n_layers=3), seed=1))


def _graph(model64, graph, precision="fp32"):
    return (build_prefill(model64, precision, chunk=CHUNK, max_seq=64) if graph == "prefill"
            else build_step(model64, precision))


def _feeds(cfg, graph):
    return random_inputs(cfg, 2, 11 if graph == "prefill" else None, True, np.random.default_rng(0))


@pytest.mark.parametrize("graph, constant", [("prefill", "/layers.1/lru/intra/Laug"),
                                             ("prefill", "/layers.1/lru/project_out/weight"),
                                             ("step", "/layers.1/lru/project_out/weight"),
                                             ("step", "/layers.2/glu/out2/weight")])
def test_a_planted_perturbation_is_named_by_layer_and_sub_step(model64, graph, constant):
    g = perturb(_graph(model64, graph), constant)
    r = localize(g, "fp32", model64, graph, _feeds(model64.cfg, graph), CHUNK, 1e-5)
    layer = constant.split("/")[1]
    want = f"{layer}/lru" if "/lru/" in constant else f"{layer}/block"
    assert r["first_over"] == want and r["largest_growth"] == want
    rows = {row["probe"]: row["rel_l2"] for row in r["rows"]}
    before = [p for p in rows if p < layer]  # every probe of the layers before the perturbed one
    assert before and all(rows[p] <= 1e-5 for p in before)
    assert rows[want] > 1e-4


def test_an_intact_graph_localizes_within_the_bound(model64):
    for graph in ("prefill", "step"):
        r = localize(_graph(model64, graph, "fp16"), "fp16", model64, graph, _feeds(model64.cfg, graph), CHUNK,
                     3e-3)
        assert r["first_over"] is None and len(r["rows"]) == 12
        assert all(row["rel_l2"] <= 3e-3 for row in r["rows"])


def test_probe_order_and_sequence_order():
    assert probe_order(["layers.10/block", "layers.2/lru_state", "layers.2/norm_in", "layers.2/lru"]) == \
        ["layers.2/norm_in", "layers.2/lru", "layers.2/lru_state", "layers.10/block"]
    T, B, C, S, d = 4, 2, 3, 10, 5
    seq = np.arange(B * C * T * d, dtype=np.float64).reshape(B, C * T, d)  # [b, position, d]
    tbc = seq.reshape(B, C, T, d).transpose(2, 0, 1, 3).reshape(-1, d)  # the graph's row order (t, b, c)
    np.testing.assert_array_equal(sequence_order(tbc, T, B, S), seq[:, :S])


def test_probe_outputs_are_added_as_float32(model64):
    m, names = with_probe_outputs(_graph(model64, "step", "fp16"))
    assert len(names) == 12 and all(o.type.tensor_type.elem_type == 1 for o in m.graph.output[-12:])
