"""Engine building and engine folders, without TensorRT: the compatibility rules, profile checks, manifests,
trtexec command lines, the build's refusal where TensorRT or a GPU is missing, build_engines with the TensorRT
call replaced, and the C++ side configuring (and parsing a real manifest) without TensorRT."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest

from lru_deploy import cli, engines
from lru_deploy import trt_env
from lru_deploy import manifest
from lru_deploy.cli import build as cli_build
from lru_deploy.checkpoints import file_sha256, save_model
from lru_deploy.trt_env import RuntimeInfo, compatibility_problems
from lru_deploy.errors import EngineError, InputError, ManifestError, OutputError
from lru_deploy.files import MARKER
from lru_deploy.export import ExportOptions, export_model

REPO = Path(__file__).resolve().parents[1]
H100 = RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0.26", "linux-x86_64")


def manifest_for(info: RuntimeInfo, hw: str = "none", vc: bool = False) -> dict:
    return {"gpu": {"name": info.gpu_name, "compute_capability": info.compute_capability},
            "tensorrt": {"version": info.trt_version}, "platform": info.platform,
            "hardware_compat": hw, "version_compatible": vc, "source": {"export_dir": "/x/export/default"}}


# ---------------------------------------------------------------- compatibility rules

def test_same_machine_is_compatible():
    assert compatibility_problems(manifest_for(H100), H100) == []


@pytest.mark.parametrize("running, hw, vc, want", [
    # TensorRT version: exact match unless version-compatible; version-compatible runs forward only
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.4.0.11", "linux-x86_64"), "none", False, "built with TensorRT"),
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.2.0.19", "linux-x86_64"), "none", True, "is older than"),
    # GPU: the same model by default; same compute capability with same-cc; cc >= 8.0 with ampere+
    (RuntimeInfo("NVIDIA H100 PCIe", "9.0", "10.3.0.26", "linux-x86_64"), "none", False, "GPU model that built it"),
    (RuntimeInfo("NVIDIA A100-SXM4-80GB", "8.0", "10.3.0.26", "linux-x86_64"), "same-cc", False,
     "compute capability 9.0 (hardware_compat same-cc)"),
    (RuntimeInfo("Tesla T4", "7.5", "10.3.0.26", "linux-x86_64"), "ampere+", False, "needs 8.0 or newer"),
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0.26", "linux-aarch64"), "none", False, "across platforms"),
])
def test_incompatible_engines_are_refused_with_the_reason(running, hw, vc, want):
    problems = compatibility_problems(manifest_for(H100, hw, vc), running)
    assert len(problems) == 1 and want in problems[0], problems


@pytest.mark.parametrize("running, hw, vc", [
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.8.0.43", "linux-x86_64"), "none", True),
    (RuntimeInfo("NVIDIA H200", "9.0", "11.0.0.1", "linux-x86_64"), "same-cc", True),
    (RuntimeInfo("NVIDIA A10", "8.6", "10.3.0.26", "linux-x86_64"), "ampere+", False),
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "linux-x86_64"), "none", False),  # short version
    (RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "linux-x86_64"), "none", True),  # C++'s three parts
])
def test_documented_relaxations_are_accepted(running, hw, vc):
    assert compatibility_problems(manifest_for(H100, hw, vc), running) == []


@pytest.mark.parametrize("built, running, vc, want", [
    # compared as major.minor.patch: Python's four parts and getInferLibVersion()'s three are one release
    ("10.13.0.35", "10.13.0", False, None), ("10.13.0.35", "10.13.0", True, None),
    ("10.13.0", "10.13.0.35", True, None), ("10.13.0.35", "10.13.1.2", False, "TensorRT release that built it"),
    ("10.13.0.35", "10.14.1.48", True, None), ("10.13.0.35", "10.12.0.36", True, "is older than"),
    # across majors: only 8 -> 10 and 10 -> 11 (NVIDIA's support matrix), and only version-compatible engines
    ("8.6.1.6", "10.3.0.26", True, None), ("10.3.0.26", "11.0.0.114", True, None),
    ("8.6.1.6", "11.4.0.106", True, "across majors only for 8 -> 10, 10 -> 11"),
    ("8.6.1.6", "9.3.0.1", True, "across majors only"),
    ("10.3.0.26", "11.0.0.114", False, "TensorRT release that built it"),
    ("11.0.0.114", "10.16.1.11", True, "is older than"),
])
def test_tensorrt_version_rules(built, running, vc, want):
    got = trt_env.version_problem(built, running, vc)
    assert (got is None) if want is None else (want in got), got


def test_every_mismatch_is_listed_and_the_hint_names_the_rebuild():
    other = RuntimeInfo("Tesla T4", "7.5", "8.6.1.6", "linux-x86_64")
    assert len(compatibility_problems(manifest_for(H100), other)) == 2
    with pytest.raises(EngineError) as e:
        trt_env.ensure_compatible(manifest_for(H100), other)
    assert "lru-deploy build /x/export/default" in e.value.hint
    assert "Tesla T4" in e.value.render() and "8.6.1.6" in e.value.render()


def test_version_compatibility_needs_tensorrt_86():
    old = RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "8.5.3.1", "linux-x86_64")
    problems = compatibility_problems(manifest_for(old, vc=True), H100)
    assert len(problems) == 1 and "starts at 8.6" in problems[0]


# ---------------------------------------------------------------- profiles, ranges, names

def test_profiles_follow_the_contract(lru):
    cfg = lru.small_config(pooling="mean")
    p = engines.profile_shapes(cfg, (1, 2, 8), (1, 64, 512))
    assert p["prefill"]["input_ids"] == {"min": [1, 1], "opt": [2, 64], "max": [8, 512]}
    assert p["prefill"]["state"]["max"] == [8, cfg.n_layers, 2, cfg.d_hidden]
    assert p["step"]["input_ids"] == {"min": [1], "opt": [2], "max": [8]}  # batch range only
    assert set(p["step"]) == {"input_ids", "state", "pool_sum", "pool_count"}
    q = engines.profile_shapes(lru.small_config(d_input=3), (1, 1, 4), (1, 8, 16))
    assert q["prefill"]["inputs"]["max"] == [4, 16, 3] and q["step"]["inputs"]["min"] == [1, 3]


def test_profile_problems_name_the_axis_and_range(lru):
    p = engines.profile_shapes(lru.small_config(), (1, 1, 4), (1, 8, 16))["prefill"]
    assert trt_env.profile_problems("prefill", p, {"input_ids": (4, 16), "state": (4, 2, 2, 5)}) == []
    probs = trt_env.profile_problems("prefill", p, {"input_ids": (5, 17), "state": (5, 2, 2, 5), "bogus": (1,)})
    assert "input_ids: batch is 5, the prefill engine's profile allows 1..4" in probs
    assert "input_ids: seq is 17, the prefill engine's profile allows 1..16" in probs
    assert "state: batch is 5, the prefill engine's profile allows 1..4" in probs
    assert "bogus: the prefill engine has no input of that name" in probs
    assert len(probs) == 4


@pytest.mark.parametrize("text, want", [("1:4:8", (1, 4, 8)), ("3", (3, 3, 3)), ("1:1:1", (1, 1, 1))])
def test_parse_range(text, want):
    assert cli_build.parse_range(text, "batch") == want


@pytest.mark.parametrize("text", ["0:1:2", "4:2:8", "1:2", "a:b:c", ""])
def test_parse_range_refuses(text):
    with pytest.raises(InputError, match="MIN:OPT:MAX"):
        cli_build.parse_range(text, "batch")


def test_gpu_slug():
    assert engines.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert engines.gpu_slug("Tesla T4") == "tesla-t4"
    assert engines.gpu_slug("NVIDIA GeForce RTX 4090") == "geforce-rtx-4090"


def test_trtexec_commands_carry_every_setting(lru):
    prof = engines.profile_shapes(lru.small_config(), (1, 1, 8), (1, 64, 256))
    cmds = engines.trtexec_commands({"prefill": "e/fp32/prefill.onnx", "step": "e/fp32/step.onnx"},
                                    {"prefill": "out dir/prefill.plan", "step": "out dir/step.plan"}, prof,
                                    tf32=False, opt_level=5, hardware_compat="same-cc", version_compatible=True,
                                    workspace_gib=2, timing_cache="tc.cache")
    c = cmds["prefill"]
    for flag in ("--onnx=e/fp32/prefill.onnx", "'--saveEngine=out dir/prefill.plan'", "--stronglyTyped",
                 "--minShapes=input_ids:1x1,state:1x2x2x5", "--optShapes=input_ids:1x64,state:1x2x2x5",
                 "--maxShapes=input_ids:8x256,state:8x2x2x5", "--noTF32", "--builderOptimizationLevel=5",
                 "--hardwareCompatibilityLevel=sameComputeCapability", "--versionCompatible",
                 "--memPoolSize=workspace:2048M", "--timingCacheFile=tc.cache"):
        assert flag in c.split(" ") or flag in c, flag
    s = engines.trtexec_commands({"prefill": "p", "step": "s"}, {"prefill": "a", "step": "b"}, prof, tf32=True)
    assert "--maxShapes=input_ids:8,state:8x2x2x5" in s["step"]
    assert "--noTF32" not in s["step"] and "--hardwareCompatibilityLevel" not in s["step"]


# ---------------------------------------------------------------- the build without TensorRT / GPU

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, lru):
    root = tmp_path_factory.mktemp("eng")
    model = save_model(lru.make_model(lru.small_config(), seed=3), root / "tiny")
    return export_model(model, root / "export" / "tiny", ExportOptions(precisions=("fp32",), chunk=4, max_seq=32,
                        validate=False, lint=False))


@pytest.mark.skipif(not trt_env.tensorrt_problem(), reason="TensorRT is installed here")
def test_build_without_tensorrt_fails_first_with_one_clear_error(export_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["build", str(export_dir)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot build or run TensorRT engines on this machine" in err
    assert "TensorRT is not installed" in err and "hint: install TensorRT from NVIDIA" in err
    assert "Traceback" not in err
    assert not (tmp_path / "engines").exists()


def test_preflight_lists_every_missing_piece(monkeypatch):
    monkeypatch.setattr(trt_env, "load_tensorrt", lambda: (None, "TensorRT is not installed"))
    monkeypatch.setattr(trt_env, "gpu_info", lambda device=0: (None, "no NVIDIA driver found"))
    with pytest.raises(EngineError) as e:
        trt_env.preflight()
    assert len(e.value.problems) == 2
    assert "no CUDA GPU: no NVIDIA driver found" in e.value.problems[1]


@pytest.fixture
def namespace_tensorrt(tmp_path, monkeypatch):
    """A `tensorrt` that imports but is not TensorRT: a folder of .pyi files, as tensorrt-stubs installs it."""
    site = tmp_path / "site"
    (site / "tensorrt").mkdir(parents=True)
    (site / "tensorrt" / "__init__.pyi").write_text("__version__: str = '10.13.0.35'\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    importlib.invalidate_caches()
    import tensorrt  # noqa: F401  (the premise: it imports, with no __version__)
    assert not hasattr(tensorrt, "__version__")
    yield site / "tensorrt"
    sys.modules.pop("tensorrt", None)  # monkeypatch restores only keys that existed


def test_a_namespace_tensorrt_is_not_tensorrt(namespace_tensorrt):
    trt, why = trt_env.load_tensorrt()
    assert trt is None
    assert f"the `tensorrt` importable from {namespace_tensorrt} is not TensorRT" in why
    assert "no __version__ or Builder" in why and "tensorrt-stubs" in why
    assert trt_env.tensorrt_problem() == why  # what the TensorRT tests skip with
    with pytest.raises(EngineError, match="cannot build or run TensorRT engines") as e:
        trt_env.import_tensorrt()
    assert e.value.problems == [why]


def test_build_and_check_with_a_namespace_tensorrt_exit_1_clearly(namespace_tensorrt, export_dir, tmp_path,
                                                                   capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["build", str(export_dir)]) == 1
    err = capsys.readouterr().err
    assert "cannot build or run TensorRT engines on this machine" in err and "is not TensorRT" in err
    assert "Traceback" not in err and not (tmp_path / "engines").exists()
    with monkeypatch.context() as mp:  # an engine folder to check (fake plans)
        mp.setattr(trt_env, "preflight", lambda device=0: H100)
        mp.setattr(engines, "_build_plan", lambda onnx, profile, label, **kw: b"plan")
        out, _ = engines.build_engines(export_dir, tmp_path / "e", engines.BuildOptions(batch=(1, 1, 2),
                                       seq=(1, 8, 16)))
    assert cli.main(["check", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not TensorRT" in err and "Traceback" not in err


class FakeCudart:
    """cuda-python's runtime where cudaGetDeviceCount fails as it does without a (new enough) driver."""

    def __init__(self, driver: int, runtime: int = 13000, err: int = 35):
        self.driver, self.runtime, self.err = driver, runtime, err

    def cudaGetDeviceCount(self):
        return self.err, 0

    def cudaDriverGetVersion(self):
        return 0, self.driver

    def cudaRuntimeGetVersion(self):
        return 0, self.runtime

    def cudaGetErrorString(self, err):
        return 0, b"CUDA driver version is insufficient for CUDA runtime version"


def test_no_driver_and_an_old_driver_are_told_apart(monkeypatch):
    # measured with cuda-python 12.9 and 13.4 on a machine without a driver: error 35 and driver version 0
    monkeypatch.setattr(trt_env, "import_cudart", lambda: FakeCudart(driver=0))
    gpu, why = trt_env.gpu_info()
    assert gpu is None and why == "no NVIDIA driver is installed (the CUDA driver library could not be found)"
    monkeypatch.setattr(trt_env, "import_cudart", lambda: FakeCudart(driver=12040, runtime=13000))
    gpu, why = trt_env.gpu_info()
    assert gpu is None and "the NVIDIA driver supports CUDA 12.4, older than the CUDA 13.0 runtime" in why
    assert "lru-deploy[trt-cu12]" in why


@pytest.fixture
def fake_build(monkeypatch):
    """build_engines with the machine check and the TensorRT call replaced; records each plan's settings."""
    calls = []

    def fake_plan(onnx_path, profile, label, **settings):
        calls.append((Path(onnx_path).name, profile, settings))
        return f"plan:{label}".encode()

    monkeypatch.setattr(trt_env, "preflight", lambda device=0: H100)
    monkeypatch.setattr(engines, "_build_plan", fake_plan)
    return calls


def test_build_writes_the_engine_folder_and_manifest(export_dir, tmp_path, fake_build, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, man = engines.build_engines(export_dir, options=engines.BuildOptions(precision="fp32", batch=(1, 2, 4),
                                     opt_level=2, hardware_compat="ampere+", version_compatible=True))
    m = man.to_dict()
    assert out == Path("engines/tiny/h100-80gb-hbm3-fp32")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "manifest.json", "prefill.plan", "step.plan"]
    disk = json.loads((out / "manifest.json").read_text())
    assert disk == json.loads(json.dumps(m))
    assert m["format"] == "lru-deploy-engines-v1" and m["precision"] == "fp32"
    assert m["seq"] == [1, 32, 32] and m["max_seq"] == 32  # default 1:512:16384 clipped to the export's 32
    assert m["profiles"]["prefill"]["input_ids"] == {"min": [1, 1], "opt": [2, 32], "max": [4, 32]}
    assert m["engines"]["step"]["sha256"] == file_sha256(out / "step.plan")
    assert (out / "prefill.plan").read_bytes() == b"plan:prefill"
    src = json.loads((export_dir / "manifest.json").read_text())
    assert m["config"] == src["config"] and m["contract"] == src["contract"]
    assert m["source"]["graphs"]["step"]["sha256"] == src["graphs"]["fp32"]["step"]["sha256"]
    assert m["gpu"] == {"name": H100.gpu_name, "compute_capability": "9.0"}
    assert m["tensorrt"]["version"] == H100.trt_version and m["tf32"] is False
    assert [c[0] for c in fake_build] == ["prefill.onnx", "step.onnx"]
    assert fake_build[0][2]["hardware_compat"] == "ampere+" and fake_build[0][2]["opt_level"] == 2
    assert "--hardwareCompatibilityLevel=ampere+" in m["trtexec"]["step"]
    assert manifest.EngineManifest.read(out).name == "tiny"
    # a rebuild replaces the earlier engine folder whole
    out2, _ = engines.build_engines(export_dir, out, engines.BuildOptions(batch=(1, 1, 2)))
    assert out2 == out and json.loads((out / "manifest.json").read_text())["batch"] == [1, 1, 2]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folders left


def test_build_refuses_bad_requests_before_building(export_dir, tmp_path, fake_build):
    with pytest.raises(InputError, match="exceeds the export's max_seq 32"):
        engines.build_engines(export_dir, tmp_path / "e1", engines.BuildOptions(seq=(1, 8, 64)))
    with pytest.raises(ManifestError, match="no fp16 graphs"):
        engines.build_engines(export_dir, tmp_path / "e2", engines.BuildOptions(precision="fp16"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        engines.build_engines(export_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert fake_build == [] and not (tmp_path / "e1").exists()


def test_a_failed_build_leaves_nothing(export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_env, "preflight", lambda device=0: H100)

    def boom(onnx_path, profile, label, **settings):
        if label == "step":
            raise EngineError("TensorRT could not build the step engine")
        return b"x"

    monkeypatch.setattr(engines, "_build_plan", boom)
    with pytest.raises(EngineError):
        engines.build_engines(export_dir, tmp_path / "eng" / "x")
    assert list((tmp_path / "eng").iterdir()) == []


def test_engine_manifest_checks(export_dir, tmp_path, fake_build):
    out, _ = engines.build_engines(export_dir, tmp_path / "e")
    (out / "step.plan").write_bytes(b"tampered")
    (out / "prefill.plan").unlink()
    with pytest.raises(ManifestError) as e:
        manifest.EngineManifest.read(out)
    text = e.value.render()
    assert "prefill: " in text and "is missing" in text
    assert "step: " in text and "does not match the sha256" in text
    assert f"lru-deploy build {Path(export_dir).resolve()}" in e.value.hint
    m = json.loads((out / "manifest.json").read_text())
    m["format"] = "something-else"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="format is 'something-else'"):
        manifest.EngineManifest.read(out, verify=False)


def test_cli_build_prints_trtexec_equivalents(export_dir, tmp_path, fake_build, capsys):
    rc = cli.main(["build", str(export_dir), "--out", str(tmp_path / "e"), "--batch", "1:2:4", "--seq", "1:8:16",
                   "--tf32", "--timing-cache", str(tmp_path / "tc")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("trtexec --onnx=") == 2 and "--maxShapes=input_ids:4x16" in out and "--noTF32" not in out
    assert fake_build[0][2]["tf32"] is True and fake_build[0][2]["timing_cache"] == str(tmp_path / "tc")


def test_build_plan_hands_every_setting_to_polygraphy(monkeypatch, tmp_path):
    """The thin TensorRT layer with a stand-in `tensorrt` module and the final Polygraphy call captured."""
    import polygraphy.backend.trt as ptrt
    levels = SimpleNamespace(AMPERE_PLUS="AMP", SAME_COMPUTE_CAPABILITY="SCC")
    fake_trt = SimpleNamespace(__version__="10.9.0.34", Builder=object,
                               MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), HardwareCompatibilityLevel=levels)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    seen = {}

    class EngineBytes:
        def __init__(self, network, config=None, save_timing_cache=None):
            seen.update(network=network, config=config, save=save_timing_cache)

        def __call__(self):
            return b"PLAN"

    monkeypatch.setattr(ptrt, "EngineBytesFromNetwork", EngineBytes)
    prof = {"input_ids": {"min": [1, 1], "opt": [2, 8], "max": [4, 64]}, "state": {"min": [1, 2], "opt": [2, 2],
                                                                                 "max": [4, 2]}}
    plan = engines._build_plan(tmp_path / "prefill.onnx", prof, "prefill", tf32=False, opt_level=4,
                               hardware_compat="same-cc", version_compatible=True, workspace_gib=1.5,
                               timing_cache=str(tmp_path / "tc"))
    assert plan == b"PLAN"
    net, cfg = seen["network"], seen["config"]
    assert net.path == str(tmp_path / "prefill.onnx") and net.strongly_typed is True
    assert cfg.tf32 is False and cfg.fp16 is False and cfg.bf16 is False  # precision lives in the ONNX
    assert cfg.builder_optimization_level == 4 and cfg.hardware_compatibility_level == "SCC"
    assert cfg.version_compatible is True and cfg.memory_pool_limits == {"WORKSPACE": int(1.5 * 2 ** 30)}
    assert cfg.timing_cache_path == seen["save"] == str(tmp_path / "tc")
    (p,) = cfg.profiles
    assert (list(p["input_ids"].min), list(p["input_ids"].opt), list(p["input_ids"].max)) == ([1, 1], [2, 8], [4, 64])
    del fake_trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY  # an older TensorRT
    with pytest.raises(EngineError, match="has no hardware compatibility level same-cc"):
        engines._build_plan(tmp_path / "p.onnx", prof, "prefill", tf32=False, opt_level=None,
                            hardware_compat="same-cc", version_compatible=False, workspace_gib=None, timing_cache=None)


@pytest.mark.trt
def test_build_real_engines(export_dir, tmp_path):
    if trt_env.tensorrt_problem():
        pytest.skip(trt_env.tensorrt_problem())
    gpu, why = trt_env.gpu_info()
    if gpu is None:
        pytest.skip(f"no CUDA GPU: {why}")
    out, m = engines.build_engines(export_dir, tmp_path / "e", engines.BuildOptions(batch=(1, 1, 2),
                                   seq=(1, 8, 32)))
    assert trt_env.compatibility_problems(m, trt_env.preflight()) == []
    assert (out / "prefill.plan").stat().st_size > 0


# ---------------------------------------------------------------- C++: configure without TensorRT

@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_without_tensorrt_and_parses_a_manifest(export_dir, tmp_path, fake_build):
    build = tmp_path / "build"
    res = subprocess.run(["cmake", "-S", str(REPO / "cpp"), "-B", str(build)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout + res.stderr
    if trt_env.tensorrt_problem():
        assert "TensorRT not found" in text
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    res = subprocess.run(["cmake", "--build", str(build), "--target", "manifest_check"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out, m = engines.build_engines(export_dir, tmp_path / "e", engines.BuildOptions(batch=(1, 2, 4),
                                   seq=(1, 8, 16)))
    res = subprocess.run([str(build / "manifest_check"), str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    got = dict(line.split("=", 1) for line in res.stdout.strip().splitlines())
    cfg = m.config
    assert got["inputs.prefill"] == "input_ids,state" and got["outputs.step"] == "outputs,state_out"
    assert got["state_shape"] == f"{cfg['n_layers']}x2x{cfg['d_hidden']}"
    assert got["vocab_size"] == str(cfg["vocab_size"]) and got["d_output"] == str(cfg["d_output"])
    assert got["prefill_path"] == "prefill.plan" and got["max_seq"] == "16" and got["max_batch"] == "4"
    assert got["gpu"] == H100.gpu_name and got["compute_capability"] == "9.0"
    assert got["tensorrt"] == H100.trt_version and got["hardware_compat"] == "none"
    assert got["compat_same"] == "ok"
    assert "GPU model that built it" in got["compat_t4"]
    assert got["profile_ok"] == "ok" and "batch is 5" in got["profile_bad"]
