"""lru_deploy.serve without a server: config texts from the contract, the refusals of `triton` and `serve`, the
client's addresses and its message for a server that is not there. Runs in the project's own environment
(no tritonclient, no nvidia-pytriton); tests/test_serve_triton.py runs the rest against a real server."""
from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from lru_deploy import cli, contract
from lru_deploy.checkpoints import save_model
from lru_deploy.errors import InputError
from lru_deploy.serve import ServeError
from lru_deploy.serve import client as sc
from lru_deploy.serve import config as tc
from lru_deploy.serve import server as ss


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, lru):
    root = tmp_path_factory.mktemp("serve_repo")
    model = save_model(lru.make_model(lru.small_config(), seed=5), root / "tiny")
    out = root / "export"
    assert cli.main(["export", str(model), "--out", str(out), "--precision", "fp32", "--chunk", "4",
                     "--max-seq", "32", "--no-validate"]) == 0
    return out


def test_python_config_takes_its_tensors_from_the_contract(lru):
    cfg = lru.small_config()  # vocab 13, d_output 7, 2 layers, d_hidden 5
    spec = contract.graph_spec(cfg, "prefill")
    text = tc.python_config("m", spec, max_batch=3, instances=2, idle_us=5_000_000, kind="KIND_CPU",
                            params={tc.P_TARGET: "export", tc.P_BACKEND: "onnxruntime"})
    assert 'name: "m"' in text and 'backend: "python"' in text and "max_batch_size: 3" in text
    assert '{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }' in text
    assert '{ name: "outputs" data_type: TYPE_FP32 dims: [ -1, 7 ] }' in text
    assert "max_sequence_idle_microseconds: 5000000" in text and "direct { }" in text
    for control in ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY",
                    "CONTROL_SEQUENCE_CORRID"):
        assert control in text
    assert "count: 2 kind: KIND_CPU" in text
    assert 'key: "lru_deploy_backend" value { string_value: "onnxruntime" }' in text
    assert "state [" not in text  # the Python backend would not carry it: the model keeps the state


def test_graph_config_has_implicit_state_for_every_state_pair(lru):
    cfg = lru.small_config(pooling="mean")  # state, pool_sum, pool_count; pooled outputs [batch, d_output]
    spec = contract.graph_spec(cfg, "prefill")
    text = tc.graph_config("g", spec, max_batch=4, instances=1, idle_us=1, platform="tensorrt_plan",
                           kind="KIND_GPU", model_file="model.plan")
    assert 'platform: "tensorrt_plan"' in text and 'default_model_filename: "model.plan"' in text
    assert '{ name: "outputs" data_type: TYPE_FP32 dims: [ 7 ] }' in text
    assert 'input_name: "state" output_name: "state_out" data_type: TYPE_FP32 dims: [ 2, 2, 5 ]' in text
    assert 'input_name: "pool_sum" output_name: "pool_sum_out" data_type: TYPE_FP32 dims: [ 6 ]' in text
    assert 'input_name: "pool_count" output_name: "pool_count_out" data_type: TYPE_FP32 dims: [ 1 ]' in text
    assert text.count("zero_data: true") == 3
    assert "control_input" not in text  # TensorRT/onnxruntime need every control input to be a graph input
    assert "max_candidate_sequences: 4" in text and "kind: KIND_GPU" in text
    cont = tc.graph_config("c", contract.graph_spec(lru.small_config(d_input=3), "prefill"), max_batch=2,
                           instances=1, idle_us=1, backend="onnxruntime", model_file="model.onnx")
    assert '{ name: "inputs" data_type: TYPE_FP32 dims: [ -1, 3 ] }' in cont
    with pytest.raises(ValueError):
        tc.graph_config("x", spec, max_batch=1, instances=1, idle_us=1, model_file="m")


def test_triton_refuses_an_existing_folder_without_overwrite(export_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = cli.main(["triton", str(export_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "exists and is not empty" in err and "notes.txt" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv, words", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--instances", "0"], "--instances must be >= 1"),
    (["--name", "../x"], "--name '../x'"),
    (["--idle-timeout", "0"], "--idle-timeout must be > 0"),
    (["--precision", "fp16"], "has no fp16 graphs"),
])
def test_triton_refuses_bad_options_with_one_message(export_dir, tmp_path, capsys, argv, words):
    rc = cli.main(["triton", str(export_dir), "--out", str(tmp_path / "repo"), *argv])
    err = capsys.readouterr().err
    assert rc == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()


def test_triton_refuses_a_folder_that_is_no_export(tmp_path, model_dir, capsys):
    rc = cli.main(["triton", str(model_dir), "--out", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 1 and "neither an export folder nor an engine folder" in err


def test_triton_without_tritonclient_says_where_to_run_it(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # import tritonclient... raises ImportError
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    rc = cli.main(["triton", str(export_dir), "--out", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot check Triton model configs" in err and "make triton-env" in err
    assert not (tmp_path / "repo").exists()


def test_serve_outside_the_triton_environment_says_which_to_use(monkeypatch):
    monkeypatch.setattr(ss.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ServeError) as e:
        ss.find_install()
    assert "nvidia-pytriton" in e.value.message and "make triton-env" in e.value.hint


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000, None)),
    ("http://localhost:9/lru_idle", ("localhost", 9, "lru_idle")),
    ("[::1]:8000/m/", ("::1", 8000, "m")),
])
def test_server_addresses(text, want):
    assert sc.parse_server(text) == want


@pytest.mark.parametrize("text", ["8000", "host:", "host:0", "https://h:1", "grpc://h:1", "h:port"])
def test_bad_server_addresses_are_one_message(text):
    with pytest.raises(InputError):
        sc.parse_server(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_from_an_unreachable_server_names_the_url(capsys):
    port = _free_port()  # closed again: nothing listens there
    rc = cli.main(["generate", "--server", f"127.0.0.1:{port}", "--prompt", "def "])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot reach the Triton server at http://127.0.0.1:{port}" in err
    assert "lru-deploy serve" in err and "Traceback" not in err


def test_generate_with_server_refuses_local_backend_options(capsys):
    rc = cli.main(["generate", "--server", "127.0.0.1:1", "--backend", "onnxruntime", "--prompt", "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "--backend choose a local backend" in err and "drop --backend" in err


def test_infer_refuses_unsendable_dtypes():
    with pytest.raises(InputError):
        sc.TritonClient("127.0.0.1:1").infer("m", np.zeros((1, 2), np.complex64), sequence_id=1)
