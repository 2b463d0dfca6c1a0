"""The PyTorch layouts detected from their keys, against each upstream's own outputs.

Every fixture in tests/fixtures/import/{gothos_lru_pytorch, lrnnx_classifier, lrnnx_lm, lrurec, sysid_dwn_mlp}
was written by the upstream's real code (scripts/make_import_fixtures.py torch-layouts): its checkpoint as its
code saves it, and `io.npz` with fixed inputs and the outputs that code computed on them (float32). The
imported model must reproduce those outputs in float64 reference mode (relative L2 <= 1e-5), and its export must
validate in every precision, lint and pass `check`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lru_deploy.checkpoints import load_model
from lru_deploy.cli import main
from lru_deploy.errors import CheckpointError
from lru_deploy.importers.torch_layouts import import_torch
from lru_deploy.model import gold

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "import"
# fixture folder: (checkpoint file, the layout it must be detected as)
LAYOUTS = {
    "gothos_lru_pytorch": ("state.pt", "gothos"),
    "lrnnx_classifier": ("model.pt", "lrnnx-classifier"),
    "lrnnx_lm": ("pytorch_model.bin", "lrnnx-lm"),
    "lrurec": ("best_acc_model.pth", "lrurec"),
    "sysid_dwn_mlp": ("ckpt.pt", "lru-reduction"),
}
REL_L2 = 1e-5  # float64 reference against the upstream's float32 outputs
ATOL_F32 = 1e-5  # the float32 reference against the same outputs, elementwise


def ckpt(name: str) -> Path:
    return FIXTURES / name / LAYOUTS[name][0]


def io(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURES / name / "io.npz")
    return data["inputs"], data["expected"]


def outputs(model, x: np.ndarray, mode: str = "parallel") -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x), mode=mode).outputs.numpy()


def rel_l2(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def problems_of(fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as e:
        fn(*args, **kwargs)
    return e.value.render()


def export(model_dir: Path, out: Path, **opts) -> Path:
    import lru_deploy.export as ex
    if hasattr(ex, "ExportOptions"):
        return ex.export_model(model_dir, out, ex.ExportOptions(**opts))
    return ex.export_model(model_dir, out, **opts)


# ------------------------------------------------------------------------------------ parity with the upstream

@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_detected_and_matches_upstream_outputs(name):
    model, layout = import_torch(ckpt(name))
    assert layout == LAYOUTS[name][1]
    x, want = io(name)
    for mode in ("parallel", "sequential"):
        got = outputs(gold(model), x, mode)
        assert got.shape == want.shape
        assert rel_l2(got, want) <= REL_L2, (mode, rel_l2(got, want))
    np.testing.assert_allclose(outputs(model, x), want, atol=ATOL_F32, rtol=1e-4)


def test_imported_configs():
    c = import_torch(ckpt("gothos_lru_pytorch"))[0].cfg
    assert (c.d_input, c.d_model, c.d_output, c.n_layers, c.encoder, c.decoder, c.norm, c.ff, c.residual,
            c.skip) == (3, 4, 4, 1, "none", "none", "none", "none", False, "full")
    c = import_torch(ckpt("lrnnx_classifier"))[0].cfg
    assert (c.n_layers, c.norm, c.prenorm, c.ff, c.residual, c.skip, c.pooling, c.decoder) == \
        (3, "layer", False, "none", True, "diagonal", "last", "linear")
    c = import_torch(ckpt("lrnnx_lm"))[0].cfg
    assert (c.vocab_size, c.d_output, c.norm, c.prenorm, c.ff, c.final_norm, c.decoder, c.decoder_bias) == \
        (56, 56, "rms", True, "none", True, "tied", False)  # vocabulary 50 padded to a multiple of 8
    c = import_torch(ckpt("lrurec"))[0].cfg
    assert (c.vocab_size, c.d_hidden, c.prenorm, c.skip, c.residual, c.lru_bias, c.ff, c.d_ff, c.ff_sublayer,
            c.embedding_norm, c.decoder, c.decoder_bias) == \
        (31, 16, False, "identity", False, True, "mlp", 32, True, True, "tied", True)
    c = import_torch(ckpt("sysid_dwn_mlp"))[0].cfg
    m = json.loads((FIXTURES / "sysid_dwn_mlp" / "meta.json").read_text())
    assert (c.ff, c.d_ff, c.activation, c.prenorm, c.skip, c.d_output) == ("mlp", 32, "gelu", True, "full", 2)
    assert m["format"] == "lru-reduction"


def test_options_the_file_cannot_tell(tmp_path, capsys):
    """--pooling and --norm-eps reach config.json, and change the outputs (the fixture tells them apart)."""
    x, want = io("lrnnx_classifier")
    out = tmp_path / "m"
    assert main(["import", "torch", str(ckpt("lrnnx_classifier")), "--pooling", "mean", "--norm-eps", "1e-3",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pooling"], cfg["norm_eps"]) == ("mean", 1e-3)
    assert rel_l2(outputs(gold(load_model(out)), x), want) > 1e-2
    eps = import_torch(ckpt("lrnnx_lm"), norm_eps=1e-3)[0]
    assert rel_l2(outputs(gold(eps), io("lrnnx_lm")[0]), io("lrnnx_lm")[1]) > 1e-4
    text = problems_of(import_torch, ckpt("lrnnx_lm"), pooling="max", norm_eps=2.0, format="mamba")
    assert "pooling must be one of" in text and "norm eps must be in (0, 1)" in text and "format must be" in text


def test_tied_and_untied_lm_head(tmp_path):
    sd = torch.load(ckpt("lrnnx_lm"), weights_only=True)
    assert sd["lm_head.weight"].data_ptr() == sd["backbone.embedding.weight"].data_ptr()  # tied by lrnnx itself
    untied = {k: v.clone() for k, v in sd.items()}
    untied["lm_head.weight"] = untied["lm_head.weight"] * 0.5
    torch.save(untied, tmp_path / "untied.pt")
    model, _ = import_torch(tmp_path / "untied.pt")
    assert (model.cfg.decoder, model.cfg.decoder_bias) == ("linear", False)
    torch.testing.assert_close(model.decoder.weight, untied["lm_head.weight"], atol=0, rtol=0)


# --------------------------------------------------------------------------------- wrappers and prefixes

@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "model_state_dict", "module.", "_orig_mod."])
def test_wrappers(tmp_path, wrap):
    sd = torch.load(ckpt("lrnnx_classifier"), weights_only=True)
    obj = ({wrap + k: v for k, v in sd.items()} if wrap.endswith(".") else sd if wrap == "bare"
           else {wrap: sd, "epoch": 3})
    torch.save(obj, tmp_path / "w.pt")
    model, layout = import_torch(tmp_path / "w.pt")
    assert layout == "lrnnx-classifier"
    x, want = io("lrnnx_classifier")
    assert rel_l2(outputs(gold(model), x), want) <= REL_L2


# ---------------------------------------------------------------------------------------------- refusals

def test_refuses_gamma_without_exp(tmp_path):
    """adrian-valente/lru_experiments model.py: DeepLRUModel.layers[i] is a SequenceLayer whose `LRU` computes
    B_norm = diag(gamma_log) @ (B_re + i B_im); the keys below are the ones its state dict has."""
    d_in, N, H = 2, 4, 3
    sd = {f"layers.0.LRU.{k}": torch.zeros(shape) for k, shape in (
        ("theta_log", (N,)), ("nu_log", (N,)), ("gamma_log", (N,)), ("B_re", (N, d_in)), ("B_im", (N, d_in)),
        ("C_re", (H, N)), ("C_im", (H, N)), ("D", (H, d_in)))}
    sd["layers.0.layers.0.weight"], sd["layers.0.layers.0.bias"] = torch.zeros(H, H), torch.zeros(H)
    torch.save(sd, tmp_path / "a.pt")
    text = problems_of(import_torch, tmp_path / "a.pt")
    assert "adrian-valente/lru_experiments" in text and "without exp" in text and "layers.0.LRU.gamma_log" in text
    for fmt in ("gothos", "lru-reduction"):  # forcing a layout does not get around the refusal
        assert "without exp" in problems_of(import_torch, tmp_path / "a.pt", format=fmt)
    sd2 = torch.load(ckpt("gothos_lru_pytorch"), weights_only=True)
    sd2["gamma"] = sd2.pop("gamma_log")  # a gamma stored without _log, anywhere
    torch.save(sd2, tmp_path / "g.pt")
    assert "stored without `_log` is applied without exp" in problems_of(import_torch, tmp_path / "g.pt")


def test_refuses_layer_norm_inside_the_layer(tmp_path):
    """zhongshuren/lru-pytorch lru.py: StackedLRU.lru_layers[i] is an LRU with its own layer_norm and
    params_log (3, 1, N); y = GELU(Re(C h)) + D * u, no identity residual."""
    N, H = 4, 3
    sd = {"encoder.weight": torch.zeros(H, 2), "encoder.bias": torch.zeros(H), "head.weight": torch.zeros(2, H),
          "head.bias": torch.zeros(2)}
    for k, shape in (("B", (N, H)), ("C", (H, N))):
        sd[f"lru_layers.0.{k}"] = torch.zeros(shape, dtype=torch.complex64)
    sd.update({"lru_layers.0.D": torch.zeros(H), "lru_layers.0.params_log": torch.zeros(3, 1, N),
               "lru_layers.0.layer_norm.weight": torch.ones(H), "lru_layers.0.layer_norm.bias": torch.zeros(H)})
    torch.save({"model": sd}, tmp_path / "z.pt")
    text = problems_of(import_torch, tmp_path / "z.pt")
    assert "zhongshuren/lru-pytorch" in text and "LayerNorm inside the layer" in text and "nothing was written" in text


def test_unplaceable_file_lists_keys_and_every_layouts_expectation(tmp_path, capsys):
    torch.save({"state_dict": {"net.0.weight": torch.zeros(2, 2), "net.1.weight": torch.zeros(2, 2),
                               "head.bias": torch.zeros(2)}}, tmp_path / "u.pt")
    assert main(["import", "torch", str(tmp_path / "u.pt")]) == 1
    err = capsys.readouterr().err
    assert "keys: head.bias, net.{i}.weight" in err and "Traceback" not in err
    for layout, anchor in (("lru-reduction", "blocks.{i}.lru.nu_log"), ("gothos", "theta_log"),
                           ("lrnnx-classifier", "final_block.lrnn.nu_log"), ("lrnnx-lm", "backbone.norm_f.weight"),
                           ("lrurec", "model.lru_blocks.{i}.lru_layer.params_log")):
        assert f"  - {layout} (" in err and anchor in err, layout
    assert "hint: pass --format" in err and "DLRU" not in err  # no hint that names one project
    assert not (tmp_path / "u-lru-deploy").exists()


def test_forced_format_lists_every_problem(tmp_path):
    sd = torch.load(ckpt("lrurec"), weights_only=True)["model_state_dict"]
    sd = dict(sd)
    sd["model.lru_blocks.1.lru_layer.in_proj.weight"] = sd["model.lru_blocks.1.lru_layer.in_proj.weight"].real
    del sd["model.lru_blocks.0.feed_forward.w_2.bias"]
    sd["model.lru_blocks.0.lru_layer.extra"] = torch.zeros(2)
    torch.save({"model_state_dict": sd}, tmp_path / "r.pt")
    text = problems_of(import_torch, tmp_path / "r.pt")
    for piece in ("in_proj.weight: dtype float32, want complex", "missing: model.lru_blocks.0.feed_forward.w_2.bias",
                  "unknown keys: model.lru_blocks.0.lru_layer.extra", "a yueqirex/LRURec model"):
        assert piece in text, (piece, text)
    text = problems_of(import_torch, ckpt("gothos_lru_pytorch"), format="lrnnx-lm")
    assert "cannot infer the model sizes" in text and "backbone.embedding.weight" in text


# ------------------------------------------------------------------------------- export, lint and check

@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_export_validates_lints_and_checks(name, tmp_path):
    """Done-means of issue 12: import with no --format, export in fp32/fp16/bf16 (validated against the float64
    reference with the usual bounds, linted), `check`; the fp32 prefill graph also agrees with the upstream."""
    from lru_deploy.parity import check
    from lru_deploy.runtime.onnxruntime import ort_session, run_session
    model_dir = tmp_path / "model"
    assert main(["import", "torch", str(ckpt(name)), "--out", str(model_dir)]) == 0
    out = export(model_dir, tmp_path / "export", precisions=("fp32", "fp16", "bf16"), chunk=8, max_seq=256,
                 long_seq=100)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lint"]["ok"] and set(manifest["validation"]) == {"fp32", "fp16", "bf16"}
    assert all(v["failures"] == 0 for v in manifest["validation"].values())
    cfg = load_model(model_dir).cfg
    x, want = io(name)
    feeds = {"input_ids" if cfg.tokens else "inputs": x,
             "state": np.zeros((x.shape[0], cfg.n_layers, 2, cfg.d_hidden), np.float32)}
    sess, _ = ort_session(out / "fp32" / "prefill.onnx", "fp32")
    np.testing.assert_allclose(run_session(sess, feeds)["outputs"], want, atol=1e-4, rtol=1e-4)
    try:
        from lru_deploy.parity import CheckOptions
        report = check(out, options=CheckOptions(quick=True, drift_steps=200))
    except ImportError:
        report = check(out, quick=True, drift_steps=200)
    assert report["pass"], report["failures"]


@pytest.mark.parametrize("over", [
    dict(ff="mlp", d_ff=10, activation="silu", ff_sublayer=True, pooling="mean", norm="rms", embedding_norm=True),
    dict(d_input=2, vocab_size=None, ff="glu", ff_sublayer=True, prenorm=False, norm="batch", final_norm=True,
         lru_bias=True, pooling="last"),
    dict(d_input=2, vocab_size=None, ff="mlp", d_ff=12, activation="relu", skip="identity", residual=False,
         lru_bias=True, decoder_bias=False, log_softmax=True),
], ids=["silu-sublayer-rms-mean", "glu-sublayer-batch-last", "relu-identity-nobias"])
def test_other_option_combinations_export(tmp_path, over, lru):
    """Combinations no fixture has (silu and relu MLPs, batch norm with a sublayer, mean pooling with rms):
    validated against the float64 reference in every precision with the usual bounds, and linted."""
    from lru_deploy.checkpoints import save_model
    cfg = lru.small_config(**{"d_model": 8, "d_hidden": 6, **over})
    model_dir = save_model(lru.make_model(cfg, seed=61), tmp_path / "model")
    out = export(model_dir, tmp_path / "export", precisions=("fp32", "fp16", "bf16"), chunk=8, max_seq=64,
                 long_seq=40)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lint"]["ok"] and all(v["failures"] == 0 for v in manifest["validation"].values())
