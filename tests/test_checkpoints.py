"""The native checkpoint: round trip, atomic saves, and every bad input named in the error."""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from lru_deploy import checkpoints
from lru_deploy.checkpoints import (CONFIG_FILE, WEIGHTS_FILE, checkpoint_sha256, expected_shapes, file_sha256,
                                    load_config, load_model, load_weights_file, model_from_state_dict,
                                    save_model, state_dict_problems, summary)
from lru_deploy.errors import CheckpointError, LRUDeployError, OutputError
from lru_deploy.model import LRUConfig, LRUModel, gold


def _sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _write_folder(path, cfg_dict, sd):
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(cfg_dict))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / WEIGHTS_FILE))
    return path


def _load_problems(path, need_hint: bool = True):
    with pytest.raises(CheckpointError) as ei:
        load_model(path)
    err = ei.value
    if need_hint:
        assert err.hint, err.render()
    return err, "\n".join([err.message, *err.problems])


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("variant", [dict(), dict(d_input=3, norm="batch", skip="full", pooling="mean"),
                                     dict(norm="none", pooling="last", prenorm=False)])
def test_save_load_round_trip(lru, tmp_path, variant):
    cfg = lru.small_config(**variant)
    model = lru.make_model(cfg, seed=3)
    out = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left beside it
    loaded = load_model(out)
    assert loaded.cfg == cfg and loaded.dtype == torch.float32
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.from_numpy(lru.random_inputs(cfg, 2, 5))
    with torch.no_grad():
        ra, rb = model(x), loaded(x)
    assert torch.equal(ra.outputs, rb.outputs) and torch.equal(ra.state, rb.state)
    assert json.loads((out / CONFIG_FILE).read_text()) == cfg.to_dict()
    g = load_model(out, dtype=torch.float64)
    assert g.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(g(x).outputs, gold(model)(x).outputs, rtol=0, atol=0)


def test_save_from_gold_model_and_pt_file(lru, tmp_path):
    """A float64 model saves as float32; a .pt state dict loads through load_weights_file."""
    model = lru.make_model(lru.small_config(), seed=4)
    save_model(gold(model), tmp_path / "m")
    for k, v in load_model(tmp_path / "m").state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    torch.save(model.state_dict(), tmp_path / "w.pt")
    sd = load_weights_file(tmp_path / "w.pt")
    loaded = model_from_state_dict(model.cfg, sd)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_hashes(model_dir):
    data = (model_dir / WEIGHTS_FILE).read_bytes()
    assert file_sha256(model_dir / WEIGHTS_FILE) == hashlib.sha256(data).hexdigest()
    assert checkpoint_sha256(model_dir) == hashlib.sha256(data).hexdigest()


def test_summary(lru):
    model = lru.make_model(lru.small_config(), seed=5, r_lo=0.6, r_hi=0.97)
    s = summary(model)
    mods = np.concatenate([np.exp(-np.exp(layer.lru.nu_log.detach().double().numpy())) for layer in model.layers])
    assert s["config"] == model.cfg.to_dict()
    assert s["parameters"] == sum(p.numel() for p in model.parameters())
    assert s["state_floats_per_sequence"] == model.cfg.n_layers * 2 * model.cfg.d_hidden
    assert math.isclose(s["lambda_abs_min"], mods.min(), rel_tol=1e-12)
    assert math.isclose(s["lambda_abs_max"], mods.max(), rel_tol=1e-12)
    assert math.isclose(s["half_life_max_steps"], math.log(0.5) / math.log(mods.max()), rel_tol=1e-9)


def test_expected_shapes_match_the_model(lru):
    for variant in (dict(), dict(d_input=3, norm="batch", skip="full"), dict(norm="none")):
        cfg = lru.small_config(**variant)
        model = LRUModel(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(cfg)


def test_bundled_model_if_present():
    d = checkpoints.default_model_dir()
    if not (d / CONFIG_FILE).exists():
        pytest.skip(f"no bundled model at {d} yet")
    model = load_model(d)
    assert state_dict_problems(model.cfg, model.state_dict()) == []


# ----------------------------------------------------------------------------- atomic save
def test_failed_save_leaves_nothing(lru, tmp_path, monkeypatch):
    model = lru.make_model(lru.small_config(), seed=6)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OutputError, match="disk full"):
        save_model(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_folder(lru, tmp_path, monkeypatch):
    old = lru.make_model(lru.small_config(), seed=7)
    new = lru.make_model(lru.small_config(), seed=8)
    save_model(old, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OutputError):
        save_model(new, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_refuses_non_empty_folder_and_overwrites_on_request(lru, tmp_path):
    old = lru.make_model(lru.small_config(), seed=9)
    new = lru.make_model(lru.small_config(), seed=10)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty") as ei:
        save_model(old, tmp_path / "m")
    assert ei.value.hint
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["notes.txt"]
    (tmp_path / "e").mkdir()
    save_model(old, tmp_path / "e")  # an empty folder is fine
    save_model(new, tmp_path / "e", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "m"]  # no .old or temp folder left
    for k, v in load_model(tmp_path / "e").state_dict().items():
        assert torch.equal(v, new.state_dict()[k]), k


def test_refuses_to_save_invalid_model(lru, tmp_path):
    model = lru.make_model(lru.small_config(), seed=11)
    with torch.no_grad():
        model.layers[0].lru.B_re[0, 0] = float("nan")
    with pytest.raises(CheckpointError) as ei:
        save_model(model, tmp_path / "m")
    assert any("layers.0.lru.B_re" in p for p in ei.value.problems)
    assert not (tmp_path / "m").exists()


def test_save_onto_a_file_is_a_user_error(lru, tmp_path):
    (tmp_path / "m").write_text("a file")
    with pytest.raises(CheckpointError):
        save_model(lru.make_model(lru.small_config()), tmp_path / "m")


# ----------------------------------------------------------------------------- bad inputs, each named
@pytest.fixture
def good(lru):
    cfg = lru.small_config(norm="batch")
    return cfg, _sd(lru.make_model(cfg, seed=12))


def _mutate(sd, key, fn):
    sd = dict(sd)
    sd[key] = fn(sd[key].clone())
    return sd


def _set(value, index=0):
    def f(t):
        t.view(-1)[index] = value
        return t
    return f


CASES = {
    "missing key": (lambda sd: {k: v for k, v in sd.items() if k != "layers.1.out2.bias"},
                    ["missing keys", "layers.1.out2.bias"]),
    "unexpected key": (lambda sd: {**sd, "layers.0.lru.E": torch.zeros(3)}, ["unexpected keys", "layers.0.lru.E"]),
    "shape mismatch": (lambda sd: _mutate(sd, "layers.0.lru.B_im", lambda t: t[:, :-1].contiguous()),
                       ["layers.0.lru.B_im", "shape (5, 5)", "(5, 6)"]),
    "NaN weight": (lambda sd: _mutate(sd, "decoder.weight", _set(float("nan"), 3)), ["decoder.weight", "NaN"]),
    "Inf weight": (lambda sd: _mutate(sd, "layers.1.lru.C_re", _set(float("inf"))), ["layers.1.lru.C_re", "Inf"]),
    "|lambda| = 1 (nu_log -inf)": (lambda sd: _mutate(sd, "layers.1.lru.nu_log", _set(float("-inf"), 2)),
                                   ["layer 1", "|lambda| >= 1"]),
    "|lambda| = 1 (nu_log -1000)": (lambda sd: _mutate(sd, "layers.0.lru.nu_log", _set(-1000.0, 1)),
                                    ["layer 0", "1 eigenvalue(s) with |lambda| >= 1"]),
    "integer dtype": (lambda sd: _mutate(sd, "layers.0.out1.bias", lambda t: t.to(torch.int32)),
                      ["layers.0.out1.bias", "dtype torch.int32"]),
    "negative variance": (lambda sd: _mutate(sd, "layers.0.norm.running_var", _set(-1.0)),
                          ["layers.0.norm.running_var", "negative variance"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_state_dict_is_named(good, tmp_path, case):
    cfg, sd = good
    fn, needles = CASES[case]
    bad = fn(sd)
    probs = "\n".join(state_dict_problems(cfg, bad))
    for n in needles:
        assert n in probs, f"{case}: {n!r} not in {probs!r}"
    with pytest.raises(CheckpointError) as ei:
        model_from_state_dict(cfg, bad, source="test.pt")
    assert "test.pt" in ei.value.message and ei.value.hint
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), bad)
    _, text = _load_problems(folder)
    for n in needles:
        assert n in text, f"{case}: {n!r} not in {text!r}"


def test_lambda_close_to_one_but_below_is_accepted(good):
    cfg, sd = good
    bad = _mutate(sd, "layers.0.lru.nu_log", _set(math.log(-math.log(0.999999))))
    assert state_dict_problems(cfg, bad) == []


def test_several_problems_listed_at_once(good, tmp_path):
    cfg, sd = good
    bad = {k: v for k, v in sd.items() if k != "decoder.bias"}
    bad["extra.weight"] = torch.zeros(2)
    bad = _mutate(bad, "layers.0.lru.D", lambda t: torch.zeros(2, 2))
    bad = _mutate(bad, "layers.1.out1.weight", _set(float("nan")))
    bad = _mutate(bad, "layers.1.lru.nu_log", _set(-1000.0))
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), bad)
    err, text = _load_problems(folder)
    for n in ["decoder.bias", "extra.weight", "layers.0.lru.D", "layers.1.out1.weight", "layer 1"]:
        assert n in text, n
    assert len(err.problems) == 5
    assert "5 problem" in err.message


@pytest.mark.parametrize("field, value, needle", [
    ("d_model", 0, "d_model"), ("norm", "rms", "norm"), ("r_max", 2.0, "r_max"), ("colour", "red", "colour"),
])
def test_bad_config_json_is_named(good, tmp_path, field, value, needle):
    cfg, sd = good
    folder = _write_folder(tmp_path / "m", {**cfg.to_dict(), field: value}, sd)
    err, text = _load_problems(folder)
    assert needle in text and str(folder) in err.message


def test_config_json_not_json(good, tmp_path):
    cfg, sd = good
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), sd)
    (folder / CONFIG_FILE).write_text("{not json")
    _, text = _load_problems(folder, need_hint=False)  # the missing hint: test_every_user_error_has_a_hint
    assert "not valid JSON" in text and str(folder / CONFIG_FILE) in text
    with pytest.raises(CheckpointError):
        load_config(folder)


@pytest.mark.parametrize("case", ["not json", "json list", "missing weights file", "save invalid"])
def test_every_user_error_has_a_hint(good, tmp_path, case):
    cfg, sd = good
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), sd)
    with pytest.raises(CheckpointError) as ei:
        if case == "not json":
            (folder / CONFIG_FILE).write_text("{not json")
            load_model(folder)
        elif case == "json list":
            (folder / CONFIG_FILE).write_text("[1]")
            load_model(folder)
        elif case == "missing weights file":
            load_weights_file(tmp_path / "missing.pt")
        else:
            model = LRUModel(cfg)
            with torch.no_grad():
                model.decoder.bias[0] = float("nan")
            save_model(model, tmp_path / "x")
    assert ei.value.hint, ei.value.render()


def test_missing_parts(good, tmp_path):
    cfg, sd = good
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    _, text = _load_problems(tmp_path / "empty")
    assert CONFIG_FILE in text
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), sd)
    (folder / WEIGHTS_FILE).unlink()
    _, text = _load_problems(folder)
    assert WEIGHTS_FILE in text
    with pytest.raises(CheckpointError, match="no such file"):
        load_weights_file(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("damage", ["random", "truncated", "header only", "empty"])
def test_corrupt_safetensors(good, tmp_path, damage):
    cfg, sd = good
    folder = _write_folder(tmp_path / "m", cfg.to_dict(), sd)
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    damaged = {"random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "truncated": data[:len(data) // 2],
               "header only": data[:8], "empty": b""}[damage]
    path.write_bytes(damaged)
    err, text = _load_problems(folder)
    assert "not a readable safetensors file" in text and str(path) in text


def _pt_error(path):
    with pytest.raises(CheckpointError) as ei:
        load_weights_file(path)
    assert ei.value.hint
    return ei.value.render()


def test_corrupt_pt(tmp_path):
    p = tmp_path / "w.pt"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    text = _pt_error(p)
    assert "is not a readable PyTorch state dict file" in text and "corrupt, truncated" in text
    assert "weights_only=False" not in text and "other than tensors" not in text  # never the unsafe load
    torch.save({"a": torch.ones(3)}, p)
    p.write_bytes(p.read_bytes()[:40])
    assert "is not a readable PyTorch state dict file" in _pt_error(p)


def test_nan_weights_are_not_called_a_config_mismatch(good):
    cfg, sd = good
    bad = _mutate(_mutate(sd, "decoder.weight", _set(float("nan"), 3)), "layers.0.lru.B_re", _set(float("inf")))
    with pytest.raises(CheckpointError) as ei:
        model_from_state_dict(cfg, bad, source="test.pt")
    e = ei.value
    assert e.message == "test.pt holds NaN or Inf weights (2 tensor(s)):" and "config" not in e.hint
    assert sorted(e.problems) == ["decoder.weight: 1 NaN or Inf value(s)", "layers.0.lru.B_re: 1 NaN or Inf value(s)"]


def test_pt_holding_non_dict(tmp_path):
    p = tmp_path / "w.pt"
    torch.save([torch.ones(2)], p)
    assert "holds a list, not a state dict" in _pt_error(p)
    torch.save(torch.ones(2), p)
    assert "holds a Tensor, not a state dict" in _pt_error(p)


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse before that happens."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pt_needing_arbitrary_unpickling_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "w.pt"
    torch.save({"weight": torch.ones(2), "evil": _Payload(str(marker))}, p)
    text = _pt_error(p)
    assert "weights-only" in text and "weights_only=True" in text
    assert not marker.exists()


def test_pt_with_non_tensor_values(good, tmp_path):
    cfg, sd = good
    p = tmp_path / "w.pt"
    torch.save({**sd, "decoder.bias": [1.0, 2.0]}, p)
    loaded = load_weights_file(p)
    probs = state_dict_problems(cfg, loaded)
    assert any("decoder.bias" in q and "not a tensor" in q for q in probs)


def test_errors_are_lru_deploy_errors():
    assert issubclass(CheckpointError, LRUDeployError)
    assert os.path.basename(str(checkpoints.default_model_dir())) == "default"
    assert LRUConfig().to_dict()["vocab_size"] == 256
