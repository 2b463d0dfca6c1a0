"""lru-deploy export: layout, manifest, strict validation, no artifacts on failure, CLI, bf16 emulation."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lru_deploy import contract
from lru_deploy.checkpoints import file_sha256, save_model
from lru_deploy.cli import main
from lru_deploy.errors import ExportError
from lru_deploy.cases import shape_matrix
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.runtime.onnxruntime import emulate_reduced, ort_session, run_session
from lru_deploy.model import LRUConfig, LRUModel, init_parameters
from lru_deploy.export.builder import bf16_bits

CHECK_CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_contract.py"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cfgs = {"tok": LRUConfig(vocab_size=17, d_model=12, d_hidden=8, n_layers=2, d_output=17, r_min=0.5,
                             r_max=0.9999),
            "mean": LRUConfig(vocab_size=None, d_input=3, d_model=8, d_hidden=6, n_layers=2, d_output=4,
                              pooling="mean", norm="batch", prenorm=False, skip="full")}
    out = {}
    for name, cfg in cfgs.items():
        out[name] = save_model(init_parameters(LRUModel(cfg), 3), root / name)
    return out


def small_export(model_dir, out, precisions=("fp32", "fp16", "bf16"), **kw):
    kw = {"chunk": 8, "max_seq": 512, "long_seq": 300, **kw}
    return export_model(model_dir, out, ExportOptions(precisions=precisions, **kw))


@pytest.mark.parametrize("name", ["tok", "mean"])
def test_export_layout_and_manifest(model_dirs, tmp_path, name):
    out = small_export(model_dirs[name], tmp_path / "exp")
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"] == LRUConfig.from_dict(man["config"]).to_dict()
    assert man["model"]["sha256"] == file_sha256(model_dirs[name] / "model.safetensors")
    assert man["precisions"] == ["fp32", "fp16", "bf16"]
    assert (man["chunk"], man["max_seq"], man["opset"]) == (8, 512, 18)
    cfg = LRUConfig.from_dict(man["config"])
    assert man["contract"] == json.loads(json.dumps(contract.contract(cfg)))
    for prec in man["precisions"]:
        for g in ("prefill", "step"):
            meta = man["graphs"][prec][g]
            assert file_sha256(out / meta["path"]) == meta["sha256"]
            m = onnx.load(str(out / meta["path"]))
            assert m.opset_import[0].version == 18
            assert [i.name for i in m.graph.input] == contract.graph_spec(cfg, g).input_names
            assert [o.name for o in m.graph.output] == contract.graph_spec(cfg, g).output_names
        v = man["validation"][prec]
        assert v["failures"] == 0 and v["records"], prec
        assert all(r["rel_l2"] <= contract.TOLERANCES[prec]["rel_l2"] for r in v["records"])
    assert man["validation"]["bf16"]["mode"] == "bf16-emulated"
    assert man["lint"]["ok"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.skipif(not CHECK_CONTRACT.exists(), reason="../shared/tools/check_contract.py not on this machine")
def test_shared_contract_checker_passes(model_dirs, tmp_path):
    out = small_export(model_dirs["mean"], tmp_path / "exp", ("fp32", "fp16"))
    r = subprocess.run([sys.executable, str(CHECK_CONTRACT), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_failed_validation_leaves_nothing(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(contract.TOLERANCES, "fp16", {**contract.TOLERANCES["fp16"], "rel_l2": 1e-9})
    out = tmp_path / "exp"
    with pytest.raises(ExportError) as e:
        small_export(model_dirs["tok"], out, ("fp32", "fp16"))
    msg = e.value.render()
    assert "fp16 prefill" in msg and "fp16 step" in msg and "outputs" in msg and "state_out" in msg
    assert "fp32" not in "\n".join(e.value.problems)  # fp32 passed; every fp16 failure is listed
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_export_replaced_only_on_success(model_dirs, tmp_path, monkeypatch):
    out = small_export(model_dirs["tok"], tmp_path / "exp", ("fp32",))
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setitem(contract.TOLERANCES, "fp32", {**contract.TOLERANCES["fp32"], "rel_l2": 1e-12})
    with pytest.raises(ExportError):
        small_export(model_dirs["tok"], out, ("fp32",))
    assert (out / "manifest.json").read_bytes() == before


def test_bad_options_are_all_listed(model_dirs, tmp_path):
    with pytest.raises(ExportError) as e:
        export_model(model_dirs["tok"], tmp_path / "x", ExportOptions(precisions=("fp8",), chunk=1, max_seq=100,
                     opset=21, prefill_outputs="some"))
    probs = "\n".join(e.value.problems)
    for word in ("fp8", "--chunk", "--opset 21", "--prefill-outputs"):
        assert word in probs
    assert not (tmp_path / "x").exists()


def test_the_shape_matrix_covers_chunk_edges_odd_and_long_lengths_batches_and_states():
    cases = shape_matrix(64, 65536, 4096)
    pre = [c for c in cases if c.graph == "prefill"]
    seqs = {c.seq for c in pre}
    assert {1, 63, 64, 65, 4096} <= seqs and any(s & (s - 1) and s > 65 for s in seqs)
    assert {c.batch for c in pre} == {1, 3} and {c.nonzero_state for c in pre} == {True, False}
    assert {c.batch for c in cases if c.graph == "step"} == {1, 3}


def test_cli_export_and_errors(model_dirs, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["export", str(model_dirs["tok"]), "--out", str(out), "--precision", "fp32", "--chunk", "8",
               "--max-seq", "256", "--long-seq", "100"])
    assert rc == 0 and (out / "fp32" / "prefill.onnx").exists()
    rc = main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 1 and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()


def test_bf16_emulation_rounds_like_bf16():
    """A bf16 MatMul graph, emulated: inputs and output rounded to bf16, product in float32."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(16, 8)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "W"], ["yb"]),
             helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)]
    Wt = helper.make_tensor("W", TensorProto.BFLOAT16, W.shape, bf16_bits(W).tobytes(), raw=True)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], initializer=[Wt])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    sess, mode = ort_session(m, "bf16")
    assert mode == "bf16-emulated"
    x = rng.normal(size=(4, 16)).astype(np.float32)
    rb = lambda a: (bf16_bits(a).astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    want = rb(rb(x).astype(np.float64) @ rb(W).astype(np.float64))
    got = run_session(sess, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=1e-6)
    assert {n.op_type for n in emulate_reduced(m).graph.node} == {"Cast", "MatMul"}
