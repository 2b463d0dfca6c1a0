"""`lru-deploy check`: parity on Polygraphy, its report, and the `polygraphy run` command it writes.

Small models and small --long-seq / --drift-steps keep this file fast; the defaults (16384, 10000) are
exercised on the bundled model by hand (see the issue report)."""
from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lru_deploy import cli, engines, parity
from lru_deploy import trt_env
from lru_deploy.checkpoints import file_sha256, save_model
from lru_deploy.cases import reference_outputs, rel_l2
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.model import gold
from lru_deploy.parity.runners import ReferenceRunner, SegmentsRunner, positions_reference

SMALL = ["--long-seq", "40", "--drift-steps", "200"]
KINDS = {"seq 1", "chunk edge", "odd length", "long", "step", "continuity", "drift"}
CONFIGS = {  # name: (config overrides, precisions)
    "tokens": (dict(), ("fp32", "fp16", "bf16")),
    "mean": (dict(d_input=3, pooling="mean", norm="batch", prenorm=False), ("fp32", "fp16", "bf16")),
    "last": (dict(pooling="last", log_softmax=True, gelu="tanh", skip="full"), ("fp32", "fp16")),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, lru):
    """One export folder per config of CONFIGS (chunk 4, max_seq 64), built once for the module."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for i, (name, (overrides, precs)) in enumerate(CONFIGS.items()):
        model = save_model(lru.make_model(lru.small_config(**overrides), seed=10 + i), root / f"m_{name}")
        out[name] = export_model(model, root / f"e_{name}", ExportOptions(precisions=precs, chunk=4, max_seq=64,
                                 validate=False, lint=False))
    return out


def run_check(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["check", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def copy_export(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("report"))
    return dest


def perturb_constant(graph: Path, prefix: str, rel: float = 1e-3) -> str:
    """Scale the first initializer whose name starts with `prefix` by (1 + rel); nothing else changes."""
    m = onnx.load(str(graph))
    for init in m.graph.initializer:
        if init.name.startswith(prefix):
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((a * (1 + rel)).astype(a.dtype), init.name))
            onnx.save(m, str(graph))
            return init.name
    raise AssertionError(f"no initializer named {prefix}* in {graph}")


def record_hash(folder: Path, precision: str, graph: str) -> None:
    """Make the manifest record the graph's current sha256, as if it had been exported that way."""
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"][precision][graph]["sha256"] = file_sha256(folder / precision / f"{graph}.onnx")
    (folder / "manifest.json").write_text(json.dumps(m))


def polygraphy_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[:2] == ["polygraphy", "run"]
    return [str(Path(sys.executable).parent / "polygraphy")] + argv[1:]


# ---------------------------------------------------------------- good exports pass

@pytest.mark.parametrize("name", list(CONFIGS))
def test_check_passes_on_good_exports(exports, capsys, caplog, name):
    caplog.set_level(logging.INFO, logger="lru_deploy")
    rc, out, err = run_check(capsys, exports[name], *SMALL)
    assert rc == 0, out + err
    report = json.loads((exports[name] / "report" / "report.json").read_text())
    precs = CONFIGS[name][1]
    assert report["pass"] is True and report["failures"] == [] and list(report["precisions"]) == list(precs)
    for prec in precs:
        e = report["precisions"][prec]
        assert {r["kind"] for r in e["rows"]} == KINDS
        assert all(r["pass"] is True for r in e["rows"])
        assert e["tolerances"]["used"] == e["tolerances"]["table"] and e["tolerances"]["overridden"] == []
        assert e["drift"]["steps"] == 200 and e["drift"]["bound"] == e["tolerances"]["table"]["drift_rel_l2"]
        assert Path(e["plot"]).is_file()
        for graph in ("prefill", "step"):
            assert Path(e["polygraphy"][graph]["inputs"]).is_file()
            assert Path(e["polygraphy"][graph]["outputs"]).is_file()
        outputs = {r["output"] for r in e["rows"] if r["kind"] == "step"}
        assert outputs == ({"outputs", "state_out", "pool_sum_out", "pool_count_out"} if name == "mean"
                           else {"outputs", "state_out"})
    assert "PASS" in out and "reproduce the single-call cases without lru-deploy" in out
    assert "[fp32] prefill b1 s40 h0" in caplog.text  # progress as cases run
    assert len(report["commands"]) == 2 * len(precs)


def test_report_numbers_match_an_independent_computation(exports, capsys):
    """The report's rel L2 of a case, recomputed from the saved Polygraphy inputs with ONNX Runtime directly."""
    import onnxruntime as ort
    from polygraphy.json import load_json
    rc, _, _ = run_check(capsys, exports["tokens"], "--precision", "fp32", "--quick")
    assert rc == 0
    report = json.loads((exports["tokens"] / "report" / "report.json").read_text())
    e = report["precisions"]["fp32"]
    files = e["polygraphy"]["prefill"]
    feeds = load_json(files["inputs"])
    i = files["cases"].index("prefill b3 s5 h0")  # chunk + 1
    sess = ort.InferenceSession(files["graph"], providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feeds[i]))))
    model64 = gold(parity.load_model(report["model"]["path"]))
    ref = reference_outputs(model64, "prefill", dict(feeds[i]))
    row = next(r for r in e["rows"] if r["case"] == "prefill b3 s5 h0" and r["output"] == "outputs")
    np.testing.assert_allclose(row["rel_l2"], rel_l2(got["outputs"], ref["outputs"]), rtol=1e-6, atol=1e-12)
    assert row["rel_l2"] < 1e-5 and row["shape"] == [3, 5, 7]


# ---------------------------------------------------------------- a perturbed constant fails

@pytest.mark.parametrize("graph, prefix", [("prefill", "/layers.0/lru/intra/Laug"),
                                           ("prefill", "/layers.0/lru/project_out/weight"),
                                           ("step", "/layers.0/lru/project_out/weight")])
def test_a_constant_perturbed_by_1e_3_fails_and_names_the_output(exports, tmp_path, capsys, caplog, graph, prefix):
    caplog.set_level(logging.INFO, logger="lru_deploy")
    folder = copy_export(exports["tokens"], tmp_path / "bad")
    perturb_constant(folder / "fp32" / f"{graph}.onnx", prefix)
    record_hash(folder, "fp32", graph)
    rc, out, err = run_check(capsys, folder, "--precision", "fp32", *SMALL)
    assert rc == 1
    assert "FAIL:" in out and "MISS" in out
    assert f"- fp32 {graph} b1" in out and ": outputs: relative L2 error" in out
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["pass"] is False
    rows = report["precisions"]["fp32"]["rows"]
    other = "step" if graph == "prefill" else "prefill"
    assert not any(r["pass"] for r in rows if r["case"].startswith(f"{graph} ") and r["output"] == "outputs")
    assert all(r["pass"] for r in rows if r["case"].startswith(f"{other} "))
    if graph == "step":
        assert not next(r for r in rows if r["kind"] == "drift")["pass"]


def test_a_graph_whose_hash_disagrees_with_the_manifest_is_refused_before_any_work(exports, tmp_path, capsys):
    folder = copy_export(exports["tokens"], tmp_path / "bad")
    perturb_constant(folder / "fp32" / "step.onnx", "/layers.0/lru/project_out/weight")
    rc, out, err = run_check(capsys, folder, "--precision", "fp32", *SMALL)
    assert rc == 1 and "does not match the sha256 recorded in the manifest" in err and "Traceback" not in err
    assert not (folder / "report").exists()


def test_a_manifest_that_lies_about_the_graphs_is_refused(exports, tmp_path, capsys):
    folder = copy_export(exports["tokens"], tmp_path / "lie")
    m = json.loads((folder / "manifest.json").read_text())
    m["contract"]["step"]["inputs"][1]["shape"][1] += 1  # a wrong state shape
    (folder / "manifest.json").write_text(json.dumps(m))
    rc, out, err = run_check(capsys, folder, *SMALL)
    assert rc == 1 and "the contract disagrees with the config" in err
    m["contract"]["step"]["inputs"][1]["shape"][1] -= 1
    m["graphs"]["bf16"] = {}  # a precision with no graphs
    (folder / "manifest.json").write_text(json.dumps(m))
    rc, out, err = run_check(capsys, folder, *SMALL)
    assert rc == 1 and "bf16/prefill: no path recorded" in err
    del m["graphs"]["bf16"]
    m["graphs"]["fp32"]["step"]["path"] = "../../etc/passwd"
    (folder / "manifest.json").write_text(json.dumps(m))
    rc, out, err = run_check(capsys, folder, *SMALL)
    assert rc == 1 and "leaves the folder" in err


# ---------------------------------------------------------------- the polygraphy run command

def test_the_written_polygraphy_command_reproduces_and_catches_a_corruption(exports, tmp_path, capsys):
    folder = copy_export(exports["tokens"], tmp_path / "repro")
    rc, out, _ = run_check(capsys, folder, "--precision", "fp32,bf16", *SMALL)
    assert rc == 0
    report = json.loads((folder / "report" / "report.json").read_text())
    for cmd in report["commands"]:
        assert cmd in out  # printed as written
    fp32_prefill = report["precisions"]["fp32"]["polygraphy"]["prefill"]["command"]
    bf16_step = report["precisions"]["bf16"]["polygraphy"]["step"]["command"]
    assert "--onnxrt" in fp32_prefill and "--atol 0.0001 --rtol 0.0001" in fp32_prefill
    assert "step.emulated.onnx" in bf16_step  # ONNX Runtime on CPU has no bf16 MatMul
    for cmd in (fp32_prefill, bf16_step):
        res = subprocess.run(polygraphy_argv(cmd), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "PASSED" in res.stdout
    perturb_constant(folder / "fp32" / "prefill.onnx", "/layers.0/lru/project_out/weight")
    res = subprocess.run(polygraphy_argv(fp32_prefill), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "FAILED" in res.stdout + res.stderr


# ---------------------------------------------------------------- tolerances, model, options

def test_a_tolerance_override_is_announced_in_the_table_and_the_report(exports, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="lru_deploy")
    rc, out, err = run_check(capsys, exports["tokens"], "--precision", "fp32", "--quick", "--atol", "1e-3",
                             "--rtol", "1e-5", "--report", tmp_path / "r")
    assert rc == 0
    loud = "tolerance overridden: atol 1e-4 -> 1e-3 (LOOSER than the fp32 table)"
    assert f"!! {loud}" in out and loud in caplog.text
    assert "tolerance overridden: rtol 1e-4 -> 1e-5 (tighter than the fp32 table)" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert loud in report["tolerance_overrides"]
    e = report["precisions"]["fp32"]
    assert e["tolerances"]["used"]["atol"] == 1e-3 and e["tolerances"]["table"]["atol"] == 1e-4
    assert "--atol 0.001 --rtol 1e-05" in e["polygraphy"]["prefill"]["command"]
    assert "a 0.001*" in out  # marked in the tolerance column too


def test_the_checkpoint_must_be_the_one_the_manifest_records(exports, tmp_path, capsys, lru):
    other = save_model(lru.make_model(lru.small_config(), seed=99), tmp_path / "other")
    rc, _, err = run_check(capsys, exports["tokens"], "--model", other, "--quick")
    assert rc == 1 and "Traceback" not in err
    assert "is not the one" in err and file_sha256(other / "model.safetensors") in err
    folder = copy_export(exports["tokens"], tmp_path / "moved")
    m = json.loads((folder / "manifest.json").read_text())
    m["model"]["path"] = str(tmp_path / "gone")
    (folder / "manifest.json").write_text(json.dumps(m))
    rc, _, err = run_check(capsys, folder, "--quick")
    assert rc == 1 and "is missing" in err and "--model" in err


def test_bad_options_are_listed_at_once(exports, capsys):
    rc, _, err = run_check(capsys, exports["last"], "--precision", "bf16,fp64", "--drift-steps", "0")
    assert rc == 1 and "Traceback" not in err
    assert "precision bf16 is not in this export folder (it has fp32, fp16)" in err
    assert "precision fp64" in err and "--drift-steps must be a positive integer" in err


def test_quick_drops_the_long_case_and_the_report_folder_is_replaced_whole(exports, tmp_path, capsys):
    for _ in range(2):
        rc, _, _ = run_check(capsys, exports["mean"], "--precision", "fp16", "--quick", "--report", tmp_path / "r")
        assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folders left beside it
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    kinds = {r["kind"] for r in report["precisions"]["fp16"]["rows"]}
    assert kinds == KINDS - {"long"} and report["settings"]["drift_steps"] == parity.QUICK_DRIFT_STEPS


# ---------------------------------------------------------------- the runners

@pytest.mark.parametrize("pooling", ["none", "last", "mean"])
def test_positions_reference_is_what_each_step_returns(lru, pooling):
    model64 = gold(lru.make_model(lru.small_config(pooling=pooling, log_softmax=pooling == "last"), seed=5))
    cfg = model64.cfg
    x = lru.random_inputs(cfg, 2, 9, seed=1)
    st = lru.random_state(cfg, 2, seed=2)
    got = positions_reference(model64, {"input_ids": x, **st})
    state = {k: torch.from_numpy(v).double() for k, v in st.items()}
    with torch.no_grad():
        for t in range(9):
            r = model64.step(torch.from_numpy(x[:, t]), state["state"], state.get("pool_sum"), state.get("pool_count"))
            np.testing.assert_allclose(got["outputs"][:, t], r.outputs.numpy(), rtol=1e-10, atol=1e-12)
            state = {"state": r.state, "pool_sum": r.pool_sum, "pool_count": r.pool_count}
    np.testing.assert_allclose(got["state_out"], state["state"].numpy(), rtol=1e-10, atol=1e-12)


def test_segments_runner_carries_the_state_across_calls(lru):
    """Reference prefill and step runners composed by SegmentsRunner reproduce one reference prefill."""
    model64 = gold(lru.make_model(lru.small_config(d_input=3, pooling="mean"), seed=6))
    feeds = {"inputs": lru.random_inputs(model64.cfg, 2, 12, seed=3), **lru.random_state(model64.cfg, 2, seed=4)}
    inner = {"prefill": ReferenceRunner(model64, "prefill", name="p"), "step": ReferenceRunner(model64, "step",
                                                                                             name="s")}
    runner = SegmentsRunner(model64.cfg, inner, [("prefill", 5), ("step", 3), ("prefill", 4)], False, "seg")
    with runner:
        got = runner.infer(feeds)
    ref = reference_outputs(model64, "prefill", feeds)
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)
    assert [len(r.gold) for r in inner.values()] == [2, 3]


# ---------------------------------------------------------------- engine folders

@pytest.fixture
def fake_engine_dir(exports, tmp_path, monkeypatch):
    """An engine folder made by build_engines with the machine check and the TensorRT call stubbed out."""
    info = trt_env.RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.9.0", trt_env.current_platform())
    with monkeypatch.context() as m:
        m.setattr(trt_env, "preflight", lambda device=0: info)
        m.setattr(engines, "_build_plan", lambda onnx_path, profile, label, **kw: b"not a plan")
        out, _ = engines.build_engines(exports["tokens"], tmp_path / "eng", engines.BuildOptions(precision="fp32",
                                       batch=(1, 1, 2), seq=(1, 8, 16)))
    return out, info


def test_an_engine_folders_shape_matrix_uses_the_export_chunk_even_when_the_export_is_gone(exports, tmp_path,
                                                                                         monkeypatch):
    """The engine manifest records the scan's chunk (4 here); the shape matrix tests chunk-1, chunk, chunk+1.
    Before, an engine folder whose export had moved fell back to chunk 64 and tested 63, 64, 65 instead."""
    info = trt_env.RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.9.0", trt_env.current_platform())
    src = copy_export(exports["tokens"], tmp_path / "exp")
    monkeypatch.setattr(trt_env, "preflight", lambda device=0: info)
    monkeypatch.setattr(engines, "_build_plan", lambda onnx_path, profile, label, **kw: b"not a plan")
    out, _ = engines.build_engines(src, tmp_path / "eng", engines.BuildOptions(precision="fp32", batch=(1, 1, 2),
                                   seq=(1, 8, 16)))
    shutil.rmtree(src)
    target = parity.open_target(out)
    assert target.chunk == 4 and not target.notes
    seqs = {c.seq for c in parity.shape_matrix(target.chunk, target.max_seq, None) if c.graph == "prefill"}
    assert {3, 4, 5} <= seqs
    m = json.loads((out / "manifest.json").read_text())
    del m["chunk"]  # an engine folder written before the chunk was recorded, its export gone
    (out / "manifest.json").write_text(json.dumps(m))
    target = parity.open_target(out)
    assert target.chunk == parity.DEFAULT_CHUNK and "assumes the default chunk" in target.notes[0]


@pytest.mark.skipif(not trt_env.tensorrt_problem(), reason="TensorRT is installed here")
def test_an_engine_folder_without_tensorrt_is_one_clean_error(fake_engine_dir, capsys):
    rc, _, err = run_check(capsys, fake_engine_dir[0], "--quick")
    assert rc == 1 and "Traceback" not in err
    assert trt_env.tensorrt_problem() in err and "hint: install TensorRT from NVIDIA" in err
    assert not (fake_engine_dir[0] / "report").exists()


def test_engine_folders_skip_cases_outside_the_profiles(fake_engine_dir, exports, monkeypatch, capsys):
    """The engine path (model found through the source export, profiles, skips) with ONNX Runtime standing in
    for TensorRT, which this machine may lack."""
    folder, info = fake_engine_dir
    monkeypatch.setattr(trt_env, "preflight", lambda device=0: info)
    export, onnxrt_runner = parity.open_target(exports["tokens"]), parity.Target.runner
    monkeypatch.setattr(parity.Target, "runner", lambda self, prec, g, name: onnxrt_runner(export, prec, g, name))
    rc, out, _ = run_check(capsys, folder, *SMALL)
    assert rc == 0, out
    report = json.loads((folder / "report" / "report.json").read_text())
    assert report["target"]["backend"] == "trt" and report["model"]["path"] == str(Path(
        json.loads((exports["tokens"] / "manifest.json").read_text())["model"]["path"]))
    rows = report["precisions"]["fp32"]["rows"]
    skipped = [r for r in rows if r["pass"] is None]
    assert {r["case"] for r in skipped} >= {"prefill b3 s1 h0", "step b3 h0"}  # batch 3 > the profile's 2
    assert all("profile allows" in r["why"] for r in skipped)
    passed = {r["case"] for r in rows if r["pass"]}
    assert {"prefill b1 s16 h0", "step b1 h0", "drift b1: 200 steps"} <= passed  # the long case clipped to 16
    assert "polygraphy run" in out and "--model-type engine --trt" in out


def test_a_real_engine_folder(exports, tmp_path, capsys):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    gpu, why = trt_env.gpu_info()
    if gpu is None:
        pytest.skip(f"no CUDA GPU: {why}")
    out, _ = engines.build_engines(exports["tokens"], tmp_path / "eng", engines.BuildOptions(precision="fp32",
                                   batch=(1, 2, 4), seq=(1, 16, 64)))
    rc, text, err = run_check(capsys, out, *SMALL)
    assert rc == 0, text + err
