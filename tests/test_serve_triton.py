"""Against a real Triton server: `lru-deploy triton` writes the repositories (in the Triton environment),
`lru-deploy serve` runs them on free loopback ports, and the client here drives interleaved concurrent
sequences whose logits must equal the onnxruntime session's (max abs 1e-5) and whose text must equal
`lru-deploy generate`'s. The onnxruntime and TensorRT flavours are checked by Triton's schema and loaded under
stand-in Python-backend models registered under their names, so that Triton runs its own config checks.

The Triton environment (nvidia-pytriton, numpy < 2, tritonclient, lru-deploy) is .venv/triton, which
`make test` creates and names in LRU_DEPLOY_TRITON_ENV: then a missing one fails these tests; run otherwise,
they skip with the reason.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lru_deploy import cli
from lru_deploy.engines import profile_shapes
from lru_deploy.errors import InputError
from lru_deploy.files import file_sha256
from lru_deploy.manifest import EngineManifest, ExportManifest
from lru_deploy.runtime import open_session
from lru_deploy.serve import ServeError
from lru_deploy.serve import client as sc
from lru_deploy.serve import server as ss
from lru_deploy.serve.repository import write_repository

ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "LRU_DEPLOY_TRITON_ENV"
ATOL, RTOL = 1e-5, 0.0  # logits through the server against the onnxruntime session
STARTUP_S = 180  # a 2-core box loading torch and onnxruntime in each stub
STOP_S = 60

STAND_IN = '''"""Stands in for Triton's onnxruntime / TensorRT backend so that Triton checks this config when it loads the
model: it answers zeros in the configured output dims."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.input = cfg["input"][0]["name"]
        self.output = cfg["output"][0]["name"]
        self.dims = [int(d) for d in cfg["output"][0]["dims"]]

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, self.input).as_numpy()
            shape = [x.shape[0]] + [x.shape[1] if d == -1 else d for d in self.dims]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.zeros(shape, np.float32))]))
        return out
'''

PARSE = """import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
print(json.dumps({p: json_format.MessageToDict(text_format.Parse(open(p).read(), model_config_pb2.ModelConfig()))
                  for p in sys.argv[1:]}))
"""


# ---------------------------------------------------------------- the environment and the processes

@pytest.fixture(scope="module")
def triton_bin() -> Path:
    named = os.environ.get(ENV_VAR)
    env = Path(named) if named else ROOT / ".venv" / "triton"
    if not ((env / "bin" / "lru-deploy").is_file() and (env / "bin" / "python").is_file()):
        msg = f"the Triton environment {env} is missing (`make triton-env` creates it; `make test` does)"
        if named:
            pytest.fail(msg)
        pytest.skip(msg)
    return env / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    found = []
    for child in ss._children(pid):
        found += [child, *descendants(child.pid)]
    return found


def run_env(bin_dir: Path, *args, timeout: float = 180) -> subprocess.CompletedProcess:
    """`lru-deploy ARGS` in the Triton environment; past the timeout it and what it started are ended by pid."""
    proc = subprocess.Popen([str(bin_dir / "lru-deploy"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in reversed(descendants(proc.pid)):
            os.kill(p.pid, signal.SIGKILL)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"lru-deploy {' '.join(map(str, args))} still ran after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class ServeProcess:
    """`lru-deploy serve` in the Triton environment; stop() ends it and checks that nothing is left."""

    def __init__(self, bin_dir: Path, repo: Path, log: Path):
        self.http, self.grpc = free_port(), free_port()
        while self.grpc == self.http:
            self.grpc = free_port()
        self.log = log
        self._err = open(log, "w")
        self.proc = subprocess.Popen([str(bin_dir / "lru-deploy"), "serve", str(repo), "--http-port", str(self.http),
                                      "--grpc-port", str(self.grpc)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err, cwd=ROOT, start_new_session=True)
        self.procs: list = []  # tritonserver and its stubs, as lru_deploy.serve.server records them
        self.startup_s = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http}"

    def wait_ready(self) -> "ServeProcess":
        t0 = time.perf_counter()
        deadline = time.monotonic() + STARTUP_S
        while "Triton serving" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(check=False)
                pytest.fail(f"lru-deploy serve did not become ready (exit {self.proc.returncode}):\n"
                            f"{self.log.read_text()[-4000:]}")
            time.sleep(0.1)
        self.startup_s = time.perf_counter() - t0
        self._record()
        return self

    def _record(self) -> None:
        for server in ss._children(self.proc.pid):
            self.procs.append(server)
            self.procs.extend(ss._children(server.pid))

    def stop(self, sig: int = signal.SIGTERM, check: bool = True) -> int:
        if self.proc.poll() is None:
            self._record()
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = [p for p in self.procs if ss._alive(p)]
        for p in left:  # never leave a process behind, whatever the outcome
            os.kill(p.pid, signal.SIGKILL)
        self._err.close()
        shm = [p.shm for p in self.procs if p.shm and (Path("/dev/shm") / p.shm).exists()]
        if check:
            assert not left, f"processes left behind: {left}\n{self.log.read_text()[-3000:]}"
            assert not shm, f"shared memory left behind: {shm}"
            assert self.proc.returncode == 0, self.log.read_text()[-3000:]
        return self.proc.returncode


# ---------------------------------------------------------------- repositories

def fake_engines(export: Path, folder: Path, batch=(1, 4, 8), seq=(1, 64, 256)) -> Path:
    """An engine folder whose plans are placeholders: what `triton` reads of it is the manifest."""
    src = ExportManifest.read(export)
    folder.mkdir(parents=True)
    entries = {}
    for g in ("prefill", "step"):
        (folder / f"{g}.plan").write_bytes(b"not a real plan: " + g.encode())
        entries[g] = {"path": f"{g}.plan", "sha256": file_sha256(folder / f"{g}.plan"), "bytes": 0}
    EngineManifest(name=src.name, precision="fp32", engines=entries, gpu={"name": "stand-in",
                   "compute_capability": "9.0"}, tensorrt={"version": "10.13.0.35"}, config=src.config,
                   contract=src.contract, profiles=profile_shapes(src.cfg, batch, seq), max_seq=seq[2],
                   chunk=src.chunk, batch=list(batch), seq=list(seq)).write(folder)
    return folder


def stand_in(src: Path, dest: Path) -> None:
    """The model folder `src` (onnxruntime or TensorRT backend) as a Python-backend model of the same config."""
    text = (src / "config.pbtxt").read_text()
    text = re.sub(r'^(platform|backend): ".*"$', 'backend: "python"', text, flags=re.M)
    text = re.sub(r"^default_model_filename: .*\n", "", text, flags=re.M)
    text = text.replace("KIND_GPU", "KIND_CPU")
    (dest / "1").mkdir(parents=True)
    (dest / "config.pbtxt").write_text(text)
    (dest / "1" / "model.py").write_text(STAND_IN)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """The bundled model, exported (fp32)."""
    export = tmp_path_factory.mktemp("bundled") / "export"
    assert cli.main(["export", "default", "--out", str(export), "--precision", "fp32", "--no-validate"]) == 0
    return export


@pytest.fixture(scope="module")
def served(tmp_path_factory, triton_bin, export_dir):
    root = tmp_path_factory.mktemp("triton")
    export = export_dir
    engines = fake_engines(export, root / "engines")
    jobs = {"main": [export, "--out", root / "r_main", "--max-batch", "8"],
            "idle": [export, "--out", root / "r_idle", "--name", "lru_idle", "--idle-timeout", "1"],
            "trt": [engines, "--out", root / "r_trt", "--name", "eng", "--max-batch", "8", "--instances", "2"]}
    procs = {k: subprocess.Popen([str(triton_bin / "lru-deploy"), "triton", *map(str, a)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT) for k, a in jobs.items()}
    try:
        for k, p in procs.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"triton {k}: {out}\n{err}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    repo = root / "serve"
    repo.mkdir()
    shutil.copytree(root / "r_main" / "lru", repo / "lru")
    shutil.copytree(root / "r_idle" / "lru_idle", repo / "lru_idle")
    stand_in(root / "r_main" / "lru_onnx", repo / "lru_onnx")
    stand_in(root / "r_trt" / "eng_trt", repo / "eng_trt")
    server = ServeProcess(triton_bin, repo, root / "serve.log")
    try:
        server.wait_ready()
        yield SimpleNamespace(server=server, url=server.url, export=export, root=root, repo=repo,
                              session=open_session(export, backend="onnxruntime"), triton_bin=triton_bin)
    finally:
        server.stop()


# ---------------------------------------------------------------- configs

def test_every_generated_config_parses_against_tritons_schema(served):
    paths = sorted(str(p) for p in served.root.glob("r_*/*/config.pbtxt"))
    assert len(paths) == 6
    res = subprocess.run([str(served.triton_bin / "python"), "-c", PARSE, *paths], capture_output=True, text=True,
                         timeout=120, check=True)
    cfg = {Path(p).parent.name: c for p, c in json.loads(res.stdout).items()}
    state_dims = ["4", "2", "128"]  # the bundled model's contract: state [batch, 4, 2, 128]
    py = cfg["lru"]
    assert py["backend"] == "python" and py["maxBatchSize"] == 8
    assert py["input"] == [{"name": "input_ids", "dataType": "TYPE_INT64", "dims": ["-1"]}]
    assert py["output"] == [{"name": "outputs", "dataType": "TYPE_FP32", "dims": ["-1", "256"]}]
    assert "direct" in py["sequenceBatching"] and "state" not in py["sequenceBatching"]
    assert [c["name"] for c in py["sequenceBatching"]["controlInput"]] == ["START", "END", "READY", "CORRID"]
    assert py["parameters"]["lru_deploy_backend"]["stringValue"] == "onnxruntime"
    assert cfg["lru_idle"]["sequenceBatching"]["maxSequenceIdleMicroseconds"] == "1000000"
    onnx, trt = cfg["lru_onnx"], cfg["eng_trt"]
    assert onnx["backend"] == "onnxruntime" and trt["platform"] == "tensorrt_plan"
    for g in (onnx, trt):
        (state,) = g["sequenceBatching"]["state"]
        assert (state["inputName"], state["outputName"], state["dims"]) == ("state", "state_out", state_dims)
        (init,) = state["initialState"]
        assert init["zeroData"] and init["dims"] == state_dims and init["dataType"] == "TYPE_FP32"
        assert "controlInput" not in g["sequenceBatching"]
        assert g["output"] == py["output"] and g["input"] == py["input"]
    assert trt["instanceGroup"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert cfg["eng"]["parameters"]["lru_deploy_backend"]["stringValue"] == "tensorrt"
    assert (served.root / "r_trt" / "eng" / "1" / "engines" / "prefill.plan").is_file()
    readme = (served.root / "r_main" / "README.md").read_text()
    assert "lru-deploy serve" in readme and "nvcr.io/nvidia/tritonserver" in readme


def test_graph_flavours_load_in_triton_under_stand_ins(served):
    c = sc.TritonClient(served.url)
    for model in ("lru_onnx", "eng_trt"):
        meta = c.check_model(model)  # Triton loaded the config: its sequence-batcher and state checks passed
        assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]
        assert meta["outputs"] == [{"name": "outputs", "datatype": "FP32", "shape": [-1, -1, 256]}]
        out = c.infer(model, np.arange(5, dtype=np.int64)[None], sequence_id=99, start=True, end=True)
        assert out.shape == (1, 5, 256)
    c.close()


# ---------------------------------------------------------------- serving

def test_interleaved_concurrent_sequences_match_onnxruntime(served):
    """Six sequences, prompts of 1 to 40 tokens, each starting one round after the last, so that prompts and
    steps of different sequences meet in the same executions; every logit against the onnxruntime session."""
    lengths = [7, 1, 40, 3, 16, 2]
    rounds = len(lengths) + 10
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, size=n) for n in lengths]
    tokens = [rng.integers(0, 256, size=rounds) for _ in lengths]
    got: dict = {i: [] for i in range(len(lengths))}
    errors = []
    barrier = threading.Barrier(len(lengths))

    def drive(i: int) -> None:
        try:
            with sc.TritonClient(served.url) as c:
                for r in range(rounds):
                    barrier.wait(timeout=60)
                    if r < i:
                        continue
                    last = r == rounds - 1
                    x = prompts[i][None] if r == i else tokens[i][r:r + 1][None]
                    got[i].append(c.infer("lru", x, sequence_id=1000 + i, start=r == i, end=last))
        except (ServeError, threading.BrokenBarrierError, AssertionError) as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(lengths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    sess = served.session
    for i in range(len(lengths)):
        want, st = sess.prefill(prompts[i][None])
        assert got[i][0].shape == (1, lengths[i], 256)
        np.testing.assert_allclose(got[i][0], want, rtol=RTOL, atol=ATOL)
        for k, out in enumerate(got[i][1:], start=i + 1):
            want, st = sess.step(tokens[i][k:k + 1], st)
            assert out.shape == (1, 1, 256)
            np.testing.assert_allclose(out[:, 0], want, rtol=RTOL, atol=ATOL)
    stats = json.loads(_get(served.url, "/v2/models/lru/stats"))["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1  # steps of several sequences in one execution


def _get(url: str, path: str) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://{url}{path}", timeout=10) as r:
        return r.read().decode()


def test_two_concurrent_generate_server_commands_give_the_onnxruntime_text(served, capsys):
    cases = [("def ", 3, 0.8, 40, 120), ("import os\nclass ", 11, 1.0, 0, 90)]
    procs = [subprocess.Popen([sys.executable, "-m", "lru_deploy.cli", "generate", "--server", served.url,
                               "--prompt", p, "--seed", str(seed), "--temperature", str(t), "--top-k", str(k),
                               "--max-new-tokens", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
             for p, seed, t, k, n in cases]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for (prompt, seed, t, k, n), proc, (out, err) in zip(cases, procs, outs):
        assert proc.returncode == 0, err.decode()
        assert cli.main(["generate", str(served.export), "--backend", "onnxruntime", "--prompt", prompt,
                         "--seed", str(seed), "--temperature", str(t), "--top-k", str(k),
                         "--max-new-tokens", str(n)]) == 0
        local = capsys.readouterr().out
        assert out.decode() == local
        assert len(local) > len(prompt) + 10
        assert f"[triton http://{served.url}/lru] {n} tokens" in err.decode()


def test_generate_stream_ends_its_sequence(served):
    sess = sc.RemoteSession(served.url)
    toks = list(sess.generate(np.array([100, 101]), 5, temperature=0.0, seed=0, sequence_id=4242))
    assert len(toks) == 5
    with sc.TritonClient(served.url) as c, pytest.raises(sc.SequenceReleased):
        c.infer("lru", toks[-1][:, None], sequence_id=4242)  # ended with the last request: nothing held


def test_start_replaces_a_stale_state(served):
    ids = np.array([[5, 6, 7, 8]])
    with sc.TritonClient(served.url) as c:
        c.infer("lru", ids, sequence_id=77, start=True)
        c.infer("lru", np.array([[9]]), sequence_id=77)
        again = c.infer("lru", ids, sequence_id=77, start=True, end=True)  # START again, no END before
    want, _ = served.session.prefill(ids)
    np.testing.assert_allclose(again, want, rtol=RTOL, atol=ATOL)


def test_a_sequence_never_started_is_refused(served):
    with sc.TritonClient(served.url) as c, pytest.raises(sc.SequenceReleased) as e:
        c.infer("lru", np.array([[1]]), sequence_id=31337)
    assert "no longer holds sequence 31337" in e.value.message and "--idle-timeout" in e.value.hint


def test_a_sequence_released_for_idleness_says_so(served):
    with sc.TritonClient(served.url) as c:
        c.infer("lru_idle", np.array([[1, 2, 3]]), sequence_id=5, start=True)
        time.sleep(2.5)  # the model's max_sequence_idle_microseconds is 1 s
        with pytest.raises(sc.SequenceReleased) as e:
            c.infer("lru_idle", np.array([[4]]), sequence_id=5)
        assert "sat idle longer than the model's max_sequence_idle_microseconds" in e.value.message
        out = c.infer("lru_idle", np.array([[1, 2, 3]]), sequence_id=5, start=True, end=True)  # starts afresh
    want, _ = served.session.prefill(np.array([[1, 2, 3]]))
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_bad_requests_are_refused_with_the_models_message(served):
    with sc.TritonClient(served.url) as c:
        with pytest.raises(ServeError) as e:
            c.infer("lru", np.array([[3, 300]]), sequence_id=8, start=True, end=True)
        assert "ids in [3, 300], the model takes [0, 255]" in e.value.message
        with pytest.raises(ServeError) as e:
            c.check_model("nope")
        assert "no ready model 'nope'" in e.value.message and "lru_idle" in e.value.message


GRPC = """import sys
import numpy as np
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
outs = []
for ids, start, end in ((np.array([[5, 6, 7]]), True, False), (np.array([[8]]), False, True)):
    x = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
    x.set_data_from_numpy(ids.astype(np.int64))
    outs.append(c.infer("lru", [x], sequence_id=6060, sequence_start=start, sequence_end=end).as_numpy("outputs"))
np.savez(sys.argv[2], prompt=outs[0], step=outs[1])
"""


def test_the_grpc_port_serves_the_same_sequences(served, tmp_path):
    """tritonclient's gRPC client (in the Triton environment) against the onnxruntime session."""
    subprocess.run([str(served.triton_bin / "python"), "-c", GRPC, f"127.0.0.1:{served.server.grpc}",
                    str(tmp_path / "out.npz")], check=True, timeout=120, capture_output=True)
    with np.load(tmp_path / "out.npz") as z:
        prompt, step = z["prompt"], z["step"]
    want, st = served.session.prefill(np.array([[5, 6, 7]]))
    np.testing.assert_allclose(prompt, want, rtol=RTOL, atol=ATOL)
    want, _ = served.session.step(np.array([8]), st)
    np.testing.assert_allclose(step[:, 0], want, rtol=RTOL, atol=ATOL)


def test_generate_against_the_grpc_port_says_it_is_not_http(served, capsys):
    rc = cli.main(["generate", "--server", f"127.0.0.1:{served.server.grpc}", "--prompt", "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "did not answer as an HTTP server" in err and "not its gRPC port" in err


def test_serve_refuses_a_port_in_use(served):
    res = run_env(served.triton_bin, "serve", served.repo, "--http-port", served.server.http,
                  "--grpc-port", free_port(), timeout=60)
    assert res.returncode == 1
    assert f"HTTP port {served.server.http} on 127.0.0.1 is in use" in res.stderr
    assert "Traceback" not in res.stderr


def test_serve_names_a_model_that_fails_to_load(served, tmp_path):
    repo = tmp_path / "repo"
    stand_in(served.repo / "lru_onnx", repo / "broken")
    (repo / "broken" / "config.pbtxt").write_text(
        (repo / "broken" / "config.pbtxt").read_text().replace('name: "lru_onnx"', 'name: "broken"'))
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('broken on purpose')\n")
    res = run_env(served.triton_bin, "serve", repo, "--http-port", free_port(), "--grpc-port", free_port(),
                  timeout=120)
    assert res.returncode == 1
    assert "tritonserver exited with code 1 while starting" in res.stderr
    assert "failed to load 'broken'" in res.stderr and "broken on purpose" in res.stderr
    assert "Traceback (most recent call last)" not in res.stderr.split("error: tritonserver")[-1]


def test_serve_stops_cleanly_on_sigint(served, tmp_path):
    repo = tmp_path / "repo"
    stand_in(served.repo / "lru_onnx", repo / "lru_onnx")
    server = ServeProcess(served.triton_bin, repo, tmp_path / "serve.log")
    try:
        server.wait_ready()
        assert len(server.procs) == 2  # tritonserver and one stub
        with sc.TritonClient(server.url) as c:
            assert c.ready()
    finally:
        rc = server.stop(signal.SIGINT)
    log = server.log.read_text()
    assert rc == 0 and "Triton serving" in log and "Triton server stopped (exit code 0)" in log


def test_triton_refuses_engines_whose_profiles_exclude_the_batch(export_dir, tmp_path):
    engines = fake_engines(export_dir, tmp_path / "engines", batch=(1, 2, 4), seq=(2, 64, 256))
    with pytest.raises(InputError) as e:
        write_repository(engines, tmp_path / "repo", max_batch=8)
    assert "cannot serve --max-batch 8" in e.value.message
    assert any("batch 1..4 does not cover 1..8" in p for p in e.value.problems)
    assert any("seq starts at 2" in p for p in e.value.problems)
    assert "--max-batch 4" in e.value.hint
    assert not (tmp_path / "repo").exists()
