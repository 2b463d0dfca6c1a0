"""The TensorRT-readiness lint: each rule catches its problem in a small hand-built graph, a clean graph passes.

The graphs are built with onnx.helper here (independent of the exporter). The clean ones are checked with
onnx.checker and run once in ONNX Runtime, so "clean" means a real, valid graph and not just one the lint likes.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from lru_deploy import contract
from lru_deploy.cli import main
from lru_deploy.files import file_sha256
from lru_deploy.manifest import ExportManifest
from lru_deploy.errors import InputError
from lru_deploy.lint import RULES, Finding, LintReport, lint_export, lint_model
from lru_deploy.model import LRUConfig

CFG = LRUConfig(vocab_size=16, d_model=8, d_hidden=4, n_layers=1, d_output=16).validate()
INT_MAX = np.iinfo(np.int64).max


def const(name, value, dtype=np.int64):
    return nh.from_array(np.asarray(value, dtype=dtype), name)


def vi(name, elem, shape):
    return oh.make_tensor_value_info(name, elem, shape)


def build(nodes, inputs, outputs, inits=(), opset=18, domains=()):
    g = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset), *domains], ir_version=9)


def prefill_parts(seq_dim="seq", batch_dim="batch"):
    """A token prefill graph in the contract's shape, with the shape arithmetic an exporter writes: the sequence
    length read with Shape, padded to a chunk multiple (dynamic Pad pads), sliced back, divided into float data."""
    rng = np.random.default_rng(0)
    inits = [const("emb", rng.standard_normal((16, 8)), np.float32),
             const("w_out", rng.standard_normal((8, 16)), np.float32),
             const("w_s", rng.standard_normal((8, 8)), np.float32),
             const("i1", 1), const("c64", 64), const("zeros4", [0, 0, 0, 0]), const("zero1", [0]),
             const("ax1", [1]), const("ax2", [2]), const("ax0", [0]), const("m1", [-1]), const("imax", [INT_MAX]),
             const("st_shape", [0, 1, 2, 4])]
    nodes = [
        oh.make_node("Gather", ["emb", "input_ids"], ["x"]),
        oh.make_node("Shape", ["x"], ["shp"]),
        oh.make_node("Gather", ["shp", "i1"], ["L"]),
        oh.make_node("Cast", ["L"], ["Lf"], to=TP.FLOAT),
        oh.make_node("Div", ["x", "Lf"], ["xs"]),
        oh.make_node("ReduceMean", ["xs", "ax2"], ["mu"], keepdims=1),
        oh.make_node("Sub", ["xs", "mu"], ["xc"]),
        oh.make_node("Mod", ["L", "c64"], ["r"]),
        oh.make_node("Sub", ["c64", "r"], ["padn"]),
        oh.make_node("Unsqueeze", ["padn", "ax0"], ["padn1"]),
        oh.make_node("Concat", ["zeros4", "padn1", "zero1"], ["pads"], axis=0),
        oh.make_node("Pad", ["xc", "pads"], ["xp"]),
        oh.make_node("Unsqueeze", ["L", "ax0"], ["L1"]),
        oh.make_node("Slice", ["xp", "zero1", "L1", "ax1"], ["xb"]),
        oh.make_node("MatMul", ["xb", "w_out"], ["outputs"]),
        oh.make_node("Slice", ["xc", "m1", "imax", "ax1"], ["last"]),
        oh.make_node("MatMul", ["last", "w_s"], ["hs"]),
        oh.make_node("Reshape", ["hs", "st_shape"], ["h4"]),
        oh.make_node("Add", ["state", "h4"], ["state_out"]),
    ]
    inputs = [vi("input_ids", TP.INT64, [batch_dim, seq_dim]), vi("state", TP.FLOAT, ["batch", 1, 2, 4])]
    outputs = [vi("outputs", TP.FLOAT, ["batch", "seq", 16]), vi("state_out", TP.FLOAT, ["batch", 1, 2, 4])]
    return nodes, inputs, outputs, inits


def clean_prefill(**kw):
    return build(*prefill_parts(**kw))


def clean_step():
    rng = np.random.default_rng(1)
    inits = [const("emb", rng.standard_normal((16, 8)), np.float32),
             const("w_out", rng.standard_normal((8, 16)), np.float32),
             const("w_s", rng.standard_normal((8, 8)), np.float32), const("st_shape", [0, 1, 2, 4])]
    nodes = [oh.make_node("Gather", ["emb", "input_ids"], ["x"]),
             oh.make_node("MatMul", ["x", "w_out"], ["outputs"]),
             oh.make_node("MatMul", ["x", "w_s"], ["hs"]),
             oh.make_node("Reshape", ["hs", "st_shape"], ["h4"]),
             oh.make_node("Add", ["state", "h4"], ["state_out"])]
    return build(nodes, [vi("input_ids", TP.INT64, ["batch"]), vi("state", TP.FLOAT, ["batch", 1, 2, 4])],
                 [vi("outputs", TP.FLOAT, ["batch", 16]), vi("state_out", TP.FLOAT, ["batch", 1, 2, 4])], inits)


def with_changes(nodes=(), inputs=None, outputs=None, inits=(), replace=None, opset=18):
    """The clean prefill with extra nodes/inits, optionally with a node (by output name) replaced."""
    n0, i0, o0, k0 = prefill_parts()
    if replace:
        n0 = [replace.get(n.output[0], n) for n in n0]
    return build(n0 + list(nodes), inputs if inputs is not None else i0, outputs if outputs is not None else o0,
                 k0 + list(inits), opset=opset)


def rules(findings):
    return sorted({f.rule for f in findings})


def only(findings, rule):
    return [f for f in findings if f.rule == rule]


# ------------------------------------------------------------------ the clean graphs

@pytest.mark.parametrize("graph", ["prefill", "step"])
def test_clean_graph_is_valid_and_passes(graph):
    m = clean_prefill() if graph == "prefill" else clean_step()
    onnx.checker.check_model(m, full_check=True)
    import onnxruntime as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64) if graph == "prefill" else np.array([1, 2], np.int64)
    outs = sess.run(None, {"input_ids": ids, "state": np.zeros((2, 1, 2, 4), np.float32)})
    assert outs[0].shape == ((2, 3, 16) if graph == "prefill" else (2, 16))
    assert lint_model(m, graph, CFG) == []


# ------------------------------------------------------------------ opset and ops

@pytest.mark.parametrize("opset", [8, 21])
def test_opset_outside_trt10_range(opset):
    m = build([oh.make_node("Relu", ["x"], ["y"])], [vi("x", TP.FLOAT, ["batch", 4])],
              [vi("y", TP.FLOAT, ["batch", 4])], opset=opset)
    f = lint_model(m)
    assert rules(f) == ["opset"] and f[0].severity == "error" and f"opset {opset}" in f[0].message
    # the range is data: TensorRT 10.15 parses opset 21, nothing parses opset 8
    assert rules(lint_model(m, trt_version=(10, 15))) == ([] if opset == 21 else ["opset"])


def test_unsupported_ops():
    made_up = oh.make_node("FrobnicateV2", ["x"], ["a"])
    det = oh.make_node("Det", ["x"], ["b"])  # a real ONNX op the TensorRT table marks N
    custom = oh.make_node("MyOp", ["x"], ["c"], domain="com.example")
    m = build([made_up, det, custom], [vi("x", TP.FLOAT, ["batch", 4, 4])],
              [vi(n, TP.FLOAT, None) for n in "abc"], domains=[oh.make_opsetid("com.example", 1)])
    f = lint_model(m)
    unsupported = only(f, "op-unsupported")
    assert sorted(x.where for x in unsupported) == ["Det", "FrobnicateV2", "MyOp"]
    assert rules(f) == ["op-unsupported", "opset-domain"]


def test_local_function_bodies_are_checked():
    def model(body_op):
        body = [oh.make_node("Constant", [], ["a"], value=const("a", [0])),
                oh.make_node("Unsqueeze", ["x", "a"], ["u"]), oh.make_node(body_op, ["u"], ["y"])]
        fn = oh.make_function("local", "Block", ["x"], ["y"], body, [oh.make_opsetid("", 18)])
        m = build([oh.make_node("Block", ["x"], ["y"], domain="local")], [vi("x", TP.FLOAT, ["batch", 4, 4])],
                  [vi("y", TP.FLOAT, None)], domains=[oh.make_opsetid("local", 1)])
        m.functions.append(fn)
        return m
    assert lint_model(model("Relu")) == []  # the Constant inside the body counts as constant axes
    assert [(x.rule, x.where) for x in lint_model(model("Det"))] == [("op-unsupported", "Block/Det")]


def test_op_newer_than_target_trt():
    m = build([oh.make_node("HannWindow", ["n"], ["w"])], [vi("n", TP.INT64, [])], [vi("w", TP.FLOAT, None)])
    f = only(lint_model(m), "op-unsupported")
    assert len(f) == 1 and "10.4" in f[0].message
    assert only(lint_model(m, trt_version=(10, 4)), "op-unsupported") == []


def test_forbidden_loop_and_cumsum():
    body = oh.make_graph([oh.make_node("Identity", ["cond_in"], ["cond_out"]),
                          oh.make_node("Add", ["v_in", "v_in"], ["v_out"])], "body",
                         [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("v_in", TP.FLOAT, ["batch", 4])],
                         [vi("cond_out", TP.BOOL, []), vi("v_out", TP.FLOAT, ["batch", 4])])
    nodes = [oh.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body),
             oh.make_node("CumSum", ["y", "axis"], ["z"])]
    m = build(nodes, [vi("x", TP.FLOAT, ["batch", 4])], [vi("z", TP.FLOAT, ["batch", 4])],
              [const("trip", 3), const("cond", True, np.bool_), const("axis", 1)])
    f = only(lint_model(m), "op-forbidden")
    assert sorted(x.where for x in f) == ["CumSum", "Loop"]


def test_data_dependent_shape():
    m = with_changes([oh.make_node("NonZero", ["xc"], ["nz"])])
    f = lint_model(m, "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("data-dependent-shape", "NonZero")]


def test_slice_and_pad_with_dynamic_axes():
    # axes computed from the data's shape: Slice takes them from TensorRT 10.3, Pad from 10.4; 10.0 rejects both.
    # (The clean graph's Pad has dynamic `pads`, which the table allows.)
    nodes = [oh.make_node("Shape", ["xc"], ["s2"]), oh.make_node("Slice", ["s2", "ax0", "ax1"], ["axes_dyn"]),
             oh.make_node("Sub", ["axes_dyn", "ax1"], ["axes_dyn0"]),
             oh.make_node("Slice", ["xc", "zero1", "ax1", "axes_dyn0"], ["sl"], name="s"),
             oh.make_node("Pad", ["xc", "pads2", "", "axes_dyn0"], ["pd"], name="p")]
    m = with_changes(nodes, inits=[const("pads2", [0, 3])])
    f = lint_model(m, "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("op-restriction", "Slice s"), ("op-restriction", "Pad p")]
    assert "`axes`" in f[0].message and "10.3" in f[0].message and "10.4" in f[1].message
    assert [x.where for x in lint_model(m, "prefill", CFG, trt_version=(10, 3))] == ["Pad p"]
    assert lint_model(m, "prefill", CFG, trt_version=(10, 4)) == []


def test_op_attribute_and_dtype_restrictions():
    resize = oh.make_node("Resize", ["xc", "", "scales"], ["rz"], mode="cubic")
    topk = oh.make_node("TopK", ["xc", "k"], ["tv", "ti"], sorted=0)
    mm_int = oh.make_node("MatMul", ["shp", "shp"], ["shp2"])  # MatMul takes FP32/FP16/BF16 only
    cast16 = oh.make_node("Cast", ["xc"], ["x16"], to=TP.INT16)  # not a TensorRT type
    m = with_changes([resize, topk, mm_int, cast16], inits=[const("scales", [1, 1, 2], np.float32), const("k", [2])])
    f = lint_model(m, "prefill", CFG)
    got = {(x.rule, x.where) for x in f}
    assert got == {("op-restriction", "Resize"), ("op-restriction", "TopK"), ("op-dtype", "MatMul"),
                   ("op-dtype", "Cast"), ("int64-data", "TopK")}  # TopK's int64 indices are data too
    assert [x.message.split(";")[0] for x in only(f, "op-dtype")] == ["MatMul on INT64 (shp)", "Cast to INT16"]


# ------------------------------------------------------------------ types

def test_float64_initializer():
    m = with_changes([oh.make_node("Cast", ["dbl"], ["dblf"], to=TP.FLOAT)], inits=[const("dbl", [1.5], np.float64)])
    f = lint_model(m, "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("dtype-float64", "dbl")]


def test_complex_input():
    m = build([oh.make_node("Identity", ["z"], ["w"])], [vi("z", TP.COMPLEX64, ["batch", 4])],
              [vi("w", TP.COMPLEX64, ["batch", 4])])
    f = lint_model(m)
    assert [(x.rule, x.where) for x in f] == [("dtype-complex", "z"), ("dtype-complex", "w")]


def test_cast_to_double_reported_once():
    nodes = [oh.make_node("Cast", ["xc"], ["x64"], to=TP.DOUBLE, name="up"),
             oh.make_node("Cast", ["x64"], ["x32"], to=TP.FLOAT, name="down")]
    f = lint_model(with_changes(nodes), "prefill", CFG)
    # one finding for the cast: not a second one for its inferred float64 output, nor for the Cast back
    assert [(x.rule, x.where) for x in f] == [("dtype-float64", "Cast up")]
    assert "Cast output (to=DOUBLE)" in f[0].message


# ------------------------------------------------------------------ int64 dataflow

def test_int64_input_used_as_float_data():
    extra = vi("positions", TP.INT64, ["batch", "seq"])
    nodes = [oh.make_node("Cast", ["positions"], ["pf"], to=TP.FLOAT),
             oh.make_node("Unsqueeze", ["pf", "ax2"], ["pf3"]),
             oh.make_node("Add", ["xc", "pf3"], ["xcp"])]
    _, inputs, _, _ = prefill_parts()
    f = lint_model(with_changes(nodes, inputs=inputs + [extra]), "prefill", CFG)
    assert {(x.rule, x.where) for x in f} == {("int64-data", "positions"), ("contract", "positions")}


def test_token_ids_in_arithmetic():
    nodes = [oh.make_node("Cast", ["input_ids"], ["idf"], to=TP.FLOAT, name="ids_as_float"),
             oh.make_node("Add", ["input_ids", "i1"], ["ids1"], name="shift_ids"),
             oh.make_node("Gather", ["emb", "ids1"], ["x2"])]
    f = lint_model(with_changes(nodes), "prefill", CFG)
    # each misuse once; the shifted ids' int64 result is not reported again downstream
    assert [(x.rule, x.where) for x in f] == [("int64-ids", "Cast ids_as_float"), ("int64-ids", "Add shift_ids")]


def test_token_ids_moved_then_gathered_is_fine():
    # ids reshaped, sliced to the last position and cast to int32 before the lookup: still token ids
    nodes = [oh.make_node("Slice", ["input_ids", "m1", "imax", "ax1"], ["last_id"]),
             oh.make_node("Cast", ["last_id"], ["last_id32"], to=TP.INT32),
             oh.make_node("Gather", ["emb", "last_id32"], ["xe"])]
    assert lint_model(with_changes(nodes), "prefill", CFG) == []


def test_int64_from_float_data():
    nodes = [oh.make_node("ArgMax", ["xc"], ["am"], axis=2)]
    f = lint_model(with_changes(nodes), "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("int64-data", "ArgMax")]


# ------------------------------------------------------------------ shapes and contract

def test_fixed_batch_axis():
    f = lint_model(clean_prefill(batch_dim=2), "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("dynamic-batch", "input_ids")]


def test_fixed_prefill_seq_axis_and_negative_dim():
    nodes, inputs, outputs, inits = prefill_parts(seq_dim=64)
    outputs = [outputs[0], vi("state_out", TP.FLOAT, ["batch", -1, 2, 4])]
    f = lint_model(build(nodes, inputs, outputs, inits), "prefill", CFG)
    assert {(x.rule, x.where) for x in f} >= {("dynamic-seq", "input_ids"), ("negative-dim", "state_out")}
    # the step graph has no seq axis: a fixed axis 1 is not a seq finding there
    assert only(lint_model(build(nodes, inputs, outputs, inits), "step"), "dynamic-seq") == []


def test_contract_names_mismatch():
    nodes, inputs, outputs, inits = prefill_parts()
    inputs[1] = vi("h0", TP.FLOAT, ["batch", 1, 2, 4])
    nodes = [oh.make_node("Add", ["h0", "h4"], ["state_out"]) if n.output[0] == "state_out" else n for n in nodes]
    f = lint_model(build(nodes, inputs, outputs, inits), "prefill", CFG)
    msgs = [x.message for x in only(f, "contract")]
    assert rules(f) == ["contract"] and len(msgs) == 2
    assert any("no input 'state'" in s for s in msgs) and any("unexpected tensor 'h0'" in s for s in msgs)
    # a mean-pooling config also wants the pooling tensors
    mean = LRUConfig(vocab_size=16, d_model=8, d_hidden=4, n_layers=1, d_output=16, pooling="mean").validate()
    f2 = lint_model(clean_prefill(), "prefill", mean)
    assert any("pool_sum" in x.message for x in only(f2, "contract"))


def test_contract_dtype_and_dims():
    nodes, inputs, outputs, inits = prefill_parts()
    outputs[1] = vi("state_out", TP.FLOAT, ["batch", 1, 2, 5])
    f = lint_model(build(nodes, inputs, outputs, inits), "prefill", CFG)
    assert [(x.rule, x.where) for x in f] == [("contract", "state_out")] and "axis 3 is 5" in f[0].message


def test_every_finding_at_once():
    nodes = [oh.make_node("CumSum", ["xc", "ax1s"], ["cs"]), oh.make_node("NonZero", ["xc"], ["nz"]),
             oh.make_node("Cast", ["xc"], ["d"], to=TP.DOUBLE), oh.make_node("Cast", ["input_ids"], ["f"], to=TP.FLOAT)]
    m = with_changes(nodes, inits=[const("ax1s", 1), const("w64", [1.0], np.float64)], opset=21)
    f = lint_model(m, "prefill", CFG)
    assert set(rules(f)) == {"opset", "op-forbidden", "data-dependent-shape", "dtype-float64", "int64-ids"}
    assert all(x.rule in RULES and x.severity in ("error", "warning") for x in f)
    assert len(only(f, "dtype-float64")) == 2


# ------------------------------------------------------------------ folders, report, CLI

def write_export(root, prefill=None, step=None, manifest=True, precisions=("fp32",)):
    for p in precisions:
        (root / p).mkdir(parents=True)
        onnx.save(prefill or clean_prefill(), str(root / p / "prefill.onnx"))
        if step is not False:
            onnx.save(step or clean_step(), str(root / p / "step.onnx"))
    if manifest:
        write_manifest(root, CFG, precisions, step is not False)
    return root


def write_manifest(root, cfg, precisions=("fp32",), with_step=True):
    """A complete manifest for the graphs under root, as export writes it (hashes included)."""
    graphs = {p: {g: {"path": f"{p}/{g}.onnx", "sha256": file_sha256(root / p / f"{g}.onnx")}
                  for g in ("prefill", "step") if (root / p / f"{g}.onnx").exists()} for p in precisions}
    ExportManifest(name=root.name, config=cfg.to_dict(), contract=contract.contract(cfg), graphs=graphs,
                   chunk=32, max_seq=64, opset=18, precisions=list(precisions)).write(root)


def test_lint_export_clean_and_report(tmp_path):
    rep = lint_export(write_export(tmp_path / "exp", precisions=("fp32", "fp16")))
    assert isinstance(rep, LintReport) and rep.ok and rep.findings == []
    assert rep.graphs == ["fp16/prefill", "fp16/step", "fp32/prefill", "fp32/step"]
    assert rep.table() == "no findings" and "4 graph(s), 0 error(s)" in rep.summary()


def test_lint_export_uses_manifest_config(tmp_path):
    root = write_export(tmp_path / "exp", manifest=False)
    write_manifest(root, LRUConfig(**dict(CFG.to_dict(), n_layers=2)))
    rep = lint_export(root)
    assert not rep.ok and {f.graph for f in rep.findings} == {"fp32/prefill", "fp32/step"}
    assert {f.rule for f in rep.findings} == {"contract"}
    # a config handed in wins over the manifest (export lints before it writes the manifest)
    assert lint_export(root, cfg=CFG).ok


def test_lint_export_missing_step_and_unreadable(tmp_path):
    root = write_export(tmp_path / "exp", step=False)
    (root / "fp16").mkdir()
    (root / "fp16" / "prefill.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    rep = lint_export(root)
    got = {(f.graph, f.rule) for f in rep.findings}
    assert got == {("fp32/step", "missing-graph"), ("fp16/step", "missing-graph"), ("fp16/prefill", "load"),
                   ("manifest.json", "manifest")}  # the manifest names a step graph that is not there


def test_lint_single_file_and_table(tmp_path):
    root = write_export(tmp_path / "exp", prefill=with_changes([oh.make_node("CumSum", ["xc", "ax1s"], ["cs"])],
                                                               inits=[const("ax1s", 1)]))
    rep = lint_export(root / "fp32" / "prefill.onnx")
    assert rep.graphs == ["fp32/prefill.onnx"] and [f.rule for f in rep.findings] == ["op-forbidden"]
    lines = rep.table().splitlines()
    assert lines[0].split() == ["graph", "rule", "severity", "node/tensor", "message"]
    assert lines[2].split()[:4] == ["fp32/prefill.onnx", "op-forbidden", "error", "CumSum"]
    assert rep.to_dict()["errors"] == 1 and Finding(**rep.to_dict()["findings"][0]) == rep.findings[0]


def test_cli_clean_folder_exit_0(tmp_path, capsys):
    root = write_export(tmp_path / "exp")
    assert main(["lint", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no findings" in out and "2 graph(s), 0 error(s)" in out


def test_cli_bad_folder_exit_1_with_table(tmp_path, capsys):
    root = write_export(tmp_path / "exp", prefill=clean_prefill(batch_dim=1))
    assert main(["lint", str(root)]) == 1
    out = capsys.readouterr().out
    assert "dynamic-batch" in out and "fp32/prefill" in out and "NOT TensorRT-ready" in out
    assert main(["lint", "--json", str(root)]) == 1
    assert json.loads(capsys.readouterr().out)["findings"][0]["rule"] == "dynamic-batch"


def test_cli_folder_without_graphs(tmp_path, capsys):
    (tmp_path / "empty" / "fp32").mkdir(parents=True)
    assert main(["lint", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "no <precision>/prefill.onnx" in err and "hint:" in err and "Traceback" not in err
    with pytest.raises(InputError):
        lint_export(tmp_path / "nowhere")
