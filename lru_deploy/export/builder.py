"""A small ONNX graph builder: hierarchical names, typed constants, and the complex-multiply pattern.

Nodes and tensors are named by where they sit, like a path: inside `with g.scope("layers.2"), g.scope("lru")`
a MatMul is the node `/layers.2/lru/MatMul` and its output the tensor `/layers.2/lru/MatMul/output_0` (a second
MatMul in the same scope gets `MatMul_1`). An error from ONNX Runtime or TensorRT that names a node therefore
names the layer and the step it belongs to.

Every graph carries one reduced type (`rt`: float32, float16 or bfloat16): weights of matmuls are stored in it
(`W`), and activations cross between it and float32 through explicit Casts (`to_rt`, `to_f32`) that vanish in
fp32 graphs.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64
REDUCED = {"fp32": F32, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_NUMPY = {F32: np.float32, I64: np.int64, TensorProto.FLOAT16: np.float16}


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


class GraphBuilder:
    """Collects nodes and initializers; `precision` sets the reduced type `rt` of the graph's matmuls."""

    def __init__(self, name: str, precision: str = "fp32"):
        self.name = name
        self.rt = REDUCED[precision]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._scope: list[str] = []
        self._used: Counter = Counter()

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Name everything made inside after `name` (nested scopes join with '/')."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def path(self, leaf: str) -> str:
        """A graph-unique name for `leaf` in the current scope: /a/b/leaf, then /a/b/leaf_1, ..."""
        base = "/" + "/".join(self._scope + [leaf])
        k = self._used[base]
        self._used[base] += 1
        return base if k == 0 else f"{base}_{k}"

    def const(self, arr, dtype: int = F32, name: str = "Constant") -> str:
        """An initializer holding `arr` (any float array, often float64) rounded once to `dtype`."""
        tname = self.path(name)
        arr = np.asarray(arr)
        if dtype == TensorProto.BFLOAT16:
            t = helper.make_tensor(tname, dtype, arr.shape, bf16_bits(arr).tobytes(), raw=True)
        else:
            t = onnx.numpy_helper.from_array(arr.astype(_NUMPY[dtype]), tname)
        self.inits.append(t)
        return tname

    def i64(self, values, name: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), I64, name)

    def W(self, arr, name: str = "weight") -> str:
        """A matmul weight in the graph's reduced type."""
        return self.const(arr, self.rt, name)

    def to_rt(self, x: str) -> str:
        return x if self.rt == F32 else self.op("Cast", x, to=self.rt)

    def to_f32(self, x: str) -> str:
        return x if self.rt == F32 else self.op("Cast", x, to=F32)

    def op(self, op_type: str, *inputs: str, n_out: int = 1, out: Optional[str] = None, name: Optional[str] = None,
           **attrs):
        """Append one node; returns its output name (or names, for n_out > 1). `out` names a graph output."""
        node = self.path(name or op_type)
        outs = [out] if out else [f"{node}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(self, x_rt: str, W, b, name: str) -> str:
        """x @ W (+ b), W stored (in, out) in the reduced type: MatMul then Add, which ONNX Runtime and
        TensorRT fuse into one GEMM with a bias."""
        with self.scope(name):
            y = self.op("MatMul", x_rt, self.W(W))
            return self.op("Add", y, self.W(b, "bias")) if b is not None else y


def planes(lk: np.ndarray, plane_axis: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers (A, Bm) with A * z + Bm * swap(z) = lk * z, for z holding (re, im) planes on `plane_axis`.

    `lk` is complex; the planes are stacked on `plane_axis` and reshaped to `shape` (broadcastable to z).
    """
    A = np.stack([lk.real, lk.real], axis=plane_axis)
    Bm = np.stack([-lk.imag, lk.imag], axis=plane_axis)
    return A.reshape(shape), Bm.reshape(shape)


def swap_planes(g: GraphBuilder, z: str, plane_axis: int) -> str:
    """(re, im) -> (im, re) along `plane_axis`."""
    return g.op("Gather", z, g.i64([1, 0], "swap"), axis=plane_axis, name="Swap")


def complex_mul(g: GraphBuilder, z: str, A: np.ndarray, Bm: np.ndarray, plane_axis: int,
                swapped: Optional[str] = None) -> str:
    """lk * z on (re, im) planes, float32: z * A + swap(z) * Bm with (A, Bm) from `planes`.

    `swapped` reuses a swap of z already in the graph (the two-term step multiplies one z twice).
    """
    sw = swapped or swap_planes(g, z, plane_axis)
    return g.op("Add", g.op("Mul", z, g.const(A, name="re_mul")), g.op("Mul", sw, g.const(Bm, name="im_mul")))
