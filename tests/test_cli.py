"""The `lru-deploy` CLI, in process through cli.main, and once through the installed console script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lru_deploy import cli
from lru_deploy.checkpoints import load_model
from lru_deploy.model import LRUConfig, gold

RTOL, ATOL = 1e-6, 1e-6  # the CLI runs the float64 reference and writes float32


def _cfg_file(tmp_path, **fields) -> Path:
    p = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.json')))}.json"
    p.write_text(json.dumps(fields))
    return p


def _init(tmp_path, capsys, name="m", seed=0, **fields) -> Path:
    out = tmp_path / name
    rc = cli.main(["init", "--config", str(_cfg_file(tmp_path, **fields)), "--out", str(out), "--seed", str(seed)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert str(out) in captured.out
    return out


def _user_error(capsys, argv) -> str:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 1, (rc, captured.err)
    err = captured.err
    assert err.startswith("error: "), err
    assert "\nhint: " in err, err
    assert "Traceback" not in err
    return err


def _expected(model_dir, x, state=None):
    """The gold model on the same inputs: outputs and final state (dict of numpy)."""
    g = gold(load_model(model_dir))
    st = state or {}
    t = {k: torch.from_numpy(v).double() for k, v in st.items()}
    with torch.no_grad():
        res = g(torch.from_numpy(x), t.get("state"), t.get("pool_sum"), t.get("pool_count"))
    out = {"state": res.state.numpy()}
    if res.pool_sum is not None:
        out.update(pool_sum=res.pool_sum.numpy(), pool_count=res.pool_count.numpy())
    return res.outputs.numpy(), out


# ----------------------------------------------------------------------------- init, info
def test_init_and_info(tmp_path, capsys):
    fields = dict(vocab_size=20, d_model=8, d_hidden=4, n_layers=2, d_output=20, r_min=0.5, r_max=0.9)
    out = _init(tmp_path, capsys, seed=3, **fields)
    model = load_model(out)
    assert model.cfg == LRUConfig.from_dict(fields)
    assert cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"] == model.cfg.to_dict()
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert 0.5 - 1e-6 <= info["lambda_abs_min"] <= info["lambda_abs_max"] <= 0.9 + 1e-6
    again = _init(tmp_path, capsys, name="m2", seed=3, **fields)  # the seed fixes the weights
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_info_of_an_export_folder_prints_its_manifest_once_verified(tmp_path, capsys):
    model = _init(tmp_path, capsys, vocab_size=11, d_model=4, d_hidden=3, n_layers=1, d_output=11)
    exp = tmp_path / "exp"
    assert cli.main(_export_args(model, exp, "--precision", "fp32")) == 0
    capsys.readouterr()
    assert cli.main(["info", str(exp)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((exp / "manifest.json").read_text())
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["contract"]["prefill"]["inputs"][1]["shape"] = ["batch", 1, 2, 99]  # a contract the graphs lack
    (exp / "manifest.json").write_text(json.dumps(manifest))
    err = _user_error(capsys, ["info", str(exp)])
    assert "the contract disagrees with the config" in err and "axis 3" in err
    (exp / "manifest.json").write_bytes(b"\xff\xfe not json")
    assert "not UTF-8" in _user_error(capsys, ["info", str(exp)])


def test_init_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    out = _init(tmp_path, capsys, vocab_size=5, d_model=3, d_hidden=2, n_layers=1, d_output=5)
    before = (out / "model.safetensors").read_bytes()
    cfg = _cfg_file(tmp_path, vocab_size=5, d_model=3, d_hidden=2, n_layers=1, d_output=5)
    err = _user_error(capsys, ["init", "--config", str(cfg), "--out", str(out), "--seed", "1"])
    assert "not empty" in err
    assert (out / "model.safetensors").read_bytes() == before
    assert cli.main(["init", "--config", str(cfg), "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before


# ----------------------------------------------------------------------------- run
def test_run_tokens_with_state_npy_and_state_out(tmp_path, capsys):
    out = _init(tmp_path, capsys, vocab_size=16, d_model=8, d_hidden=6, n_layers=2, d_output=16)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(2, 9), dtype=np.int64)
    st = (0.3 * rng.standard_normal((2, 2, 2, 6))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "s.npy", st)
    rc = cli.main(["run", str(out), "--inputs", str(tmp_path / "x.npy"), "--state", str(tmp_path / "s.npy"),
                   "--output", str(tmp_path / "y.npy"), "--state-out", str(tmp_path / "so.npz")])
    assert rc == 0, capsys.readouterr().err
    assert "[2, 9, 16]" in capsys.readouterr().out
    y = np.load(tmp_path / "y.npy")
    want_y, want_st = _expected(out, x, {"state": st})
    assert y.dtype == np.float32 and y.shape == (2, 9, 16)
    np.testing.assert_allclose(y, want_y, rtol=RTOL, atol=ATOL)
    with np.load(tmp_path / "so.npz") as z:
        assert sorted(z.files) == ["state"]
        assert z["state"].dtype == np.float32
        np.testing.assert_allclose(z["state"], want_st["state"], rtol=RTOL, atol=ATOL)
    # int32 ids are accepted (cast to int64) and give the same result
    np.save(tmp_path / "x32.npy", x.astype(np.int32))
    assert cli.main(["run", str(out), "--inputs", str(tmp_path / "x32.npy"), "--state", str(tmp_path / "s.npy"),
                     "--output", str(tmp_path / "y32.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y32.npy"), y)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_run_continuous_with_state_npz(tmp_path, capsys):
    out = _init(tmp_path, capsys, d_input=3, d_model=8, d_hidden=5, n_layers=2, d_output=4, pooling="last")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 3)).astype(np.float32)
    st = {"state": (0.3 * rng.standard_normal((3, 2, 2, 5))).astype(np.float32)}
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "s.npz", **st)
    assert cli.main(["run", str(out), "--inputs", str(tmp_path / "x.npy"), "--state", str(tmp_path / "s.npz"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    want_y, _ = _expected(out, x, st)
    assert y.shape == (3, 4)
    np.testing.assert_allclose(y, want_y, rtol=RTOL, atol=ATOL)


def test_run_mean_pooling_carries_pool_state(tmp_path, capsys):
    """run(a) with --state-out, then run(b) from that state, equals run(a+b): pool_sum/pool_count carried."""
    out = _init(tmp_path, capsys, d_input=2, d_model=6, d_hidden=4, n_layers=2, d_output=3, pooling="mean")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", x[:, :4])
    np.save(tmp_path / "b.npy", x[:, 4:])
    np.save(tmp_path / "ab.npy", x)
    run = ["run", str(out), "--output"]
    assert cli.main(run + [str(tmp_path / "ya.npy"), "--inputs", str(tmp_path / "a.npy"),
                           "--state-out", str(tmp_path / "sa.npz")]) == 0
    with np.load(tmp_path / "sa.npz") as z:
        assert sorted(z.files) == ["pool_count", "pool_sum", "state"]
        np.testing.assert_array_equal(z["pool_count"], np.full((2, 1), 4, np.float32))
    assert cli.main(run + [str(tmp_path / "yb.npy"), "--inputs", str(tmp_path / "b.npy"),
                           "--state", str(tmp_path / "sa.npz"), "--state-out", str(tmp_path / "sb.npz")]) == 0
    assert cli.main(run + [str(tmp_path / "yab.npy"), "--inputs", str(tmp_path / "ab.npy"),
                           "--state-out", str(tmp_path / "sab.npz")]) == 0
    capsys.readouterr()
    want_y, want_st = _expected(out, x)
    np.testing.assert_allclose(np.load(tmp_path / "yab.npy"), want_y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.load(tmp_path / "yb.npy"), want_y, rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "sb.npz") as zb, np.load(tmp_path / "sab.npz") as zab:
        for k in ("state", "pool_sum", "pool_count"):
            np.testing.assert_allclose(zb[k], zab[k], rtol=1e-5, atol=1e-6, err_msg=k)
            np.testing.assert_allclose(zab[k], want_st[k], rtol=RTOL, atol=ATOL, err_msg=k)
    # a mean-pooling state given as a plain .npy lacks pool_sum/pool_count: a user error naming them
    with np.load(tmp_path / "sa.npz") as z:
        np.save(tmp_path / "only_state.npy", z["state"])
    err = _user_error(capsys, ["run", str(out), "--inputs", str(tmp_path / "b.npy"), "--state",
                               str(tmp_path / "only_state.npy"), "--output", str(tmp_path / "yc.npy")])
    assert "pool_sum" in err and "pool_count" in err
    assert not (tmp_path / "yc.npy").exists()


# ----------------------------------------------------------------------------- user errors
@pytest.fixture
def token_dir(tmp_path, capsys):
    return _init(tmp_path, capsys, vocab_size=10, d_model=4, d_hidden=3, n_layers=1, d_output=10)


def _run_err(capsys, tmp_path, model_dir, x, state=None, extra=()):
    np.save(tmp_path / "bad_x.npy", x)
    argv = ["run", str(model_dir), "--inputs", str(tmp_path / "bad_x.npy"), "--output", str(tmp_path / "o.npy")]
    if state is not None:
        np.save(tmp_path / "bad_s.npy", state)
        argv += ["--state", str(tmp_path / "bad_s.npy")]
    err = _user_error(capsys, argv + list(extra))
    assert not (tmp_path / "o.npy").exists()
    return err


def test_run_wrong_dtype(tmp_path, capsys, token_dir):
    err = _run_err(capsys, tmp_path, token_dir, np.zeros((1, 3), np.float32))
    assert "input_ids: dtype float32, want int64" in err


def test_run_wrong_shape(tmp_path, capsys, token_dir):
    err = _run_err(capsys, tmp_path, token_dir, np.zeros((1, 3, 2), np.int64))
    assert "input_ids" in err and "rank 2" in err
    err = _run_err(capsys, tmp_path, token_dir, np.zeros((2, 3), np.int64), state=np.zeros((2, 1, 2, 5), np.float32))
    assert "state: shape [2, 1, 2, 5], want [batch, 1, 2, 3]" in err
    err = _run_err(capsys, tmp_path, token_dir, np.zeros((2, 3), np.int64), state=np.zeros((3, 1, 2, 3), np.float32))
    assert "batch" in err


def test_run_several_problems_at_once(tmp_path, capsys, token_dir):
    err = _run_err(capsys, tmp_path, token_dir, np.array([[1, 10]], np.int64),
                   state=np.zeros((1, 1, 2, 3), np.float64))
    assert "input_ids: values in [1, 10], want [0, 9]" in err
    assert "state: dtype float64, want float32" in err


def test_run_token_out_of_range(tmp_path, capsys, token_dir):
    err = _run_err(capsys, tmp_path, token_dir, np.array([[0, 3, -1]], np.int64))
    assert "values in [-1, 3], want [0, 9]" in err


def test_run_missing_files(tmp_path, capsys, token_dir):
    err = _user_error(capsys, ["run", str(token_dir), "--inputs", str(tmp_path / "nope.npy"),
                               "--output", str(tmp_path / "o.npy")])
    assert "nope.npy" in err
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.int64))
    for state in ("nope.npz", "nope.npy"):
        err = _user_error(capsys, ["run", str(token_dir), "--inputs", str(tmp_path / "x.npy"), "--state",
                                   str(tmp_path / state), "--output", str(tmp_path / "o.npy")])
        assert state in err
    err = _user_error(capsys, ["run", str(tmp_path / "no_model"), "--inputs", str(tmp_path / "x.npy"),
                               "--output", str(tmp_path / "o.npy")])
    assert "no_model" in err
    err = _user_error(capsys, ["info", str(tmp_path / "no_model")])
    assert "no_model" in err
    (tmp_path / "pickled.npy").write_bytes(b"not a numpy file at all")
    err = _user_error(capsys, ["run", str(token_dir), "--inputs", str(tmp_path / "pickled.npy"),
                               "--output", str(tmp_path / "o.npy")])
    assert "pickled.npy" in err
    assert not (tmp_path / "o.npy").exists()


def test_bad_config(tmp_path, capsys):
    cfg = _cfg_file(tmp_path, vocab_size=10, d_model=0, norm="group")
    err = _user_error(capsys, ["init", "--config", str(cfg), "--out", str(tmp_path / "m")])
    assert "d_model must be a positive integer" in err and "norm must be one of" in err
    assert not (tmp_path / "m").exists()
    cfg = _cfg_file(tmp_path, vocab_size=10, colour="red")
    err = _user_error(capsys, ["init", "--config", str(cfg), "--out", str(tmp_path / "m")])
    assert "colour" in err


def test_bad_config_in_a_model_folder(tmp_path, capsys, token_dir):
    (token_dir / "config.json").write_text(json.dumps({"vocab_size": 10, "d_model": 4, "d_hidden": 3,
                                                       "n_layers": 1, "d_output": 10, "pooling": "max"}))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.int64))
    for argv in (["info", str(token_dir)],
                 ["run", str(token_dir), "--inputs", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o.npy")]):
        assert "pooling must be one of" in _user_error(capsys, argv)


def test_init_missing_config_file_has_hint(tmp_path, capsys):
    _user_error(capsys, ["init", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m")])


def test_init_missing_config_file_is_a_clean_error(tmp_path, capsys):
    rc = cli.main(["init", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "missing.json" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- help
def _subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_every_subcommand_has_help(capsys):
    names = _subcommands()
    assert {"init", "info", "run", "demo"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as ei:
            cli.main([name, "--help"])
        assert ei.value.code == 0, name
        out = capsys.readouterr().out
        assert f"usage: lru-deploy {name}" in out, name
    with pytest.raises(SystemExit) as ei:
        cli.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names)


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([]) == 1
    assert "usage: lru-deploy" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the console script
def test_console_script(tmp_path, capsys):
    script = Path(sys.executable).parent / "lru-deploy"
    if not script.exists():
        pytest.skip(f"no console script at {script} (package not installed in this environment)")
    out = _init(tmp_path, capsys, vocab_size=6, d_model=3, d_hidden=2, n_layers=1, d_output=6)
    np.save(tmp_path / "x.npy", np.array([[1, 2, 7]], np.int64))
    ok = subprocess.run([str(script), "info", str(out)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["vocab_size"] == 6
    bad = subprocess.run([str(script), "run", str(out), "--inputs", str(tmp_path / "x.npy"), "--output",
                          str(tmp_path / "o.npy")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "values in [1, 7], want [0, 5]" in bad.stderr and "hint:" in bad.stderr
    assert "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- writing commands never destroy data
def _export_args(model, out, *more):
    return ["export", str(model), "--out", str(out), "--max-seq", "64", "--long-seq", "40", *map(str, more)]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_into_its_own_model_folder_is_refused_and_the_model_kept(tmp_path, capsys):
    model = _init(tmp_path, capsys, vocab_size=11, d_model=4, d_hidden=3, n_layers=1, d_output=11)
    before = _snapshot(model)
    for out in (model, model / "sub", tmp_path):
        err = _user_error(capsys, _export_args(model, out, "--overwrite"))
        assert "input" in err, err
    assert _snapshot(model) == before


def test_writing_commands_refuse_folders_with_other_data_and_replace_their_own(tmp_path, capsys):
    model = _init(tmp_path, capsys, vocab_size=11, d_model=4, d_hidden=3, n_layers=1, d_output=11)
    exp = tmp_path / "exp"
    assert cli.main(_export_args(model, exp, "--precision", "fp32")) == 0
    assert cli.main(_export_args(model, exp, "--precision", "fp32")) == 0  # its own folder: replaced
    assert cli.main(["check", str(exp), "--quick", "--drift-steps", "20"]) == 0  # report inside the export
    capsys.readouterr()
    before = _snapshot(exp)
    err = _user_error(capsys, ["check", str(exp), "--quick", "--report", str(exp)])
    assert "input" in err
    assert _snapshot(exp) == before
    (exp / "notes.txt").write_text("mine")
    err = _user_error(capsys, _export_args(model, exp, "--precision", "fp32"))
    assert "notes.txt" in err and "--overwrite" in err
    for cmd in (["check", str(exp), "--quick", "--report", str(tmp_path / "userdir")],
                ["demo", "--out", str(tmp_path / "userdir")]):
        (tmp_path / "userdir").mkdir(exist_ok=True)
        (tmp_path / "userdir" / "keep.txt").write_text("keep")
        err = _user_error(capsys, cmd)
        assert "keep.txt" in err and (tmp_path / "userdir" / "keep.txt").read_text() == "keep"
    afile = tmp_path / "afile.txt"
    afile.write_text("data")
    err = _user_error(capsys, _export_args(model, afile, "--precision", "fp32"))
    assert "is a file" in err and afile.read_text() == "data"
    assert not list(tmp_path.glob(".*")), list(tmp_path.glob(".*"))  # no hidden .old or temporary folders
    assert cli.main(_export_args(model, exp, "--precision", "fp32", "--overwrite")) == 0
    assert not (exp / "notes.txt").exists()


@pytest.mark.parametrize("name", ["adir", "result", "result.bin"])
def test_run_writes_any_file_name_and_refuses_a_folder(tmp_path, capsys, name):
    model = _init(tmp_path, capsys, vocab_size=11, d_model=4, d_hidden=3, n_layers=1, d_output=11)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3), np.int64))
    out = tmp_path / name
    argv = ["run", str(model), "--inputs", str(x), "--output", str(out), "--state-out", str(tmp_path / "st")]
    if name == "adir":
        out.mkdir()
        assert "is a folder" in _user_error(capsys, argv)
    else:
        assert cli.main(argv) == 0
        assert np.load(out).shape == (1, 3, 11) and set(np.load(tmp_path / "st")) == {"state"}
    assert not list(tmp_path.glob(".*"))


# ----------------------------------------------------------------------------- one owner for each default
def _sub(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


def test_cli_defaults_are_the_options_defaults():
    from lru_deploy.engines import BuildOptions
    from lru_deploy.export import ExportOptions
    from lru_deploy.parity import CheckOptions
    e, b, c = (_sub(n).parse_args(a) for n, a in (("export", []), ("build", ["x"]), ("check", ["x"])))
    assert ExportOptions(precisions=e.precision, chunk=e.chunk, max_seq=e.max_seq, opset=e.opset,
                         prefill_outputs=e.prefill_outputs, intra=e.intra, long_seq=e.long_seq) == ExportOptions()
    assert (b.precision, b.opt_level, b.hardware_compat, b.tf32, b.workspace, b.device) == \
        ((BuildOptions().precision,), None, "none", False, None, 0)
    assert CheckOptions(precisions=c.precision, atol=c.atol, rtol=c.rtol, seed=c.seed, long_seq=c.long_seq,
                        drift_steps=c.drift_steps, quick=c.quick) == CheckOptions()
    assert CheckOptions().localize is False  # reserved for check --localize


def test_backend_choices_are_the_runtimes_backends():
    from lru_deploy.runtime import BACKENDS
    assert cli.BACKEND_CHOICES == tuple(BACKENDS)
    for name in ("run", "generate"):
        action = next(a for a in _sub(name)._actions if "--backend" in a.option_strings)
        assert tuple(action.choices) == tuple(BACKENDS)


@pytest.mark.parametrize("options, problems", [
    ("export", ["precision fp8 is unknown; valid precisions: fp32, fp16, bf16", "precision fp32 is given 2 times; "
                "name each once", "--max-seq 16 is shorter than the scan's chunk 32: pass --max-seq >= 32, or a "
                "--chunk at most 16", "--long-seq must be a positive integer (the long validation case's length), "
                "got 0"]),
    ("build", ["--opt-level must be 0..5, got 9", "--workspace must be a positive number of GiB, got nan",
               "--device must be a CUDA device index >= 0, got -1"]),
    ("check", ["--drift-steps must be a positive integer, got 0", "--atol must be a finite number >= 0, got inf",
               "--seed must be an integer from 0 to 2^63-1, got -1"])])
def test_options_list_every_problem(options, problems):
    from lru_deploy.engines import BuildOptions
    from lru_deploy.export import ExportOptions
    from lru_deploy.parity import CheckOptions
    made = {"export": lambda: ExportOptions(precisions="fp8,fp32,fp32", max_seq=16, long_seq=0),
            "build": lambda: BuildOptions(opt_level=9, workspace_gib=float("nan"), device=-1),
            "check": lambda: CheckOptions(drift_steps=0, atol=float("inf"), seed=-1)}[options]()
    assert made.problems() == problems


def test_readme_blocks_are_generated_from_the_parsers_and_the_config(tmp_path, capsys):
    """README.md's command table and init config fields equal their renderings (regenerate with
    `python -m lru_deploy.cli.readme --write README.md`), and the config example initialises."""
    import re
    from lru_deploy.cli import readme
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme.render_into(text) == text
    example = re.search(r"for example\n\n```\n(.*?)\n```", readme.config_fields(), re.S).group(1)
    (tmp_path / "c.json").write_text(example)
    assert cli.main(["init", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "m")]) == 0
    assert LRUConfig.from_dict(json.loads(example)) == LRUConfig()
