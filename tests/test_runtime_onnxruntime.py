"""The ONNX Runtime session on real exported graphs, against the float64 reference."""
from __future__ import annotations


import numpy as np
import pytest

from lru_deploy import contract
from lru_deploy.checkpoints import save_model
from lru_deploy.errors import ManifestError
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.runtime import ReferenceSession
from lru_deploy.runtime.onnxruntime import OnnxruntimeSession

ATOL, RTOL = 1e-5, 1e-5  # fp32 graphs against the float64 reference, outputs of size ~1



# ---------------------------------------------------------------- ONNX Runtime against the reference

def test_onnxruntime_prefill_splits_long_prompts_exactly(tiny, lru):
    model, _, export = tiny
    ref, ort = ReferenceSession(model), OnnxruntimeSession(export)
    calls = []
    run = ort._run
    ort._run = lambda g, feeds: calls.append(feeds[contract.input_name(model.cfg)].shape) or run(g, feeds)
    ids = lru.random_inputs(model.cfg, 3, 37, seed=1)
    st0 = lru.random_state(model.cfg, 3, seed=2)
    out, st = ort.prefill(ids, st0)
    assert calls == [(3, 16), (3, 16), (3, 5)]  # max_seq 16: three calls, state carried
    want, want_st = ref.prefill(ids, st0)
    np.testing.assert_allclose(out, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(st["state"], want_st["state"], atol=ATOL, rtol=RTOL)


def test_onnxruntime_step_continues_prefill(tiny, lru):
    model, _, export = tiny
    ref, ort = ReferenceSession(model), OnnxruntimeSession(export)
    ids = lru.random_inputs(model.cfg, 2, 9, seed=3)
    _, st = ort.prefill(ids[:, :6])
    for t in range(6, 9):
        out, st = ort.step(ids[:, t], st)
    full, full_st = ref.prefill(ids)
    np.testing.assert_allclose(out, full[:, -1], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(st["state"], full_st["state"], atol=ATOL, rtol=RTOL)


def test_onnxruntime_fp16_within_the_precision_tolerance(tiny, lru):
    model, _, export = tiny
    ids = lru.random_inputs(model.cfg, 2, 20, seed=4)
    got, _ = OnnxruntimeSession(export, precision="fp16").prefill(ids)
    want, _ = ReferenceSession(model).prefill(ids)
    rel_l2 = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel_l2 <= contract.TOLERANCES["fp16"]["rel_l2"], rel_l2


def test_onnxruntime_bf16_runs_emulated_within_tolerance(tmp_path, lru):
    model = lru.make_model(lru.small_config(), seed=8)
    export = export_model(save_model(model, tmp_path / "m"), tmp_path / "e", ExportOptions(precisions=("bf16",),
                          chunk=4, max_seq=64, validate=False, lint=False))
    sess = OnnxruntimeSession(export, precision="bf16")
    assert sess.mode == "bf16-emulated"
    ids = lru.random_inputs(model.cfg, 2, 20, seed=4)
    got, _ = sess.prefill(ids)
    want, _ = ReferenceSession(model).prefill(ids)
    rel_l2 = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel_l2 <= contract.TOLERANCES["bf16"]["rel_l2"], rel_l2


def test_cpu_prefill_split_defaults_to_4096(tmp_path, lru):
    model = lru.make_model(lru.small_config(), seed=8)
    export = export_model(save_model(model, tmp_path / "m"), tmp_path / "e", ExportOptions(precisions=("fp32",),
                          chunk=4, max_seq=10000, validate=False, lint=False))
    assert OnnxruntimeSession(export).max_seq == 4096
    assert OnnxruntimeSession(export, split=None).max_seq == 10000
    assert OnnxruntimeSession(export, split=100).max_seq == 100


def test_same_tokens_on_reference_and_onnxruntime(tiny, lru):
    model, _, export = tiny
    prompts = lru.random_inputs(model.cfg, 3, 21, seed=5)  # longer than max_seq: split
    a = lru.tokens(ReferenceSession(model), prompts, n=16)
    b = lru.tokens(OnnxruntimeSession(export), prompts, n=16)
    assert a.shape == (3, 16)
    np.testing.assert_array_equal(a, b)


def test_batched_generation_equals_one_sequence_at_a_time(tiny, lru):
    model, _, export = tiny
    ort = OnnxruntimeSession(export)
    prompts = lru.random_inputs(model.cfg, 3, 7, seed=6)
    together = np.stack([ort.step(prompts[:, -1], ort.prefill(prompts[:, :-1])[1])[0]])[0]
    for b in range(3):
        alone, _ = ort.step(prompts[b:b + 1, -1], ort.prefill(prompts[b:b + 1, :-1])[1])
        np.testing.assert_allclose(together[b:b + 1], alone, atol=1e-6, rtol=1e-6)
    # greedy decoding is deterministic per row, so a batch decodes like its rows alone
    batch = lru.tokens(ort, prompts, n=8, temperature=0)
    for b in range(3):
        np.testing.assert_array_equal(batch[b:b + 1], lru.tokens(ort, prompts[b:b + 1], n=8, temperature=0))


def test_mean_pooling_state_crosses_backends(pooled, lru):
    model, _, export = pooled
    ref, ort = ReferenceSession(model), OnnxruntimeSession(export)
    x = lru.random_inputs(model.cfg, 2, 23, seed=7)
    out, st = ort.prefill(x[:, :20])
    assert set(st) == {"state", "pool_sum", "pool_count"}
    out, st = ref.step(x[:, 20], st)  # a state from one backend continues on another
    out, st = ort.step(x[:, 21], st)
    out, st = ort.prefill(x[:, 22:], st)
    want, want_st = ref.prefill(x)
    np.testing.assert_allclose(out, want, atol=ATOL, rtol=RTOL)
    for k in want_st:
        np.testing.assert_allclose(st[k], want_st[k], atol=ATOL, rtol=RTOL)
    assert float(st["pool_count"][0, 0]) == 23.0


def test_tampered_graph_is_refused(tiny, tmp_path):
    import shutil
    _, _, export = tiny
    copy = shutil.copytree(export, tmp_path / "copy")
    with open(copy / "fp32" / "step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="does not match the sha256"):
        OnnxruntimeSession(copy)
