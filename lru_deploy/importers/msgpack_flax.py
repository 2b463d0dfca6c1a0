"""Read Flax msgpack checkpoints (`flax.serialization.to_bytes`) without JAX or Flax.

Flax's wire format (flax/serialization.py): a msgpack map of maps with string keys; array leaves are msgpack
extension objects:

    code 1  ndarray         payload: msgpack [shape (ints), dtype name (bytes, e.g. b"float32"), C-order bytes]
    code 2  native complex  payload: msgpack [real, imag]
    code 3  numpy scalar    payload: as code 1 with shape []

Arrays over 2**30 bytes are stored as maps {"__msgpack_chunked_array__": True, "shape": {"0": n, ...},
"chunks": {"0": flat array, ...}} and are put back together here. JAX's bfloat16 has no numpy dtype: it is
widened to float32, which is exact. Reading never executes anything from the file; an array that cannot be
decoded becomes an `Unreadable` leaf, so that the caller can report every bad array at once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import CheckpointError

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
_DTYPES = {"float16", "float32", "float64", "complex64", "complex128", "bool", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64"}
CHUNKED = "__msgpack_chunked_array__"
# Flax parameter trees nest a handful of levels ({"params": {"encoder": {"layers_0": {...}}}}: under 10 for
# minimal-LRU); a file nested far deeper is not a parameter tree, and reading it recursively would overflow.
MAX_DEPTH = 64


class Unreadable(NamedTuple):
    """An array leaf that could not be decoded, with the reason."""
    reason: str


def _decode_array(data: bytes):
    import msgpack

    try:
        shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
        shape = tuple(int(s) for s in shape)
        name = dtype_name.decode("ascii") if isinstance(dtype_name, bytes) else str(dtype_name)
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError, msgpack.UnpackException) as e:
        return Unreadable(f"malformed array record ({type(e).__name__})")
    if any(s < 0 for s in shape) or not isinstance(buf, bytes):
        return Unreadable(f"malformed array record (shape {shape})")
    count = int(np.prod(shape, dtype=np.int64))
    if name == "bfloat16":
        if len(buf) != 2 * count:
            return Unreadable(f"bfloat16 {shape}: {len(buf)} bytes, want {2 * count}")
        bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if name not in _DTYPES:
        return Unreadable(f"unsupported dtype {name!r}")
    dtype = np.dtype(name)
    if len(buf) != dtype.itemsize * count:
        return Unreadable(f"{name} {shape}: {len(buf)} bytes, want {dtype.itemsize * count}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def _ext_hook(code: int, data: bytes):
    import msgpack

    if code == EXT_NDARRAY:
        return _decode_array(data)
    if code == EXT_NPSCALAR:
        arr = _decode_array(data)
        return arr if isinstance(arr, Unreadable) else arr.reshape(())
    if code == EXT_COMPLEX:
        try:
            re, im = msgpack.unpackb(data)
            return complex(re, im)
        except (ValueError, TypeError, msgpack.UnpackException):
            return Unreadable("malformed complex scalar")
    return Unreadable(f"unknown msgpack extension type {code} (not a Flax checkpoint?)")


def _unchunk(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if tree.get(CHUNKED) is True:
        try:
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            if any(not isinstance(c, np.ndarray) for c in chunks):
                return Unreadable("chunked array with an unreadable chunk")
            return np.concatenate(chunks).reshape(shape)
        except (KeyError, TypeError, ValueError) as e:
            return Unreadable(f"malformed chunked array ({type(e).__name__}: {e})")
    return {k: _unchunk(v) for k, v in tree.items()}


def read_flax_msgpack(path: str | os.PathLike) -> dict:
    """The nested dict stored by flax.serialization.to_bytes, with numpy array leaves."""
    import msgpack

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    data = path.read_bytes()
    hint = ("expected the bytes of flax.serialization.to_bytes({'params': ..., 'batch_stats': ...}); "
            "write them with open(path, 'wb').write(flax.serialization.to_bytes(variables))")
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)
    except msgpack.StackError:  # nesting deeper than msgpack's own unpacking stack
        raise CheckpointError(f"{path} is not a Flax checkpoint: its maps and lists nest deeper than msgpack "
                              f"unpacks (a Flax parameter tree nests a few levels)", hint) from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CheckpointError(f"{path} is not a Flax msgpack checkpoint: {type(e).__name__}: {e}", hint) from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} is not a Flax msgpack checkpoint: it holds a {type(tree).__name__}, "
                              f"not a map of parameters", hint)
    if _nesting(tree) > MAX_DEPTH:
        raise CheckpointError(f"{path} is not a Flax checkpoint: its maps and lists nest more than {MAX_DEPTH} "
                              f"levels deep (a Flax parameter tree nests a few)", hint)
    return _unchunk(tree)


def _nesting(tree: Any) -> int:
    """How deep maps and lists nest, counted without recursion (stops once past MAX_DEPTH)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return deepest


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}; empty maps vanish."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out
