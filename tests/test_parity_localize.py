"""Localization: a constant perturbed in one layer is found at that layer and sub-step, in both graphs."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lru_deploy import cli
from lru_deploy.cases import random_inputs
from lru_deploy.checkpoints import save_model
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.files import file_sha256
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


# ---------------------------------------------------------------- through `lru-deploy check`

def _record_hash(folder, precision, graph):
    """Make the manifest record the graph's current sha256, as if it had been exported that way."""
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"][precision][graph]["sha256"] = file_sha256(folder / precision / f"{graph}.onnx")
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def export3(tmp_path_factory, lru):
    root = tmp_path_factory.mktemp("loc")
    model = save_model(lru.make_model(lru.small_config(n_layers=3), seed=2), root / "m")
    return export_model(model, root / "e", ExportOptions(precisions=("fp32",), chunk=CHUNK, max_seq=64,
                                                         validate=False, lint=False))


def test_check_localizes_a_miss_by_itself(export3, tmp_path, capsys):
    folder = tmp_path / "bad"
    shutil.copytree(export3, folder)
    path = folder / "fp32" / "prefill.onnx"
    onnx.save(perturb(onnx.load(str(path)), "/layers.1/lru/intra/Laug"), str(path))
    _record_hash(folder, "fp32", "prefill")
    rc = cli.main(["check", str(folder), "--quick", "--drift-steps", "20"])
    out = capsys.readouterr().out
    assert rc == 1 and "error first exceeds 1e-05 at layers.1/lru" in out
    entry = json.loads((folder / "report" / "report.json").read_text())["precisions"]["fp32"]
    loc = {r["graph"]: r for r in entry["localize"]}
    assert loc["prefill"]["first_over"] == "layers.1/lru" and loc["prefill"]["case"].startswith("prefill b")
    assert loc["step"]["first_over"] is None  # the step graph is intact
    assert (folder / "report" / "fp32" / "localize.png").stat().st_size > 10_000


def test_check_localize_on_a_passing_folder(export3, tmp_path, capsys):
    rc = cli.main(["check", str(export3), "--quick", "--drift-steps", "20", "--localize",
                   "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0 and "every probe within 1e-05" in out
    entry = json.loads((tmp_path / "r" / "report.json").read_text())["precisions"]["fp32"]
    assert [r["graph"] for r in entry["localize"]] == ["prefill", "step"]
    assert all(row["rel_l2"] <= 1e-5 for r in entry["localize"] for row in r["rows"])
