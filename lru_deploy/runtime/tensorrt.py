"""Session backends beside the reference: ONNX Runtime on an export folder, TensorRT on an engine folder.

Both implement `Session._run(graph, feeds)`; prefill, step, generate and long-prompt splitting come from
`lru_deploy.runtime.Session`. Open them through `runtime.open_session(target)`.

TensorRT keeps the state on the GPU: every call reads the state from one of two ping-pong buffers and writes
the other, and returns it as `DeviceTensor`s that the next call takes without a host round trip (only the
logits come back per token). Shapes are checked against the engine's optimization profile before enqueue; the
engine folder's manifest is checked against the running GPU and TensorRT before anything is loaded; the step
is captured in a CUDA graph where the engine allows capture: one graph per ping-pong direction, each from an
execution context of its own that stays bound to that direction's buffers.

The TensorRT- and CUDA-touching code is the thin classes at the end (`_CudaTrt`, `_TrtEngine`, `_TrtContext`);
the session logic talks to them through a handful of methods, so tests drive it with fakes. tensorrt and
cuda-python are imported lazily inside them (tensorrt through `trt_env.import_tensorrt`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .. import contract, trt_env
from ..manifest import EngineManifest
from ..errors import EngineError, InputError
from .base import Session, State

log = logging.getLogger(__name__)


CPU_PREFILL_SPLIT = 4096


class DeviceTensor:
    """A state tensor left in a TensorrtSession's GPU buffer between calls.

    Feed it back to the same session (no copy); `np.asarray(t)` copies it to the host. Each call writes the
    other of two ping-pong buffers, so only the latest state of a session is valid: an older one raises when
    used. Copy a state with `np.array(t)` before the next call to keep it.
    """

    def __init__(self, owner: "TensorrtSession", slot: int, name: str, shape: tuple, dtype, generation: int):
        self.owner, self.slot, self.name = owner, slot, name
        self.shape, self.dtype, self.generation = tuple(shape), np.dtype(dtype), generation

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __array__(self, dtype=None, copy=None):
        a = self.owner._download(self)
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"DeviceTensor({self.name}, shape={list(self.shape)}, {self.dtype}, slot {self.slot})"


class TensorrtSession(Session):
    """The prefill and step engines of an engine folder, with the state kept on the GPU between calls."""

    backend = "tensorrt"

    def __init__(self, engine_dir, device: int = 0, cuda_graphs: bool = True, verify: bool = True, *,
                 runtime=None):
        folder = Path(engine_dir)
        m = EngineManifest.read(folder, verify=verify)
        cfg = m.cfg
        super().__init__(cfg, m.spec("prefill"), m.spec("step"))
        self.manifest, self.folder = m, folder
        self._rt = runtime if runtime is not None else _CudaTrt(device)
        self._bufs: dict = {}  # key -> (device pointer, bytes)
        self._graphs: dict = {}  # input slot -> (CUDA graph, addresses it was captured with)
        self._contexts: dict = {}  # (graph, input slot) -> execution context; see _context
        self._graph_batch: Optional[int] = None
        self._live: Optional[tuple[int, int]] = None  # (slot holding the latest state, its generation)
        self._gen = 0
        try:
            trt_env.ensure_compatible(m, self._rt.info, f"engine folder {folder}")
            host_code = bool(m.version_compatible)
            self._engines = {g: self._rt.load(m.engine_path(g).read_bytes(), host_code)
                             for g in contract.GRAPHS}
            problems = []
            for g, eng in self._engines.items():
                problems += contract.io_problems(g, self._spec(g), eng.io())
            if problems:
                raise EngineError(f"the engines in {folder} do not follow the I/O contract of their manifest:",
                                  "build them again from a current export", problems)
            self._profiles = {g: {t.name: self._engines[g].profile(t.name) for t in self._spec(g).inputs}
                              for g in contract.GRAPHS}
            # The state buffers serve both graphs, so both must take the same batches (lru-deploy build gives
            # them one --batch range); each call is still checked against its own graph's profile.
            batches = {g: self._batch_range(g) for g in contract.GRAPHS}
            if batches["prefill"] != batches["step"]:
                raise EngineError(f"the engines in {folder} take different batch sizes: prefill "
                                  f"{batches['prefill'][0]}..{batches['prefill'][1]}, step "
                                  f"{batches['step'][0]}..{batches['step'][1]}; the state passes between them",
                                  "build both from one range: lru-deploy build EXPORT_DIR --batch MIN:OPT:MAX")
            for g in contract.GRAPHS:  # one context per graph; the step gets a second, see _context
                self._contexts[(g, 0)] = self._engines[g].new_context()
            self._contexts[("step", 1)] = self._engines["step"].new_context()
        except BaseException:
            self._contexts.clear()
            self._engines = {}
            self._rt.close()
            raise
        x = contract.input_name(cfg)
        self.max_seq = int(self._profiles["prefill"][x]["max"][1])
        self.max_batch = batches["step"][1]
        self.cuda_graphs = cuda_graphs

    def _batch_range(self, graph: str) -> tuple[int, int]:
        """The batch sizes every input of a graph's profile admits (axis 0 of each)."""
        prof = self._profiles[graph].values()
        return max(int(p["min"][0]) for p in prof), min(int(p["max"][0]) for p in prof)

    def _context(self, graph: str, in_slot: int):
        """The execution context that runs `graph` reading the state from `in_slot`.

        The step has one context per ping-pong direction, so that each context is only ever bound to one set of
        addresses (state from slot s, into slot 1 - s) and the CUDA graph captured from it stays valid; a
        context's addresses change only when the batch does, and then its graph is captured again."""
        return self._contexts[(graph, in_slot if graph == "step" else 0)]

    def _spec(self, graph: str) -> contract.GraphSpec:
        return self.prefill_spec if graph == "prefill" else self.step_spec

    # --- state handling: device tensors pass through validation without a copy
    def _feeds(self, spec, inputs, state: Optional[State]) -> dict:
        dev = {k: v for k, v in (state or {}).items() if isinstance(v, DeviceTensor)}
        if not dev:
            return super()._feeds(spec, inputs, state)
        for v in dev.values():
            self._check_live(v)
        stand_in = {k: np.broadcast_to(np.zeros((), v.dtype), v.shape) for k, v in dev.items()}
        feeds = super()._feeds(spec, inputs, {**state, **stand_in})
        feeds.update(dev)
        return feeds

    def _check_live(self, t: DeviceTensor) -> None:
        if t.owner is not self:
            raise InputError(f"state {t.name} lives on another TensorRT session's GPU buffers",
                             "pass np.asarray(value) for each state entry to move it between sessions")
        if self._live is None or t.generation != self._live[1]:
            raise InputError(f"state {t.name} was overwritten: a later prefill or step of this session reused "
                             f"its GPU buffer", "feed the latest state, or keep a copy with np.array(value) "
                                                "before the next call")

    def _download(self, t: DeviceTensor) -> np.ndarray:
        self._check_live(t)
        a = np.empty(t.shape, t.dtype)
        self._rt.d2h(a, self._slot(t.slot, t.name))
        self._rt.sync()
        return a

    # --- buffers
    def _buffer(self, key, nbytes: int) -> int:
        ptr, size = self._bufs.get(key, (None, 0))
        if ptr is None or size < nbytes:
            if ptr is not None:
                self._rt.free(ptr)
            ptr = self._rt.malloc(max(nbytes, 256))
            self._bufs[key] = (ptr, nbytes)
        return ptr

    def _row_bytes(self, t: contract.TensorSpec, seq: int = 1) -> int:
        """Bytes per batch row of a tensor (seq positions for a prefill input or output)."""
        dims = [seq if d == "seq" else d for d in t.shape[1:]]
        return int(np.prod(dims, dtype=np.int64)) * np.dtype(t.dtype).itemsize

    def _slot(self, slot: int, name: str) -> int:
        t = next(t for t in self.step_spec.inputs if t.name == name)
        return self._buffer(("slot", slot, name), self.max_batch * self._row_bytes(t))

    # --- one call
    def _run(self, graph: str, feeds: dict) -> dict:
        spec = self._spec(graph)
        xname = contract.input_name(self.cfg)
        x = np.ascontiguousarray(feeds[xname])
        batch = x.shape[0]
        seq = x.shape[1] if graph == "prefill" else 1
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        problems = trt_env.profile_problems(graph, self._profiles[graph], shapes)
        if problems:
            m = self.manifest
            raise InputError(f"shapes outside the {graph} engine's optimization profile:",
                             f"the engines in {self.folder} were built with --batch {':'.join(map(str, m.batch))}"
                             f" --seq {':'.join(map(str, m.seq))}; send smaller batches or rebuild with a wider "
                             f"range (lru-deploy build ... --batch 1:1:{max(batch, m.batch[2])})", problems)
        dev = [v for v in feeds.values() if isinstance(v, DeviceTensor)]
        for v in dev:
            self._check_live(v)
        in_slot = self._live[0] if self._live is not None else 0
        out_slot = 1 - in_slot
        rows = batch if graph == "prefill" else self.max_batch  # step buffers never move: CUDA graphs stay valid
        addrs = {xname: self._buffer((graph, xname), rows * self._row_bytes(spec.inputs[0], seq))}
        copies = [(addrs[xname], x)]
        for t in spec.inputs[1:]:
            addrs[t.name] = self._slot(in_slot, t.name)
            if not isinstance(feeds[t.name], DeviceTensor):
                copies.append((addrs[t.name], np.ascontiguousarray(feeds[t.name], dtype=np.float32)))
        out_shapes = {}
        for t in spec.outputs:
            out_shapes[t.name] = tuple({"batch": batch, "seq": seq}.get(d, d) for d in t.shape)
            if t.name == "outputs":
                addrs[t.name] = self._buffer((graph, "outputs"), rows * self._row_bytes(t, seq))
            else:
                addrs[t.name] = self._slot(out_slot, t.name[:-len("_out")])
        for ptr, a in copies:
            self._rt.h2d(ptr, a)
        self._execute(graph, shapes, addrs, batch, in_slot)
        out = np.empty(out_shapes["outputs"], np.float32)
        self._rt.d2h(out, addrs["outputs"])
        self._rt.sync()
        self._gen += 1
        self._live = (out_slot, self._gen)
        res = {"outputs": out}
        for t in spec.outputs[1:]:
            res[t.name] = DeviceTensor(self, out_slot, t.name[:-len("_out")], out_shapes[t.name], np.float32,
                                       self._gen)
        return res

    def _execute(self, graph: str, shapes: dict, addrs: dict, batch: int, in_slot: int) -> None:
        ctx = self._context(graph, in_slot)
        use_graph = graph == "step" and self.cuda_graphs
        if use_graph:
            if self._graph_batch != batch:  # a graph holds the shapes it was captured with: start over
                self._drop_graphs()
                self._graph_batch = batch
            cached = self._graphs.get(in_slot)
            if cached is not None and cached[1] == addrs:  # ctx is still bound to exactly these addresses
                self._rt.launch(cached[0])
                return
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise EngineError(f"TensorRT refused shape {list(shape)} for {name} of the {graph} engine")
        for name, ptr in addrs.items():
            if not ctx.set_address(name, ptr):
                raise EngineError(f"TensorRT refused the buffer of {name} of the {graph} engine")
        if not ctx.enqueue():
            raise EngineError(f"TensorRT failed to run the {graph} engine", "rerun with -v for TensorRT's log")
        if use_graph:
            self._capture(ctx, in_slot, addrs)

    def _capture(self, ctx, in_slot: int, addrs: dict) -> None:
        """Capture the step of one direction in a CUDA graph, as trtexec does: after one plain enqueue with the
        current shapes and addresses (done by the caller) has finished, so the capture starts on an idle stream."""
        self._rt.sync()
        self._rt.begin_capture()
        ok = ctx.enqueue()
        captured = self._rt.end_capture()
        if ok and captured is not None:
            old = self._graphs.pop(in_slot, None)
            if old is not None:
                self._rt.destroy_graph(old[0])
            self._graphs[in_slot] = (captured, dict(addrs))
        else:
            if captured is not None:
                self._rt.destroy_graph(captured)
            self.cuda_graphs = False
            log.info("the step engine cannot be captured in a CUDA graph; stepping with plain enqueues")

    def _drop_graphs(self) -> None:
        for g, _ in self._graphs.values():
            self._rt.destroy_graph(g)
        self._graphs.clear()

    def close(self) -> None:
        """Free the GPU buffers, CUDA graphs and engines. States of this session become unreadable."""
        if self._rt is None:
            return
        self._drop_graphs()
        for ptr, _ in self._bufs.values():
            self._rt.free(ptr)
        self._bufs.clear()
        self._live = None
        self._contexts.clear()
        self._engines = {}
        self._rt.close()
        self._rt = None

    def __enter__(self) -> "TensorrtSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the thin layer over CUDA and TensorRT

def _cudart():
    cudart = trt_env.import_cudart()
    if cudart is None:
        raise EngineError("cuda-python is not installed; the TensorRT backend needs it for GPU buffers and streams",
                          "pip install 'lru-deploy[trt-cu12]' (or [trt-cu13] with a driver for CUDA 13)")
    return cudart


class _CudaTrt:
    """One CUDA device and stream, device memory, CUDA graphs, and the TensorRT runtime that loads engines."""

    def __init__(self, device: int = 0):
        self.info = trt_env.preflight(device)
        self.cudart = _cudart()
        trt = trt_env.import_tensorrt()
        self._trt = trt
        self._pending: list = []  # host arrays that must live until the next sync
        self._ptrs: set[int] = set()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._call(self.cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._call(self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                                 "cudaStreamCreateWithFlags")  # the last step that can fail: nothing leaks

    def _call(self, res, what: str):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise EngineError(f"CUDA error in {what}: {trt_env.cuda_failure(self.cudart, err)}",
                              "check the GPU with nvidia-smi")
        return rest[0] if len(rest) == 1 else None

    def load(self, plan: bytes, host_code_allowed: bool) -> "_TrtEngine":
        if host_code_allowed:  # version-compatible plans carry a lean runtime; they come from our own build
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError("TensorRT could not deserialize an engine of this folder",
                              "rebuild the engines on this machine with this TensorRT")
        return _TrtEngine(self._trt, engine, int(self.stream))

    def malloc(self, nbytes: int) -> int:
        ptr = int(self._call(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))  # 256-byte aligned, as TensorRT needs
        self._ptrs.add(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        self._ptrs.discard(ptr)
        self._call(self.cudart.cudaFree(ptr), "cudaFree")

    def h2d(self, ptr: int, a: np.ndarray) -> None:
        self._pending.append(a)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def d2h(self, a: np.ndarray, ptr: int) -> None:
        self._pending.append(a)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.cudart.cudaMemcpyAsync(a.ctypes.data, ptr, a.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def sync(self) -> None:
        self._call(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self._pending.clear()

    def begin_capture(self) -> None:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call(self.cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")

    def end_capture(self):
        """The instantiated graph, or None where capture failed (the error is cleared)."""
        err, graph = self.cudart.cudaStreamEndCapture(self.stream)
        if int(err) != 0 or graph is None or not int(graph):
            self.cudart.cudaGetLastError()
            return None
        err, exe = self.cudart.cudaGraphInstantiate(graph, 0)
        self.cudart.cudaGraphDestroy(graph)
        if int(err) != 0:
            self.cudart.cudaGetLastError()
            return None
        return exe

    def launch(self, exe) -> None:
        self._call(self.cudart.cudaGraphLaunch(exe, self.stream), "cudaGraphLaunch")

    def destroy_graph(self, exe) -> None:
        self.cudart.cudaGraphExecDestroy(exe)

    def close(self) -> None:
        self.sync()
        for ptr in list(self._ptrs):
            self.free(ptr)
        self.cudart.cudaStreamDestroy(self.stream)


class _TrtEngine:
    """One deserialized engine: its I/O and profile, and the execution contexts made from it."""

    def __init__(self, trt, engine, stream: int):
        self._trt, self.engine, self._stream = trt, engine, stream

    def new_context(self) -> "_TrtContext":
        """A new execution context (optimization profile 0). Contexts of one engine may share the profile as
        long as they do not run concurrently; ours all run in turn on one stream."""
        context = self.engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        return _TrtContext(context, self._stream)

    def io(self) -> dict:
        trt, e = self._trt, self.engine
        out = {}
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            mode = "input" if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            try:
                dtype = np.dtype(trt.nptype(e.get_tensor_dtype(name)))
            except TypeError:  # a type numpy lacks (bf16): surely not the contract's
                dtype = np.dtype("V2")
            out[name] = (mode, dtype)
        return out

    def profile(self, name: str) -> dict:
        lo, opt, hi = self.engine.get_tensor_profile_shape(name, 0)
        return {"min": list(lo), "opt": list(opt), "max": list(hi)}


class _TrtContext:
    """One execution context, enqueued on the owner's stream."""

    def __init__(self, context, stream: int):
        self.context, self._stream = context, stream

    def set_input_shape(self, name: str, shape) -> bool:
        return bool(self.context.set_input_shape(name, tuple(int(d) for d in shape)))

    def set_address(self, name: str, ptr: int) -> bool:
        return bool(self.context.set_tensor_address(name, int(ptr)))

    def enqueue(self) -> bool:
        return bool(self.context.execute_async_v3(self._stream))
