"""The C++ helper without TensorRT: the compatibility rules (cpp/tests/compat_test.cpp) on a manifest that
Python wrote, CMake finding a pip-installed TensorRT, and syntax checks of engine.hpp against the CUDA headers
and, where TensorRT_INCLUDE names TensorRT's headers, against those:

    TensorRT_INCLUDE=/path/to/TensorRT/include .venv/bin/python -m pytest tests/test_cpp.py -k syntax
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lru_deploy import engines, trt_env
from lru_deploy.checkpoints import save_model
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.trt_env import RuntimeInfo

REPO = Path(__file__).resolve().parents[1]
CXX = shutil.which("c++") or shutil.which("g++")
WARN = ["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler")
# Python's trt.__version__ has four parts; the C++ side formats getInferLibVersion() with three
BUILT = RuntimeInfo("NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35", trt_env.current_platform())


def run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    return res.returncode, res.stdout + res.stderr


def cuda_include() -> Path | None:
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if shutil.which("nvcc"):
        cands.append(str(Path(os.path.realpath(shutil.which("nvcc"))).parents[1]))
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime_api.h").is_file():
            return Path(c) / "include"
    return None


@pytest.fixture(scope="module")
def vc_engine_dir(tmp_path_factory, lru):
    """A version-compatible engine folder (fake plans) whose manifest holds TensorRT 10.13.0.35."""
    root = tmp_path_factory.mktemp("cpp")
    model = save_model(lru.make_model(lru.small_config(), seed=3), root / "tiny")
    export = export_model(model, root / "export", ExportOptions(precisions=("fp32",), chunk=4, max_seq=32,
                          validate=False, lint=False))
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(trt_env, "preflight", lambda device=0: BUILT)
        mp.setattr(engines, "_build_plan", lambda onnx, profile, label, **kw: b"plan")
        out, _ = engines.build_engines(export, root / "eng", engines.BuildOptions(batch=(1, 1, 2), seq=(1, 8, 16),
                                       version_compatible=True))
    finally:
        mp.undo()
    return out


@needs_cxx
def test_cpp_compatibility_rules(vc_engine_dir, tmp_path):
    """Failed before: the C++ side compared [10, 13, 0] with [10, 13, 0, 35] and refused every
    version-compatible engine on the release that built it; it also had no cross-major or platform rule."""
    exe = tmp_path / "compat_test"
    rc, out = run([CXX, *WARN, "-I", REPO / "cpp" / "include", REPO / "cpp" / "tests" / "compat_test.cpp", "-o", exe])
    assert rc == 0, out
    rc, out = run([exe, vc_engine_dir])
    assert rc == 0, out
    assert "manifest 10.13.0.35 on running 10.13.0: ok" in out and "all passed" in out


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_finds_a_pip_installed_tensorrt(tmp_path):
    """The tensorrt_libs wheel ships libnvinfer.so.10 and no unversioned libnvinfer.so (and no headers).
    Failed before: find_library(nvinfer) found nothing there."""
    site = tmp_path / "site"
    (site / "tensorrt_libs").mkdir(parents=True)
    (site / "tensorrt_libs" / "__init__.py").write_text("")
    lib = site / "tensorrt_libs" / "libnvinfer.so.10"
    lib.write_bytes(b"")  # configure only looks the file up
    headers = tmp_path / "trt_include"
    headers.mkdir()
    (headers / "NvInferRuntime.h").write_text("#pragma once\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TensorRT_ROOT", None), env.pop("TENSORRT_ROOT", None)
    rc, out = run(["cmake", "-S", REPO / "cpp", "-B", tmp_path / "build", f"-DPython3_EXECUTABLE={sys.executable}",
                   f"-DTensorRT_INCLUDE={headers}"], env=env)
    assert rc == 0, out
    assert f"TensorRT wheel libraries (tensorrt_libs of {sys.executable}): {site / 'tensorrt_libs'}" in out
    if cuda_include() is not None and "CUDA found" in out:
        assert f"TensorRT found: {lib} (headers {headers})" in out, out


@needs_cxx
def test_cpp_syntax_against_the_cuda_and_tensorrt_headers():
    """engine.hpp (through the example) compiles with no warning of its own; TensorRT's and CUDA's headers are
    system headers here, their own warnings are theirs."""
    cuda = cuda_include()
    if cuda is None:
        pytest.skip("no CUDA headers (cuda_runtime_api.h) found: set CUDA_HOME")
    trt = os.environ.get("TensorRT_INCLUDE")
    if not trt or not (Path(trt) / "NvInferRuntime.h").is_file():
        pytest.skip("TensorRT's headers are not installed here: set TensorRT_INCLUDE to the folder holding "
                    "NvInferRuntime.h (see this module's docstring)")
    src = REPO / "cpp" / "examples" / "generate.cpp"
    inc = ["-I", REPO / "cpp" / "include", "-isystem", trt, "-isystem", cuda]
    rc, out = run([CXX, *WARN, "-fsyntax-only", *inc, src])
    assert rc == 0, out
    if shutil.which("nvcc"):
        rc, out = run(["nvcc", "-std=c++17", *inc, "-x", "c++", "-Xcompiler", "-fsyntax-only,-Wall,-Wextra,-Werror",
                       "-c", src, "-o", os.devnull])
        assert rc == 0, out


@needs_cxx
def test_manifest_header_compiles_alone_without_warnings(tmp_path):
    rc, out = run([CXX, *WARN, "-fsyntax-only", "-I", REPO / "cpp" / "include", REPO / "cpp" / "tests" /
                   "manifest_check.cpp"])
    assert rc == 0, out
