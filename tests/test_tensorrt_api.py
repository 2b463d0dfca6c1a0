"""Every TensorRT name the code uses exists in TensorRT's Python API, read from the tensorrt-stubs package.

TensorRT cannot be installed here, so this is the guard against an API that does not exist (`execute_async_v2`,
`get_binding_shape`, a misspelt enum member): the TensorRT-touching modules are parsed, every attribute taken
from the `tensorrt` module and every method called on an engine, an execution context or the runtime is looked
up in the stubs (TensorRT 10.13's API as .pyi files).

`make test` installs the stubs with --no-deps into .venv/tensorrt-stubs, a folder that is not on sys.path (the
package requires tensorrt itself, and its `tensorrt/` folder would otherwise import as an empty namespace
package). Elsewhere set LRU_TRT_STUBS to a folder holding tensorrt_bindings/tensorrt.pyi. The .pyi files have
no py.typed and a few syntax errors, so they are read as text.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

from lru_deploy import trt_env

REPO = Path(__file__).resolve().parents[1]
STUBS_VERSION = "10.13.0.35.1"  # the Makefile's TRT_STUBS_VERSION

# The objects the code holds and the stub class each is: (module, enclosing class, receiver as written).
RECEIVERS = {
    ("lru_deploy/runtime/tensorrt.py", "_TrtEngine", "self.engine"): "ICudaEngine",
    ("lru_deploy/runtime/tensorrt.py", "_TrtEngine", "e"): "ICudaEngine",
    ("lru_deploy/runtime/tensorrt.py", "_TrtContext", "self.context"): "IExecutionContext",
    ("lru_deploy/runtime/tensorrt.py", "_CudaTrt", "self._runtime"): "Runtime",
}
MODULE_ROOTS = ("trt", "self._trt")  # names the code binds the tensorrt module to
MODULES = ("lru_deploy/runtime/tensorrt.py", "lru_deploy/engines.py", "lru_deploy/trt_env.py")
# Uses the scan must find: if one disappears, the code changed shape and RECEIVERS needs a look.
MUST_FIND = {"IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address",
             "IExecutionContext.set_input_shape", "ICudaEngine.get_tensor_profile_shape",
             "ICudaEngine.create_execution_context", "Runtime.deserialize_cuda_engine",
             "Runtime.engine_host_code_allowed", "tensorrt.Logger.WARNING", "tensorrt.TensorIOMode.INPUT",
             "tensorrt.MemoryPoolType.WORKSPACE", "tensorrt.IProgressMonitor.phase_start"}


def stubs_dir() -> Path | None:
    for d in (os.environ.get("LRU_TRT_STUBS"), REPO / ".venv" / "tensorrt-stubs",
              Path(sys.prefix) / "tensorrt-stubs"):
        if d and (Path(d) / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return Path(d)
    return None


class StubAPI:
    """Classes of the .pyi text with their members and bases, and the module's top-level names."""

    def __init__(self, root: Path):
        self.members: dict[str, set[str]] = {}
        self.bases: dict[str, list[str]] = {}
        self.module: set[str] = set()
        stack: list[tuple[int, str]] = []  # (indent, qualified class name)
        for line in (root / "tensorrt_bindings" / "tensorrt.pyi").read_text().splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            while stack and indent <= stack[-1][0]:
                stack.pop()
            m = re.match(r"\s*class (\w+)(?:\((.*)\))?:", line)
            if m:
                name = f"{stack[-1][1]}.{m[1]}" if stack else m[1]
                if stack:
                    self.members[stack[-1][1]].add(m[1])
                else:
                    self.module.add(m[1])
                self.members.setdefault(name, set())
                self.bases[name] = [b.strip().split(".")[-1] for b in (m[2] or "").split(",") if b.strip()]
                stack.append((indent, name))
                continue
            m = re.match(r"\s*(?:def (\w+)|(\w+)\s*:)", line)
            if m and stack and indent > stack[-1][0]:
                # members sit one level inside their class; deeper lines are method bodies
                if indent == stack[-1][0] + 4:
                    self.members[stack[-1][1]].add(m[1] or m[2])
            elif m and not stack and indent == 0:
                self.module.add(m[1] or m[2])
        init = (root / "tensorrt" / "__init__.pyi").read_text()
        self.module |= set(re.findall(r"^from tensorrt_bindings(?:\.tensorrt)? import (\w+)", init, re.M))
        self.module |= set(re.findall(r"^(\w+)\s*[:=]", init, re.M))

    def has(self, cls: str, name: str) -> bool:
        if name in self.members.get(cls, ()):
            return True
        return any(self.has(b, name) for b in self.bases.get(cls, ()) if b in self.members)

    def resolve(self, chain: list[str]) -> str | None:
        """None where tensorrt.<chain> exists, else the first part that does not."""
        if chain[0] not in self.module:
            return chain[0]
        cls = chain[0]
        for part in chain[1:]:
            if not self.has(cls, part):
                return part
            nested = f"{cls}.{part}"
            if nested not in self.members:
                return None  # a method, property or enum value: nothing below it to check
            cls = nested
        return None


def _text(node) -> str:
    return ast.unparse(node)


def tensorrt_uses(path: str, source: str | None = None) -> list[tuple[str, list[str], int]]:
    """(stub class or 'tensorrt', attribute chain, line) for each TensorRT name used in one module."""
    tree = ast.parse(source if source is not None else (REPO / path).read_text())
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    uses = []

    def visit(node, cls: str):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:  # a subclass of a TensorRT interface overrides its methods
                chain = _text(base).split(".")
                if len(chain) == 2 and chain[0] in MODULE_ROOTS:
                    uses.extend(("tensorrt", [chain[1], item.name], item.lineno) for item in node.body
                                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"))
            cls = node.name
        elif isinstance(node, ast.Attribute) and id(node) not in inner:  # the whole chain a.b.c, once
            parts, base = [], node
            while isinstance(base, ast.Attribute):
                parts.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                parts.insert(0, base.id)
                for k in range(len(parts) - 1, 0, -1):  # the longest receiver the chain starts with
                    root = ".".join(parts[:k])
                    if root in MODULE_ROOTS:
                        uses.append(("tensorrt", parts[k:], node.lineno))
                        break
                    stub = RECEIVERS.get((path, cls, root))
                    if stub:
                        uses.append((stub, parts[k:k + 1], node.lineno))
                        break
        for child in ast.iter_child_nodes(node):
            visit(child, cls)

    visit(tree, "")
    return uses


def problems(api: StubAPI, path: str, source: str | None = None) -> tuple[list[str], set[str]]:
    found, missing = set(), []
    for owner, chain, line in tensorrt_uses(path, source):
        name = ".".join([owner] + chain)
        found.add(name)
        bad = api.resolve(chain) if owner == "tensorrt" else (None if api.has(owner, chain[0]) else chain[0])
        if bad:
            missing.append(f"{path}:{line}: {name} ({bad!r} is not in TensorRT's Python API)")
    return missing, found


@pytest.fixture(scope="module")
def api() -> StubAPI:
    root = stubs_dir()
    if root is None:
        pytest.skip(f"tensorrt-stubs not found (make test installs them: .venv/bin/pip install --no-deps --target "
                    f".venv/tensorrt-stubs tensorrt-stubs=={STUBS_VERSION}; or set LRU_TRT_STUBS)")
    return StubAPI(root)


def test_the_stubs_read_as_the_api(api):
    assert api.has("IExecutionContext", "execute_async_v3") and not api.has("IExecutionContext", "execute_async_v2")
    assert api.has("Logger", "WARNING") and api.has("Logger", "log")  # ILogger's, inherited
    assert api.resolve(["HardwareCompatibilityLevel", "AMPERE_PLUS"]) is None
    assert api.resolve(["ICudaEngine", "get_binding_shape"]) == "get_binding_shape"
    assert {"__version__", "Builder", "nptype"} <= api.module


def test_every_tensorrt_name_the_code_uses_exists(api):
    missing, found = [], set()
    for path in MODULES:
        m, f = problems(api, path)
        missing += m
        found |= f
    assert missing == []
    assert MUST_FIND <= found, MUST_FIND - found
    # getattr(trt.HardwareCompatibilityLevel, ...) in the build takes its member names from HW_COMPAT
    for member, _ in trt_env.HW_COMPAT.values():
        assert api.resolve(["HardwareCompatibilityLevel", member]) is None, member
    # the probe's idea of a real TensorRT matches the real API
    assert set(trt_env.REAL_TENSORRT_NAMES) <= api.module


def test_the_check_catches_removed_apis(api):
    snippet = ("class _TrtContext:\n    def enqueue(self):\n        return self.context.execute_async_v2(0)\n"
               "class _TrtEngine:\n    def shape(self):\n        return self.engine.get_binding_shape(0)\n"
               "def f(trt):\n    return trt.BuilderFlag.FP16, trt.BuilderFlag.NO_SUCH_FLAG\n")
    missing, _ = problems(api, "lru_deploy/runtime/tensorrt.py", snippet)
    assert len(missing) == 3, missing
    assert any("execute_async_v2" in m for m in missing) and any("get_binding_shape" in m for m in missing)
    assert any("NO_SUCH_FLAG" in m for m in missing)
