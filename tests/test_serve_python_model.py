"""The Python-backend model (lru_deploy/serve/python_model.py) driven directly, with a stand-in for the
backend's triton_python_backend_utils: null requests, START over a stale state, END, idleness, batching of
steps across sequences, refusals. Logits against the onnxruntime session, max abs 1e-5."""
from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

from lru_deploy import cli
from lru_deploy.checkpoints import save_model
from lru_deploy.runtime import open_session
from lru_deploy.serve import python_model

ATOL, RTOL = 1e-5, 0.0


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


class TritonError:
    def __init__(self, message):
        self.text = message


class Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


@pytest.fixture
def pb(monkeypatch):
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor, mod.TritonError, mod.InferenceResponse = Tensor, TritonError, Response
    mod.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", mod)
    return mod


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, lru):
    root = tmp_path_factory.mktemp("pymodel")
    model = save_model(lru.make_model(lru.small_config(), seed=7), root / "tiny")  # vocab 13, d_output 7
    out = root / "export"
    assert cli.main(["export", str(model), "--out", str(out), "--precision", "fp32", "--chunk", "4",
                     "--max-seq", "32", "--no-validate"]) == 0
    return out


@pytest.fixture
def model(pb, export_dir, tmp_path):
    shutil.copytree(export_dir, tmp_path / "m" / "1" / "export")
    cfg = {"parameters": {python_model.P_TARGET: {"string_value": "export"},
                          python_model.P_BACKEND: {"string_value": "onnxruntime"},
                          python_model.P_PRECISION: {"string_value": "fp32"}},
           "sequence_batching": {"max_sequence_idle_microseconds": "2000000"}}
    m = python_model.TritonPythonModel()
    m.initialize({"model_config": json.dumps(cfg), "model_repository": str(tmp_path / "m"), "model_version": "1",
                  "model_name": "m", "model_instance_name": "m_0"})
    return m


@pytest.fixture
def sess(export_dir):
    return open_session(export_dir, backend="onnxruntime")


def req(ids, corrid, start=0, end=0, ready=1):
    ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
    return {"input_ids": Tensor("input_ids", ids), "START": Tensor("START", [[start]]),
            "END": Tensor("END", [[end]]), "READY": Tensor("READY", [[ready]]),
            "CORRID": Tensor("CORRID", np.array([[corrid]], np.uint64))}


def out(response):
    assert response.error is None, response.error.text
    return response.outputs["outputs"]


def test_prompts_and_steps_of_several_sequences_match_the_session(model, sess, monkeypatch):
    calls = []
    step = model.session.step
    monkeypatch.setattr(model.session, "step", lambda x, st: calls.append(len(x)) or step(x, st))
    a, b = [1, 2, 3, 4, 5], [7, 8]
    r = model.execute([req(a, 1, start=1), req(b, 2, start=1), req([6], 3, start=1)])
    want_a, st_a = sess.prefill(np.array([a]))
    want_b, st_b = sess.prefill(np.array([b]))
    want_c, st_c = sess.prefill(np.array([[6]]))  # a one-token prompt runs the step graph from the zero state
    np.testing.assert_allclose(out(r[0]), want_a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out(r[1]), want_b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out(r[2]), want_c, rtol=RTOL, atol=ATOL)
    assert out(r[2]).shape == (1, 1, 7)
    r = model.execute([req([9], 2), req([10], 1), req([11], 3, end=1)])  # one step call for the three
    assert calls == [1, 3]
    for resp, tok, st in ((r[0], 9, st_b), (r[1], 10, st_a), (r[2], 11, st_c)):
        want, _ = sess.step(np.array([tok]), st)
        np.testing.assert_allclose(out(resp)[:, 0], want, rtol=RTOL, atol=ATOL)
    assert set(model.states) == {1, 2}  # 3 ended


def test_null_requests_get_zeros_and_keep_nothing(model):
    r = model.execute([req([0], 5, start=1, ready=0)])
    assert out(r[0]).shape == (1, 1, 7) and not out(r[0]).any()
    assert model.states == {}


def test_start_replaces_a_stale_state(model, sess):
    model.execute([req([1, 2, 3], 4, start=1)])
    model.execute([req([4], 4)])
    r = model.execute([req([1, 2, 3], 4, start=1)])
    want, _ = sess.prefill(np.array([[1, 2, 3]]))
    np.testing.assert_allclose(out(r[0]), want, rtol=RTOL, atol=ATOL)


def test_unknown_or_ended_sequences_are_refused(model):
    model.execute([req([1, 2], 6, start=1, end=1)])
    r = model.execute([req([3], 6), req([3], 7)])
    for resp, corrid in zip(r, (6, 7)):
        assert not resp.outputs and f"sequence {corrid} has no state" in resp.error.text


def test_states_idle_past_the_release_are_dropped(model, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(python_model.time, "monotonic", lambda: now[0])
    model.execute([req([1, 2], 8, start=1), req([1, 2], 9, start=1)])
    now[0] += 3.0  # idle 2 s in the config: Triton has released both; kept until twice that
    model.execute([req([3], 9)])
    assert set(model.states) == {8, 9}
    now[0] += 2.0
    model.execute([req([1], 10, start=1)])
    assert set(model.states) == {9, 10}  # 8 idle 5 s: dropped; 9 used 2 s ago


def test_bad_requests_are_refused_alone(model, sess):
    r = model.execute([req([1, 99], 10, start=1), req([2, 3], 11, start=1), {"READY": Tensor("READY", [[1]])}])
    assert "ids in [1, 99], the model takes [0, 12]" in r[0].error.text
    want, _ = sess.prefill(np.array([[2, 3]]))
    np.testing.assert_allclose(out(r[1]), want, rtol=RTOL, atol=ATOL)
    assert "no input_ids input" in r[2].error.text
    r = model.execute([{"input_ids": Tensor("input_ids", np.zeros((1, 1), np.int64))}])
    assert "no READY control input" in r[0].error.text
    bad = req([1], 13, start=1)
    bad["input_ids"] = Tensor("input_ids", np.zeros((2, 3), np.int64))
    assert "a sequence sends one row" in model.execute([bad])[0].error.text


class DeviceLike:
    """Like the TensorRT session's DeviceTensor: readable through __array__ only, no slicing."""

    def __init__(self, array):
        self._a = np.asarray(array)

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_states_handed_back_on_the_device_are_kept_on_the_host(model, sess, monkeypatch):
    prefill, step = model.session.prefill, model.session.step

    def wrap(fn):
        def run(x, st):
            o, new = fn(x, {k: np.asarray(v) for k, v in st.items()} if st is not None else None)
            return DeviceLike(o), {k: DeviceLike(v) for k, v in new.items()}
        return run

    monkeypatch.setattr(model.session, "prefill", wrap(prefill))
    monkeypatch.setattr(model.session, "step", wrap(step))
    model.execute([req([1, 2, 3], 20, start=1), req([4, 5], 21, start=1)])
    assert all(isinstance(v, np.ndarray) for st, _ in model.states.values() for v in st.values())
    r = model.execute([req([6], 20), req([7], 21)])
    for resp, ids, tok in ((r[0], [1, 2, 3], 6), (r[1], [4, 5], 7)):
        _, st = sess.prefill(np.array([ids]))
        want, _ = sess.step(np.array([tok]), st)
        np.testing.assert_allclose(out(resp)[:, 0], want, rtol=RTOL, atol=ATOL)
