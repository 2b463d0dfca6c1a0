"""The TensorRT session. TensorRT is not installed here: its session logic (ping-pong state on the device,
profile checks, CUDA graph capture and replay, compatibility refusal) runs against a fake device and fake
engines that compute with the reference model and emulate CUDA-graph semantics (a captured graph replays the
shapes and addresses of its capture). The real TensorRT path is tested by test_tensorrt_end_to_end, which
skips without TensorRT and a GPU."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from lru_deploy import contract, engines
from lru_deploy import trt_env
from lru_deploy import manifest
from lru_deploy.errors import EngineError, InputError
from lru_deploy.runtime import ReferenceSession, open_session
from lru_deploy.runtime.tensorrt import DeviceTensor, TensorrtSession

ATOL, RTOL = 1e-5, 1e-5  # fp32 graphs against the float64 reference, outputs of size ~1



# ---------------------------------------------------------------- TensorRT session logic on a fake device

H100 = trt_env.RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0.26", trt_env.current_platform())


class FakeCuda:
    """Device memory as numpy bytes; a captured 'CUDA graph' is the list of enqueues made during capture.

    It also holds the session to what TensorRT and CUDA require of CUDA graphs: a capture starts on an idle
    stream (synchronized after the last enqueue), and a graph is launched only while the execution context it
    was captured from is still bound to the shapes and addresses of the capture (`violations` lists each miss).
    """

    def __init__(self, info=H100, capture_ok=True, drop_output=None):
        self.info, self.capture_ok, self.drop_output = info, capture_ok, drop_output
        self.mem, self.next, self.capturing = {}, 1 << 12, None
        self.enqueues = self.launches = self.captures = 0
        self.busy = False  # work enqueued since the last sync
        self.violations: list[str] = []
        self.closed = False
        self.model = None  # set by the test: the reference session the fake engines compute with

    def load(self, plan: bytes, host_code_allowed: bool):
        graph = plan.decode().split(":")[1]
        return FakeEngine(self, graph)

    def malloc(self, n):
        ptr, self.next = self.next, self.next + ((n + 255) // 256 + 1) * 256
        self.mem[ptr] = np.zeros(n, np.uint8)
        return ptr

    def free(self, ptr):
        del self.mem[ptr]

    def h2d(self, ptr, a):
        b = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        assert b.size <= self.mem[ptr].size, "a copy overruns its device buffer"
        self.mem[ptr][:b.size] = b

    def d2h(self, a, ptr):
        a.reshape(-1).view(np.uint8)[:] = self.mem[ptr][:a.nbytes]

    def sync(self):
        self.busy = False

    def begin_capture(self):
        if self.busy:
            self.violations.append("capture began while an enqueue was still in flight (no sync)")
        self.capturing = []

    def end_capture(self):
        ops, self.capturing = self.capturing, None
        self.captures += 1
        return ops if self.capture_ok else None

    def launch(self, ops):
        self.launches += 1
        self.busy = True
        for ctx, bound, op in ops:
            if (dict(ctx.shapes), dict(ctx.addrs)) != bound:
                self.violations.append("launched a CUDA graph whose context was rebound since the capture")
            op()

    def destroy_graph(self, ops):
        pass

    def close(self):
        self.closed = True


class FakeEngine:
    def __init__(self, cuda: FakeCuda, graph: str):
        self.cuda, self.graph = cuda, graph
        m = cuda.manifest
        self.spec = contract.graph_spec(engines.LRUConfig.from_dict(m["config"]), graph, m["prefill_outputs"])
        self.prof = m["profiles"][graph]
        self.contexts = []

    def new_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    def io(self):
        io = {t.name: ("input", np.dtype(t.dtype)) for t in self.spec.inputs}
        io.update({t.name: ("output", np.dtype(t.dtype)) for t in self.spec.outputs})
        if self.cuda.drop_output:
            io.pop(self.cuda.drop_output)
        return io

    def profile(self, name):
        return self.prof[name]


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.cuda, self.shapes, self.addrs = engine, engine.cuda, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_address(self, name, ptr):
        self.addrs[name] = ptr
        return True

    def enqueue(self):
        shapes, addrs = dict(self.shapes), dict(self.addrs)  # what a CUDA graph bakes in at capture
        op = lambda: self._compute(shapes, addrs)  # noqa: E731
        if self.cuda.capturing is not None:
            self.cuda.capturing.append((self, (shapes, addrs), op))
        else:
            self.cuda.enqueues += 1
            self.cuda.busy = True
            op()
        return True

    def _compute(self, shapes, addrs):
        spec = self.engine.spec
        ins, outs = {addrs[t.name] for t in spec.inputs}, {addrs[t.name] for t in spec.outputs}
        assert not ins & outs, "an input and an output share a buffer"
        mem = self.cuda.mem
        feeds = {}
        for t in spec.inputs:
            n = int(np.prod(shapes[t.name])) * np.dtype(t.dtype).itemsize
            assert n <= mem[addrs[t.name]].size, f"{t.name} overruns its device buffer"
            feeds[t.name] = mem[addrs[t.name]][:n].view(t.dtype).reshape(shapes[t.name]).copy()
        for name, arr in self.cuda.model._run(self.engine.graph, feeds).items():
            b = np.ascontiguousarray(arr, np.float32).view(np.uint8).reshape(-1)
            assert b.size <= mem[addrs[name]].size, f"{name} overruns its device buffer"
            mem[addrs[name]][:b.size] = b


@pytest.fixture
def engine_dir(tiny, tmp_path, monkeypatch):
    """A real engine folder (manifest, profiles: batch 1..2, seq 1..16) with fake plans."""
    with monkeypatch.context() as mp:
        mp.setattr(trt_env, "preflight", lambda device=0: H100)
        mp.setattr(engines, "_build_plan", lambda onnx, profile, label, **kw: f"plan:{label}".encode())
        out, _ = engines.build_engines(tiny[2], tmp_path / "eng", engines.BuildOptions(batch=(1, 2, 2),
                                       seq=(1, 8, 16)))
    return out


def fake_session(engine_dir, model, **cuda_kw):
    cuda = FakeCuda(**cuda_kw)
    cuda.manifest = manifest.EngineManifest.read(engine_dir).to_dict()
    cuda.model = ReferenceSession(model)
    return TensorrtSession(engine_dir, runtime=cuda), cuda


def test_tensorrt_session_generates_like_the_reference_with_cuda_graphs(tiny, engine_dir, lru):
    model = tiny[0]
    sess, cuda = fake_session(engine_dir, model)
    assert sess.max_seq == 16 and sess.max_batch == 2
    prompts = lru.random_inputs(model.cfg, 2, 37, seed=8)
    got = lru.tokens(sess, prompts, n=10)
    np.testing.assert_array_equal(got, lru.tokens(ReferenceSession(model), prompts, n=10))
    # prefill: 3 split calls; steps: 2 plain enqueues (one per ping-pong direction, each captured), 7 replays
    assert cuda.enqueues == 3 + 2 and cuda.captures == 2 and cuda.launches == 7
    assert cuda.violations == []


def test_tensorrt_cuda_graphs_keep_one_context_per_direction(tiny, engine_dir, lru):
    """Each step context stays bound to one direction's state buffers; a capture follows a synchronized
    stream; a new batch size captures both directions again. Failed before: one context served both
    directions, so replaying the first graph found the context bound to the other direction's buffers."""
    model = tiny[0]
    sess, cuda = fake_session(engine_dir, model)
    ref = ReferenceSession(model)
    for batch, seed in ((2, 12), (1, 13), (2, 14)):
        prompts = lru.random_inputs(model.cfg, batch, 9, seed=seed)
        np.testing.assert_array_equal(lru.tokens(sess, prompts, n=6), lru.tokens(ref, prompts, n=6))
    assert cuda.violations == []
    assert cuda.captures == 2 * 3 and cuda.launches == 3 * 3  # per batch size: 5 steps, 2 captured, 3 replays
    step = sess._engines["step"]
    assert len(step.contexts) == 2 and len(sess._engines["prefill"].contexts) == 1
    state_in = [{c.addrs["state"]} for c in step.contexts]
    state_out = [{c.addrs["state_out"]} for c in step.contexts]
    assert state_in[0] == state_out[1] and state_in[1] == state_out[0] and state_in[0] != state_in[1]


def test_tensorrt_refuses_engines_whose_batch_ranges_differ(tiny, engine_dir):
    """The state buffers pass between the graphs. Failed before: buffers were sized by the smaller maximum
    while the prefill accepted its own larger one."""
    m = json.loads((engine_dir / "manifest.json").read_text())
    for t in m["profiles"]["step"].values():  # a step engine built for batch 1..1 beside a prefill for 1..2
        t["min"][0] = t["opt"][0] = t["max"][0] = 1
    (engine_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="take different batch sizes: prefill 1..2, step 1..1") as e:
        fake_session(engine_dir, tiny[0])
    assert "--batch MIN:OPT:MAX" in e.value.hint


def test_tensorrt_state_stays_on_the_device_and_only_the_latest_is_valid(tiny, engine_dir, lru):
    model = tiny[0]
    sess, cuda = fake_session(engine_dir, model)
    ref = ReferenceSession(model)
    ids = lru.random_inputs(model.cfg, 2, 12, seed=9)
    out, st = sess.prefill(ids[:, :10])
    assert isinstance(st["state"], DeviceTensor) and st["state"].shape == (2, model.cfg.n_layers, 2, 5)
    out2, st2 = sess.step(ids[:, 10], st)
    out3, st3 = sess.step(ids[:, 11], st2)
    want, want_st = ref.prefill(ids)
    np.testing.assert_allclose(out3, want[:, -1], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(st3["state"]), want_st["state"], atol=ATOL, rtol=RTOL)
    with pytest.raises(InputError, match="was overwritten") as e:
        sess.step(ids[:, 11], st2)  # only a session's latest state is valid: st3 replaced st2
    assert "np.array(value)" in e.value.hint
    with pytest.raises(InputError, match="was overwritten"):
        np.asarray(st["state"])
    # a host copy of a state runs anywhere, also fed back into the same session
    host = {k: np.array(v) for k, v in st3.items()}
    again, _ = sess.step(ids[:, 0], host)
    np.testing.assert_allclose(again, ref.step(ids[:, 0], want_st)[0], atol=ATOL, rtol=RTOL)


def test_tensorrt_shapes_outside_the_profile_fail_before_enqueue(tiny, engine_dir, lru):
    sess, cuda = fake_session(engine_dir, tiny[0])
    with pytest.raises(InputError, match="optimization profile") as e:
        sess.prefill(lru.random_inputs(tiny[0].cfg, 3, 4, seed=1))
    assert "input_ids: batch is 3, the prefill engine's profile allows 1..2" in e.value.problems
    assert "--batch 1:1:3" in e.value.hint
    assert cuda.enqueues == 0


def test_tensorrt_capture_failure_falls_back_to_plain_enqueues(tiny, engine_dir, lru):
    model = tiny[0]
    sess, cuda = fake_session(engine_dir, model, capture_ok=False)
    prompts = lru.random_inputs(model.cfg, 1, 5, seed=10)
    np.testing.assert_array_equal(lru.tokens(sess, prompts, n=6), lru.tokens(ReferenceSession(model), prompts, n=6))
    assert sess.cuda_graphs is False and cuda.launches == 0 and cuda.enqueues == 1 + 5


def test_tensorrt_refuses_another_gpu_and_a_broken_contract(tiny, engine_dir):
    other = trt_env.RuntimeInfo("Tesla T4", "7.5", "10.3.0.26", trt_env.current_platform())
    with pytest.raises(EngineError, match="cannot run here") as e:
        fake_session(engine_dir, tiny[0], info=other)
    assert "GPU model that built it" in e.value.render() and "lru-deploy build" in e.value.hint
    with pytest.raises(EngineError, match="do not follow the I/O contract") as e:
        fake_session(engine_dir, tiny[0], drop_output="state_out")
    assert "prefill: no output 'state_out' (the contract's outputs: outputs, state_out)" in e.value.problems


@pytest.mark.skipif(not trt_env.tensorrt_problem(), reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_why(engine_dir):
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        open_session(engine_dir)


def test_tensorrt_backend_with_a_namespace_tensorrt_says_why(engine_dir, tmp_path, monkeypatch):
    (tmp_path / "site" / "tensorrt").mkdir(parents=True)  # what tensorrt-stubs leaves: a folder without the module
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    importlib.invalidate_caches()
    try:
        with pytest.raises(EngineError, match="cannot build or run TensorRT engines") as e:
            open_session(engine_dir)
    finally:
        sys.modules.pop("tensorrt", None)  # monkeypatch restores only keys that existed
    assert "is not TensorRT" in e.value.render()


@pytest.mark.trt
def test_tensorrt_end_to_end(tiny, tmp_path, lru):
    if trt_env.tensorrt_problem():
        pytest.skip(trt_env.tensorrt_problem())
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python not installed")
    gpu, why = trt_env.gpu_info()
    if gpu is None:
        pytest.skip(f"no CUDA GPU: {why}")
    model, _, export = tiny
    out, _ = engines.build_engines(export, tmp_path / "eng", engines.BuildOptions(batch=(1, 2, 3), seq=(1, 8, 16)))
    with open_session(out) as trt:
        ids = lru.random_inputs(model.cfg, 3, 37, seed=11)
        got, st = trt.prefill(ids)
        want, want_st = ReferenceSession(model).prefill(ids)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(st["state"]), want_st["state"], atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(lru.tokens(trt, ids, n=8, temperature=0),
                                      lru.tokens(ReferenceSession(model), ids, n=8, temperature=0))
