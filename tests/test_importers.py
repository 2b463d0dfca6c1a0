"""Importers: minimal-LRU (Flax msgpack) and lru-reduction (PyTorch) checkpoints against their own outputs.

The fixtures in tests/fixtures/import/ were written by scripts/make_import_fixtures.py with JAX/Flax and torch:
each holds the checkpoint, inputs.npy and the outputs the original formulation computed (expected.npy). No JAX
is needed here. Mutated files for the error paths are written with the msgpack package in Flax's layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from lru_deploy.checkpoints import load_model
from lru_deploy.cli import main
from lru_deploy.errors import CheckpointError
from lru_deploy.importers import default_out_dir, import_lru_reduction, import_minimal_lru
from lru_deploy.importers.msgpack_flax import flatten, read_flax_msgpack

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "import"
MINIMAL = ["minimal_lru_layer_prenorm_none", "minimal_lru_layer_postnorm_mean", "minimal_lru_batch_prenorm_last"]
DLRU = FIXTURES / "lru_reduction_dlru"
ATOL = 1e-5


def meta(name: str) -> dict:
    return json.loads((FIXTURES / name / "meta.json").read_text())


def run(model, folder: Path, mode: str = "parallel") -> np.ndarray:
    x = torch.from_numpy(np.load(folder / "inputs.npy"))
    with torch.no_grad():
        return model(x, mode=mode).outputs.numpy()


def import_fixture(name: str, **over):
    m = meta(name)
    opts = dict(prenorm=m["prenorm"], pooling=m["pooling"])
    opts.update(over)
    return import_minimal_lru(FIXTURES / name / "params.msgpack", **opts)


def flax_bytes(tree: dict) -> bytes:
    """Flax's msgpack layout: ndarray leaves as ExtType 1 of msgpack (shape, dtype name, C-order bytes)."""
    def ext(a):
        if isinstance(a, np.ndarray):
            return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes("C")), use_bin_type=True))
        raise TypeError(type(a))
    return msgpack.packb(tree, default=ext, use_bin_type=True)


def fixture_tree(name: str = "minimal_lru_batch_prenorm_last") -> dict:
    return read_flax_msgpack(FIXTURES / name / "params.msgpack")


def problems_of(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as e:
        fn(*args, **kwargs)
    return e.value.render()


# ------------------------------------------------------------------------------------------- parity with origin

@pytest.mark.parametrize("name", MINIMAL)
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_minimal_lru_matches_flax_outputs(name, mode):
    got = run(import_fixture(name), FIXTURES / name, mode)
    want = np.load(FIXTURES / name / "expected.npy")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_lru_reduction_matches_torch_outputs():
    for mode in ("parallel", "sequential"):
        got = run(import_lru_reduction(DLRU / "state.pt"), DLRU, mode)
        np.testing.assert_allclose(got, np.load(DLRU / "expected.npy"), atol=ATOL, rtol=0)


@pytest.mark.parametrize("over", [dict(prenorm=False), dict(log_softmax=False), dict(pooling="last")])
def test_fixture_tells_wrong_options_apart(over):
    name = "minimal_lru_layer_prenorm_none" if "pooling" not in over else "minimal_lru_layer_postnorm_mean"
    got = run(import_fixture(name, **over), FIXTURES / name)
    want = np.load(FIXTURES / name / "expected.npy")
    assert got.shape != want.shape or np.abs(got - want).max() > 1e-3


def test_imported_configs():
    c = import_fixture("minimal_lru_layer_prenorm_none").cfg
    assert (c.norm, c.norm_eps, c.gelu, c.skip, c.log_softmax, c.d_input, c.vocab_size) == \
        ("layer", 1e-6, "tanh", "diagonal", True, 3, None)
    assert (c.d_model, c.d_hidden, c.n_layers, c.d_output) == (8, 12, 2, 5)
    c = import_fixture("minimal_lru_batch_prenorm_last").cfg
    assert (c.norm, c.norm_eps, c.pooling) == ("batch", 1e-5, "last")
    c = import_lru_reduction(DLRU / "state.pt").cfg
    m = meta("lru_reduction_dlru")
    assert (c.norm, c.prenorm, c.norm_eps, c.gelu, c.skip, c.pooling, c.log_softmax) == \
        ("layer", True, 1e-5, "exact", "full", "none", False)
    assert (c.d_model, c.d_hidden, c.d_input, c.d_output) == (m["d_model"], m["d_state"], 3, 2)
    assert (c.r_min, c.r_max, c.max_phase) == (m["rmin"], m["rmax"], pytest.approx(m["max_phase"]))


def test_batch_stats_are_used():
    """The fixture's running statistics are non-trivial: the imported buffers hold them, not (0, 1)."""
    model = import_fixture("minimal_lru_batch_prenorm_last")
    stats = flatten(fixture_tree()["batch_stats"])
    for i in range(2):
        np.testing.assert_array_equal(model.layers[i].norm.running_var.numpy(),
                                      stats[f"encoder/layers_{i}/normalization/var"])
        assert np.abs(model.layers[i].norm.running_mean.numpy()).max() > 0.1


# ------------------------------------------------------------------------------------------------------ CLI

def test_cli_minimal_lru_end_to_end(tmp_path, capsys):
    name = "minimal_lru_layer_postnorm_mean"
    out = tmp_path / "model"
    rc = main(["import", "minimal-lru", str(FIXTURES / name / "params.msgpack"), "--postnorm", "--pooling", "mean",
               "--out", str(out)])
    assert rc == 0
    assert "norm layer (post, eps 1e-06)" in capsys.readouterr().out
    np.testing.assert_allclose(run(load_model(out), FIXTURES / name), np.load(FIXTURES / name / "expected.npy"),
                               atol=ATOL, rtol=0)
    assert main(["import", "minimal-lru", str(FIXTURES / name / "params.msgpack"), "--postnorm", "--pooling", "mean",
                 "--out", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["minimal_lru_batch_prenorm_last", "minimal_lru_layer_prenorm_none",
                                  "minimal_lru_layer_postnorm_mean"])
@pytest.mark.parametrize("flags, missing", [([], "--prenorm or --postnorm and --pooling"),
                                            (["--prenorm"], "missing: --pooling"),
                                            (["--pooling", "mean"], "missing: --prenorm or --postnorm")])
def test_cli_minimal_lru_requires_what_the_file_cannot_tell(tmp_path, capsys, name, flags, missing):
    """A Flax msgpack records neither the pooling nor pre/post-norm: guessing built the wrong model for the
    pooling last and none fixtures, so both are required."""
    rc = main(["import", "minimal-lru", str(FIXTURES / name / "params.msgpack"), *flags, "--out",
               str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 1 and missing in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_cli_default_out_dir_and_torch(tmp_path, capsys):
    src = tmp_path / "ckpt" / "state.pt"
    src.parent.mkdir()
    shutil.copy(DLRU / "state.pt", src)
    assert main(["import", "torch", str(src), "--format", "lru-reduction"]) == 0
    out = default_out_dir(src)
    assert out == tmp_path / "ckpt" / "state-lru-deploy" and (out / "config.json").exists()
    np.testing.assert_allclose(run(load_model(out), DLRU), np.load(DLRU / "expected.npy"), atol=ATOL, rtol=0)
    assert main(["import", "torch", str(src), "--format", "lru-reduction", "--overwrite"]) == 0
    assert main(["import", "torch", str(src), "--overwrite"]) == 0  # the layout is detected from the keys
    assert "(lru-reduction layout)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an unknown --format is argparse's error
        main(["import", "torch", str(src), "--format", "dlru"])


def test_cli_reports_problems_without_traceback(tmp_path, capsys):
    bad = tmp_path / "notes.msgpack"
    bad.write_text("these are not parameters\n")
    assert main(["import", "minimal-lru", str(bad), "--prenorm", "--pooling", "mean"]) == 1
    err = capsys.readouterr().err
    assert "not a Flax msgpack checkpoint" in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "notes-lru-deploy").exists()


@pytest.mark.parametrize("depth", [65, 900, 100_000])
def test_a_deeply_nested_msgpack_is_not_a_flax_checkpoint(tmp_path, capsys, depth):
    """Maps nested far deeper than a parameter tree: one clear error, never a RecursionError."""
    deep = tmp_path / "deep.msgpack"
    deep.write_bytes(b"\x81\xa1x" * depth + b"\x01")  # {"x": {"x": ... 1}}
    assert main(["import", "minimal-lru", str(deep), "--prenorm", "--pooling", "mean", "--out",
                 str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "is not a Flax checkpoint" in err and "nest" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------- minimal-LRU bad input

def write(tmp_path, tree, name="p.msgpack") -> Path:
    p = tmp_path / name
    p.write_bytes(flax_bytes(tree))
    return p


def test_not_a_map(tmp_path):
    p = tmp_path / "x.msgpack"
    p.write_bytes(msgpack.packb([1, 2, 3]))
    assert "holds a list" in problems_of(import_minimal_lru, p)
    assert "no 'params' entry" in problems_of(import_minimal_lru, write(tmp_path, {"weights": {}}))
    assert "no such file" in problems_of(import_minimal_lru, tmp_path / "missing.msgpack")


def test_every_problem_listed_at_once(tmp_path):
    tree = fixture_tree()
    enc = tree["params"]["encoder"]
    enc["layers_0"]["out1"]["kernel"] = enc["layers_0"]["out1"]["kernel"][:, :5].copy()  # inconsistent shape
    del enc["layers_1"]["seq"]["C_im"]  # missing array
    enc["layers_1"]["seq"]["extra"] = np.zeros(3, np.float32)  # unknown key
    tree["params"]["decoder"]["bias"] = np.full(6, np.nan, np.float32)  # non-finite
    del tree["batch_stats"]["encoder"]["layers_1"]["normalization"]["var"]
    text = problems_of(import_minimal_lru, write(tmp_path, tree), pooling="last")
    for piece in ["params/encoder/layers_0/out1/kernel: shape (16, 5), want (16, 16)",
                  "missing: params/encoder/layers_1/seq/C_im, batch_stats/encoder/layers_1/normalization/var",
                  "unknown keys: params/encoder/layers_1/seq/extra", "params/decoder/bias: 6 NaN or Inf",
                  "4 problem(s)", "hint: the file must be flax.serialization.to_bytes"]:
        assert piece in text, (piece, text)


def test_missing_layer_is_a_gap(tmp_path):
    tree = fixture_tree()
    for part in ("params", "batch_stats"):
        enc = tree[part]["encoder"]
        enc["layers_2"] = enc.pop("layers_1")
        enc["layers_1"] = {} if part == "params" else enc.pop("layers_1", {})
    text = problems_of(import_minimal_lru, write(tmp_path, tree))
    assert "layers_{i} indices have a gap: found [0, 2], missing [1]" in text
    assert "layers_1/" not in text  # the gap is reported once, not key by key


def test_norm_kind_checks(tmp_path):
    tree = fixture_tree()
    assert "has batch_stats" in problems_of(import_minimal_lru, write(tmp_path, tree), norm="layer")
    del tree["batch_stats"]
    text = problems_of(import_minimal_lru, write(tmp_path, tree), norm="batch")
    assert "no batch_stats" in text
    # without batch_stats and without --norm the file reads as layer norm: sizes still check out
    assert import_minimal_lru(write(tmp_path, tree)).cfg.norm == "layer"


def test_bare_params_and_train_state_entries(tmp_path):
    tree = fixture_tree("minimal_lru_layer_prenorm_none")
    a = import_minimal_lru(write(tmp_path, tree["params"], "bare.msgpack"), pooling="none")
    tree["step"] = np.asarray(7)
    tree["opt_state"] = {"mu": np.zeros(2, np.float32)}
    b = import_minimal_lru(write(tmp_path, tree, "ts.msgpack"), pooling="none")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, atol=0, rtol=0)
    tree["optimizer"] = {}
    assert "unknown top-level entries: optimizer" in problems_of(import_minimal_lru, write(tmp_path, tree))


def test_embedding_encoder(tmp_path):
    tree = fixture_tree("minimal_lru_layer_prenorm_none")
    table = np.random.default_rng(0).standard_normal((11, 8)).astype(np.float32)
    tree["params"]["encoder"]["encoder"] = {"embedding": table}
    model = import_minimal_lru(write(tmp_path, tree), pooling="none")
    assert (model.cfg.vocab_size, model.cfg.d_input) == (11, None)
    np.testing.assert_array_equal(model.embedding.weight.detach().numpy(), table)


def test_reader_layouts(tmp_path):
    """bfloat16 widening, numpy scalars, chunked arrays and unreadable records."""
    bits = np.array([0x3F80, 0xC040], dtype="<u2")  # bfloat16 1.0, -3.0
    bf16 = msgpack.ExtType(1, msgpack.packb(((2,), "bfloat16", bits.tobytes()), use_bin_type=True))
    scalar = msgpack.ExtType(3, msgpack.packb(((), "int32", np.int32(5).tobytes()), use_bin_type=True))
    short = msgpack.ExtType(1, msgpack.packb(((4,), "float32", b"\0" * 8), use_bin_type=True))
    obj = msgpack.ExtType(1, msgpack.packb(((1,), "object", b"\0" * 8), use_bin_type=True))
    chunk = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 2},
             "chunks": {"0": msgpack.ExtType(1, msgpack.packb(((3,), "float32", np.arange(3, dtype=np.float32)
                                                                 .tobytes()), use_bin_type=True)),
                        "1": msgpack.ExtType(1, msgpack.packb(((1,), "float32", np.float32(3).tobytes()),
                                                              use_bin_type=True))}}
    p = tmp_path / "r.msgpack"
    p.write_bytes(msgpack.packb({"a": bf16, "b": scalar, "c": short, "d": obj, "e": chunk, "f": complex(1, 2)},
                                default=lambda c: msgpack.ExtType(2, msgpack.packb((c.real, c.imag)))))
    t = read_flax_msgpack(p)
    np.testing.assert_array_equal(t["a"], np.array([1.0, -3.0], np.float32))
    assert t["b"] == 5 and t["b"].shape == () and t["f"] == complex(1, 2)
    assert "8 bytes, want 16" in t["c"].reason and "unsupported dtype 'object'" in t["d"].reason
    np.testing.assert_array_equal(t["e"], np.arange(4, dtype=np.float32).reshape(2, 2))


def test_unreadable_arrays_are_listed(tmp_path):
    tree = fixture_tree("minimal_lru_layer_prenorm_none")
    raw = msgpack.packb(tree, default=lambda a: msgpack.ExtType(1, msgpack.packb(
        (a.shape, "object" if a.shape == (12,) else a.dtype.name, a.tobytes()), use_bin_type=True)))
    p = tmp_path / "u.msgpack"
    p.write_bytes(raw)
    text = problems_of(import_minimal_lru, p)
    assert "cannot infer the model sizes" in text and "seq/nu_log" in text  # nu_log is (12,): unreadable
    tree["params"]["decoder"]["kernel"] = tree["params"]["decoder"]["kernel"].astype(np.int32)
    assert "decoder/kernel" in problems_of(import_minimal_lru, write(tmp_path, tree))


def test_truncated_file(tmp_path):
    data = (FIXTURES / MINIMAL[0] / "params.msgpack").read_bytes()
    p = tmp_path / "t.msgpack"
    p.write_bytes(data[: len(data) // 2])
    assert "not a Flax msgpack checkpoint" in problems_of(import_minimal_lru, p)


# ----------------------------------------------------------------------------------- lru-reduction bad input

def dlru_sd() -> dict:
    return dict(torch.load(DLRU / "state.pt", weights_only=True)["model"])


def save_pt(tmp_path, obj, name="s.pt") -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


class Scaler:  # stands in for the sklearn scalers lru-reduction's scripts pickle beside the weights
    pass


def test_torch_files_that_are_not_state_dicts(tmp_path):
    txt = tmp_path / "x.pt"
    txt.write_text("hello")
    text = problems_of(import_lru_reduction, txt)
    assert "state_dict()" in text and "weights_only=False" not in text  # never the unsafe load
    pickled = save_pt(tmp_path, {"model": dlru_sd(), "scaler_u": Scaler()}, "pickled.pt")
    assert "sklearn scalers" in problems_of(import_lru_reduction, pickled)
    assert "not a state dict" in problems_of(import_lru_reduction, save_pt(tmp_path, {"a": 1, "b": "x"}))
    assert "holds a Tensor" in problems_of(import_lru_reduction, save_pt(tmp_path, torch.zeros(3)))


def test_torch_every_problem_listed(tmp_path):
    sd = dlru_sd()
    sd["blocks.0.lru.D"] = sd["blocks.0.lru.D"][:, :5].clone()  # inconsistent shape
    sd["blocks.1.lru.B"] = sd["blocks.1.lru.B"].real.clone()  # B must be complex
    del sd["blocks.1.ff.output_linear.0.bias"]
    sd["blocks.1.extra"] = torch.zeros(2)
    sd["blocks.3.ln.weight"] = sd["blocks.1.ln.weight"]  # gap: no block 2
    text = problems_of(import_lru_reduction, save_pt(tmp_path, {"model": sd, "cfg": {"d_state": 99}}))
    for piece in ["blocks.{i} indices have a gap: found [0, 1, 3], missing [2]",
                  "blocks.0.lru.D: shape (8, 5), want (8, 8)", "blocks.1.lru.B: dtype float32, want complex",
                  "missing: blocks.1.ff.output_linear.0.bias", "unknown keys: blocks.1.extra",
                  "cfg says d_state=99 but the weights have d_hidden 12", "hint: the file must be torch.save"]:
        assert piece in text, (piece, text)


@pytest.mark.parametrize("key, why", [("blocks.1.lru.gamma", "applied without exp"),
                                      ("blocks.0.lru.B_re", "another PyTorch port")])
def test_torch_refuses_other_meanings(tmp_path, key, why):
    sd = dlru_sd()
    sd[key] = torch.zeros(3)
    text = problems_of(import_lru_reduction, save_pt(tmp_path, sd))
    assert "not representable" in text and why in text and key in text and "unknown keys" not in text
    cfg_mlp = problems_of(import_lru_reduction, save_pt(tmp_path, {"model": dlru_sd(), "cfg": {"ff": "MLP"}}))
    assert "cfg says ff='MLP' but the weights hold the GLU feed-forward's keys" in cfg_mlp
    cfg_other = problems_of(import_lru_reduction, save_pt(tmp_path, {"model": dlru_sd(), "cfg": {"ff": "SwiGLU"}}))
    assert "not representable: cfg ff='SwiGLU'" in cfg_other


def test_torch_variants_that_map(tmp_path):
    sd = dlru_sd()
    ref = import_lru_reduction(save_pt(tmp_path, sd, "ref.pt"))
    compiled = import_lru_reduction(save_pt(tmp_path, {f"_orig_mod.{k}": v for k, v in sd.items()}, "c.pt"))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v, atol=0, rtol=0)
    # nn.LayerNorm(bias=False): the same model as a zero bias
    zero = {k: (torch.zeros_like(v) if k.endswith("ln.bias") else v) for k, v in sd.items()}
    nobias = {k: v for k, v in sd.items() if not k.endswith("ln.bias")}
    a = import_lru_reduction(save_pt(tmp_path, zero, "z.pt"))
    b = import_lru_reduction(save_pt(tmp_path, nobias, "n.pt"))
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, atol=0, rtol=0)
    # a diagonal D (H,) maps to skip='diagonal' and computes u * D
    diag = {k: (torch.diagonal(v).clone() if k.endswith("lru.D") else v) for k, v in sd.items()}
    m = import_lru_reduction(save_pt(tmp_path, diag, "d.pt"))
    assert m.cfg.skip == "diagonal"
    full = {k: (torch.diag(torch.diagonal(v)) if k.endswith("lru.D") else v) for k, v in sd.items()}
    want = run(import_lru_reduction(save_pt(tmp_path, full, "f.pt")), DLRU)
    np.testing.assert_allclose(run(m, DLRU), want, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- export (ONNX)

def test_imported_minimal_lru_exports(tmp_path):
    """The imported model's fp32 prefill graph in onnxruntime agrees with minimal-LRU's own outputs."""
    export = pytest.importorskip("lru_deploy.export")
    ort = pytest.importorskip("onnxruntime")
    name = "minimal_lru_layer_postnorm_mean"  # mean pooling: the graph carries pool_sum / pool_count too
    model_dir = tmp_path / "model"
    assert main(["import", "minimal-lru", str(FIXTURES / name / "params.msgpack"), "--postnorm",
                 "--pooling", "mean", "--out", str(model_dir)]) == 0
    out = export.export_model(model_dir, tmp_path / "export", export.ExportOptions(precisions=("fp32",), chunk=8,
                              max_seq=256, validate=False, lint=False))
    sess = ort.InferenceSession(str(out / "fp32" / "prefill.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(FIXTURES / name / "inputs.npy")
    cfg = load_model(model_dir).cfg
    feeds = {"inputs": x, "state": np.zeros((2, cfg.n_layers, 2, cfg.d_hidden), np.float32),
             "pool_sum": np.zeros((2, cfg.d_model), np.float32), "pool_count": np.zeros((2, 1), np.float32)}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    np.testing.assert_allclose(got["outputs"], np.load(FIXTURES / name / "expected.npy"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["pool_count_out"], np.full((2, 1), 20.0, np.float32), atol=0, rtol=0)


@pytest.mark.parametrize("name", MINIMAL)
def test_imported_minimal_lru_export_and_check_agree_with_flax(name, tmp_path):
    """Done-means of the importer issue: import, export (validated, linted), check; all within 1e-4 of minimal-LRU."""
    from lru_deploy.export import ExportOptions, export_model
    from lru_deploy.runtime.onnxruntime import ort_session, run_session
    from lru_deploy.parity import CheckOptions, check
    m = meta(name)
    model_dir = tmp_path / "model"
    flags = ["--prenorm" if m["prenorm"] else "--postnorm", "--pooling", m["pooling"]]
    assert main(["import", "minimal-lru", str(FIXTURES / name / "params.msgpack"), *flags,
                 "--out", str(model_dir)]) == 0
    out = export_model(model_dir, tmp_path / "export", ExportOptions(precisions=("fp32",), chunk=8, max_seq=256,
                       long_seq=100))
    cfg = load_model(model_dir).cfg
    x = np.load(FIXTURES / name / "inputs.npy")
    feeds = {"inputs": x, "state": np.zeros((x.shape[0], cfg.n_layers, 2, cfg.d_hidden), np.float32)}
    if cfg.pooling == "mean":
        feeds.update(pool_sum=np.zeros((x.shape[0], cfg.d_model), np.float32),
                     pool_count=np.zeros((x.shape[0], 1), np.float32))
    sess, _ = ort_session(out / "fp32" / "prefill.onnx", "fp32")
    got = run_session(sess, feeds)["outputs"]
    np.testing.assert_allclose(got, np.load(FIXTURES / name / "expected.npy"), atol=1e-4, rtol=0)
    report = check(out, options=CheckOptions(quick=True, drift_steps=200))
    assert report["pass"], report["failures"]
