"""Import checkpoints trained elsewhere into a native model folder.

minimal-LRU (JAX/Flax, NicolasZucchet/minimal-LRU): the bytes of flax.serialization.to_bytes({"params": ...,
"batch_stats": ...}), read without JAX (msgpack_flax.py). Its network is ours: Dense encoder, layers of
norm / LRU / tanh-GELU / GLU from two Dense layers / residual, pooling, Dense decoder, log_softmax. Flax Dense
kernels are (in, out) and are transposed; LayerNorm eps is 1e-6, BatchNorm eps 1e-5 (running mean and var from
batch_stats). The norm kind is read from the file (batch_stats present: batch); prenorm and pooling are not in
the file and come from the caller (defaults: minimal-LRU's run_train.py defaults, prenorm and mean pooling).
Not representable, and not detectable from the file: models trained with `multidim > 1` (the copy task's dense
targets, whose log_softmax runs over pairs of decoder outputs).

lru-reduction (PyTorch, forgi86/lru-reduction DLRU, and forgi86/sysid-pytorch-lru DWN with the same keys):
encoder, blocks of pre-LayerNorm (eps 1e-5) / LRU with complex B (N, H) and C (H, N) and a full D (H, H) /
exact GELU / Linear(H, 2H) + GLU (ff='GLU'), or Linear(H, 4H) / GELU / Linear(4H, H) (ff='MLP', no GELU before
it) / residual, decoder, no pooling, no log_softmax. Its LRU reads the output from the state that includes the
current input (no delay) and applies exp(gamma_log) to B, as ours does. Variants whose meaning differs are refused where the keys show it:
a `gamma` stored and applied without exp, split real/imaginary names of other ports. A one-step output delay
leaves no trace in the keys; such ports need their own importer. The other PyTorch layouts, and the detection
of the layout from the keys, are in torch_layouts.py.

Every problem in a file is collected and raised at once as one CheckpointError.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..checkpoints import load_weights_file, state_dict_problems
from ..errors import CheckpointError, LRUDeployError
from ..model import POOLINGS, LRUConfig, LRUModel

log = logging.getLogger(__name__)

FLAX_HINT = ("the file must be flax.serialization.to_bytes({'params': params, 'batch_stats': batch_stats}) of a "
             "minimal-LRU ClassificationModel (batch_stats only for batch norm)")
TORCH_HINT = ("the file must be torch.save({'model': model.state_dict(), 'cfg': {...}}) or "
              "torch.save(model.state_dict()) of an lru-reduction DLRU")


def default_out_dir(path: str | os.PathLike) -> Path:
    """`<input dir>/<stem>-lru-deploy/`."""
    path = Path(path)
    return path.parent / f"{path.stem}-lru-deploy"


class _Spec:
    """Expected source arrays and where they go; every problem is collected on the way.

    transform: "" (as is), "T" (transpose a Flax kernel), "complex" (native is (re, im)), "glu" (native is
    (value, gate): the first and second halves of a Linear(H, 2H) followed by nn.GLU).
    """

    def __init__(self, arrays: Mapping[str, Any]):
        self.arrays = arrays
        self.want: dict[str, tuple[Any, tuple[int, ...], str]] = {}
        self.problems: list[str] = []
        self.skip: set[str] = set()  # source keys already explained by a problem, or knowingly ignored

    def add(self, key: str, native, shape: tuple[int, ...], transform: str = "") -> None:
        self.want[key] = (native, shape, transform)

    def build(self) -> dict[str, torch.Tensor]:
        """Check presence, dtype, shape and finiteness of every expected array; return the native state dict."""
        sd: dict[str, torch.Tensor] = {}
        missing = [k for k in self.want if k not in self.arrays]
        if missing:
            self.problems.append(f"missing: {', '.join(missing)}")
        unknown = sorted(k for k in self.arrays if k not in self.want and k not in self.skip)
        if unknown:
            self.problems.append(f"unknown keys: {', '.join(unknown)}")
        for key, (native, shape, transform) in self.want.items():
            if key not in self.arrays:
                continue
            a = _as_numpy(self.arrays[key])
            if isinstance(a, str):
                self.problems.append(f"{key}: {a}")
                continue
            if transform == "complex" and not np.iscomplexobj(a):
                self.problems.append(f"{key}: dtype {a.dtype}, want complex (this format stores complex B and C)")
                continue
            if transform != "complex" and not np.issubdtype(a.dtype, np.floating):
                self.problems.append(f"{key}: dtype {a.dtype}, want a real floating-point array")
                continue
            src_shape = {"T": shape[::-1], "glu": (2 * shape[0],) + shape[1:]}.get(transform, shape)
            if tuple(a.shape) != src_shape:
                self.problems.append(f"{key}: shape {tuple(a.shape)}, want {src_shape}")
                continue
            bad = int((~np.isfinite(a)).sum())
            if bad:
                self.problems.append(f"{key}: {bad} NaN or Inf value(s)")
                continue
            if transform == "complex":
                parts = (a.real, a.imag)
            elif transform == "glu":
                parts = (a[: shape[0]], a[shape[0]:])
            else:
                native, parts = (native,), (a.T if transform == "T" else a,)
            for name, part in zip(native, parts):
                sd[name] = _tensor(part)
        return sd


def _as_numpy(v: Any):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).resolve_conj().numpy()
    if isinstance(v, np.ndarray):
        return v
    reason = getattr(v, "reason", None)
    return reason if isinstance(reason, str) else f"not an array ({type(v).__name__})"


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(torch.float32)


def _shape(arrays: Mapping[str, Any], key: str, ndim: int) -> Optional[tuple[int, ...]]:
    a = arrays.get(key)
    shape = tuple(getattr(a, "shape", ()))
    return shape if key in arrays and len(shape) == ndim and hasattr(a, "dtype") else None


def _layer_indices(keys, pattern: str, what: str, problems: list[str]) -> list[int]:
    """Sorted layer indices; a gap is a problem."""
    found = sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})
    if found:
        gaps = sorted(set(range(found[-1] + 1)) - set(found))
        if gaps:
            problems.append(f"{what} indices have a gap: found {found}, missing {gaps}")
    return found


def _finish(cfg_kwargs: dict, sd: dict, problems: list[str], path: Path, hint: str) -> LRUModel:
    if not problems:
        try:
            cfg = LRUConfig(**cfg_kwargs).validate()
        except LRUDeployError as e:
            problems += [e.message] + e.problems
        else:
            problems += state_dict_problems(cfg, sd)
    if problems:
        raise CheckpointError(f"cannot import {path} ({len(problems)} problem(s)):", hint, problems)
    model = LRUModel(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- minimal-LRU

def import_minimal_lru(path: str | os.PathLike, prenorm: bool = True, pooling: str = "mean",
                       log_softmax: bool = True, norm: Optional[str] = None) -> LRUModel:
    """A minimal-LRU Flax checkpoint as an LRUModel. norm None: batch if batch_stats are present, else layer."""
    from .msgpack_flax import flatten, read_flax_msgpack

    path = Path(path)
    if pooling not in POOLINGS:
        raise CheckpointError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    tree = read_flax_msgpack(path)
    problems: list[str] = []
    if "params" in tree:
        extra = sorted(set(tree) - {"params", "batch_stats", "step", "opt_state"})
        if extra:
            problems.append(f"unknown top-level entries: {', '.join(map(str, extra))}")
        params, stats = tree["params"], tree.get("batch_stats") or {}
    elif "encoder" in tree and "decoder" in tree:
        params, stats = tree, {}  # to_bytes(params) alone: no batch statistics
    else:
        raise CheckpointError(f"{path} has no 'params' entry (top level: {', '.join(map(str, tree)) or 'empty'})",
                              FLAX_HINT)
    if not isinstance(params, dict) or not isinstance(stats, dict):
        raise CheckpointError(f"{path}: 'params' and 'batch_stats' must be maps of arrays", FLAX_HINT)
    arrays = {**flatten(params, "params/"), **flatten(stats, "batch_stats/")}
    has_stats = any(k.startswith("batch_stats/") for k in arrays)
    kind = norm or ("batch" if has_stats else "layer")
    if kind not in ("layer", "batch"):
        raise CheckpointError(f"norm must be layer or batch, got {norm!r}")
    if kind == "batch" and not has_stats:
        problems.append("batch norm needs the running statistics, but the file has no batch_stats")
    if kind == "layer" and has_stats:
        problems.append("the file has batch_stats (a batch-norm model) but layer norm was requested")

    E, L = "params/encoder/", "params/encoder/layers_{}/"
    enc = _shape(arrays, E + "encoder/kernel", 2)
    emb = _shape(arrays, E + "encoder/embedding", 2)
    n_idx = _layer_indices(arrays, r"(?:params|batch_stats)/encoder/layers_(\d+)/", "layers_{i}", problems)
    nu = _shape(arrays, L.format(n_idx[0]) + "seq/nu_log", 1) if n_idx else None
    dec = _shape(arrays, "params/decoder/kernel", 2)
    anchors = [(enc or emb, "params/encoder/encoder/kernel (or embedding)"), (n_idx, "params/encoder/layers_0"),
               (nu, L.format(n_idx[0] if n_idx else 0) + "seq/nu_log"), (dec, "params/decoder/kernel")]
    lost = [name for value, name in anchors if not value]
    if lost:
        problems.append(f"cannot infer the model sizes, missing or malformed: {', '.join(lost)}")
        raise CheckpointError(f"cannot import {path} ({len(problems)} problem(s)):", FLAX_HINT, problems)
    H, N, d_out = (enc or emb)[1], nu[0], dec[1]
    spec = _Spec(arrays)
    if emb:
        spec.add(E + "encoder/embedding", "embedding.weight", emb)
    else:
        spec.add(E + "encoder/kernel", "encoder.weight", (H, enc[0]), "T")
        spec.add(E + "encoder/bias", "encoder.bias", (H,))
    for i in n_idx:  # a missing layer is reported once, as a gap
        p, n = L.format(i), f"layers.{i}."
        for name in ("nu_log", "theta_log", "gamma_log"):
            spec.add(p + "seq/" + name, n + "lru." + name, (N,))
        for name, shape in (("B_re", (N, H)), ("B_im", (N, H)), ("C_re", (H, N)), ("C_im", (H, N)), ("D", (H,))):
            spec.add(p + "seq/" + name, n + "lru." + name, shape)
        for lin in ("out1", "out2"):
            spec.add(p + lin + "/kernel", n + lin + ".weight", (H, H), "T")
            spec.add(p + lin + "/bias", n + lin + ".bias", (H,))
        spec.add(p + "normalization/scale", n + "norm.weight", (H,))
        spec.add(p + "normalization/bias", n + "norm.bias", (H,))
        if kind == "batch":
            s = "batch_stats/encoder/layers_{}/normalization/".format(i)
            spec.add(s + "mean", n + "norm.running_mean", (H,))
            spec.add(s + "var", n + "norm.running_var", (H,))
    spec.add("params/decoder/kernel", "decoder.weight", (d_out, H), "T")
    spec.add("params/decoder/bias", "decoder.bias", (d_out,))
    if kind == "layer" and has_stats:
        spec.skip |= {k for k in arrays if k.startswith("batch_stats/")}
    sd = spec.build()
    problems += spec.problems
    for k in arrays:
        if k.endswith("normalization/var") and isinstance(arrays[k], np.ndarray) and (arrays[k] < 0).any():
            problems.append(f"{k}: negative variance")
    cfg = dict(vocab_size=emb[0] if emb else None, d_input=None if emb else enc[0], d_model=H, d_hidden=N,
               n_layers=n_idx[-1] + 1, d_output=d_out, norm=kind, prenorm=prenorm,
               norm_eps=1e-6 if kind == "layer" else 1e-5, gelu="tanh", skip="diagonal", pooling=pooling,
               log_softmax=log_softmax)
    return _finish(cfg, sd, problems, path, FLAX_HINT)


# -------------------------------------------------------------------------------------------- lru-reduction

# Keys that show a formulation we cannot represent, with the reason.
_REFUSED = [
    (r"blocks\.\d+\.lru\.gamma$", "`gamma` is stored and applied without exp; our LRU normalises B by "
     "exp(gamma_log)"),
    (r"blocks\.\d+\.lru\.(B_re|B_im|C_re|C_im)$", "split real/imaginary names belong to another PyTorch port, "
     "not lru-reduction (which stores complex B and C)"),
]


WRAPPERS = ("model", "state_dict", "model_state_dict")  # checkpoint keys that hold the state dict


def _load_torch_state(path: Path) -> tuple[dict, Optional[dict]]:
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        obj = load_weights_file(path)
    except CheckpointError as e:
        message = re.sub(r"\x1b\[[0-9;]*m", "", e.message)  # torch's message carries terminal bold codes
        raise CheckpointError(message, "lru-deploy never unpickles objects other than tensors. If this is a "
                              "training checkpoint that also pickles other objects (lru-reduction and "
                              "sysid-pytorch-lru save sklearn scalers and their config), save only the weights "
                              "from the training script that made it, `torch.save(model.state_dict(), "
                              "'state.pt')`, and import state.pt (apply any input/output scalers yourself)") from None
    cfg = None
    wrapper = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
    if wrapper:  # {'model': sd, 'cfg': ...}, {'state_dict': sd, ...}, {'model_state_dict': sd, 'optimizer_...'}
        cfg = obj.get("cfg") if isinstance(obj.get("cfg"), dict) else None
        ignored = sorted(set(obj) - {wrapper, "cfg"})
        if ignored:
            log.info("ignoring %s in %s", ", ".join(map(str, ignored)), path)
        obj = obj[wrapper]
    if not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} is not a state dict (a map of parameter names to tensors), nor a "
                              f"checkpoint holding one under {', '.join(map(repr, WRAPPERS))}", TORCH_HINT)
    for prefix in ("_orig_mod.", "module."):  # torch.compile and DataParallel wrappers
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj, cfg


def import_lru_reduction(path: str | os.PathLike) -> LRUModel:
    """An lru-reduction DLRU state dict as an LRUModel (skip='full' unless D is diagonal)."""
    path = Path(path)
    sd_in, cfg_in = _load_torch_state(path)
    problems: list[str] = []
    explained: set[str] = set()
    for pattern, reason in _REFUSED:
        hits = sorted(k for k in sd_in if re.match(pattern, k))
        if hits:
            problems.append(f"not representable: {reason} ({', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''})")
            explained |= set(hits)
    mlp = any(re.match(r"blocks\.\d+\.ff\.(c_fc|c_proj)\.", k) for k in sd_in)
    if cfg_in and cfg_in.get("ff", "GLU") not in ("GLU", "MLP"):
        problems.append(f"not representable: cfg ff={cfg_in.get('ff')!r}; the feed-forwards are GLU and MLP")
    elif cfg_in and cfg_in.get("ff", "GLU") != ("MLP" if mlp else "GLU"):
        problems.append(f"cfg says ff={cfg_in.get('ff')!r} but the weights hold the {'MLP' if mlp else 'GLU'} "
                        f"feed-forward's keys")
    enc, nu = _shape(sd_in, "encoder.weight", 2), None
    idx = _layer_indices(sd_in, r"blocks\.(\d+)\.", "blocks.{i}", problems)
    if idx:
        nu = _shape(sd_in, f"blocks.{idx[0]}.lru.nu_log", 1)
    dec = _shape(sd_in, "decoder.weight", 2)
    lost = [name for value, name in ((enc, "encoder.weight"), (idx, "blocks.0"), (nu, "blocks.0.lru.nu_log"),
                                     (dec, "decoder.weight")) if not value]
    if lost:
        problems.append(f"cannot infer the model sizes, missing or malformed: {', '.join(lost)}")
        raise CheckpointError(f"cannot import {path} ({len(problems)} problem(s)):", TORCH_HINT, problems)
    H, n_u, N, n_y = enc[0], enc[1], nu[0], dec[0]
    d_shapes = {tuple(sd_in[k].shape) for k in sd_in if re.fullmatch(r"blocks\.\d+\.lru\.D", k)}
    skip = "diagonal" if d_shapes == {(H,)} else "full"
    spec = _Spec(sd_in)
    spec.skip = explained
    spec.add("encoder.weight", "encoder.weight", (H, n_u))
    spec.add("encoder.bias", "encoder.bias", (H,))
    ln_bias = any(re.fullmatch(r"blocks\.\d+\.ln\.bias", k) for k in sd_in)
    fc = _shape(sd_in, f"blocks.{idx[0]}.ff.c_fc.weight", 2) if mlp else None
    d_ff = fc[0] if fc else 4 * H
    mlp_bias = any(re.fullmatch(r"blocks\.\d+\.ff\.c_(fc|proj)\.bias", k) for k in sd_in)
    for i in idx:  # a missing block is reported once, as a gap
        p, n = f"blocks.{i}.", f"layers.{i}."
        spec.add(p + "ln.weight", n + "norm.weight", (H,))
        if ln_bias:
            spec.add(p + "ln.bias", n + "norm.bias", (H,))
        for name in ("nu_log", "theta_log", "gamma_log"):
            spec.add(p + "lru." + name, n + "lru." + name, (N,))
        spec.add(p + "lru.B", (n + "lru.B_re", n + "lru.B_im"), (N, H), "complex")
        spec.add(p + "lru.C", (n + "lru.C_re", n + "lru.C_im"), (H, N), "complex")
        spec.add(p + "lru.D", n + "lru.D", (H,) if skip == "diagonal" else (H, H))
        if mlp:  # MLP: Linear(H, 4H, bias=cfg.bias), GELU, Linear(4H, H)
            spec.add(p + "ff.c_fc.weight", n + "fc1.weight", (d_ff, H))
            spec.add(p + "ff.c_proj.weight", n + "fc2.weight", (H, d_ff))
            if mlp_bias:
                spec.add(p + "ff.c_fc.bias", n + "fc1.bias", (d_ff,))
                spec.add(p + "ff.c_proj.bias", n + "fc2.bias", (H,))
        else:
            spec.add(p + "ff.output_linear.0.weight", (n + "out1.weight", n + "out2.weight"), (H, H), "glu")
            spec.add(p + "ff.output_linear.0.bias", (n + "out1.bias", n + "out2.bias"), (H,), "glu")
    spec.add("decoder.weight", "decoder.weight", (n_y, H))
    spec.add("decoder.bias", "decoder.bias", (n_y,))
    sd = spec.build()
    problems += spec.problems
    if not ln_bias:  # nn.LayerNorm(bias=False) everywhere: a zero bias
        sd.update({f"layers.{i}.norm.bias": torch.zeros(H) for i in idx})
    if mlp and not mlp_bias:  # DWNConfig(bias=False): Linear layers without bias, a zero bias
        sd.update({f"layers.{i}.{lin}.bias": torch.zeros(d) for i in idx for lin, d in (("fc1", d_ff), ("fc2", H))})
    cfg = dict(vocab_size=None, d_input=n_u, d_model=H, d_hidden=N, n_layers=idx[-1] + 1, d_output=n_y,
               norm="layer", prenorm=True, norm_eps=1e-5, gelu="exact", skip=skip, pooling="none",
               log_softmax=False)
    if mlp:
        cfg.update(ff="mlp", d_ff=d_ff)
    if cfg_in:
        for ours, theirs, inferred in (("d_model", "d_model", H), ("d_hidden", "d_state", N),
                                       ("n_layers", "n_layers", idx[-1] + 1)):
            if theirs in cfg_in and cfg_in[theirs] != inferred:
                problems.append(f"cfg says {theirs}={cfg_in[theirs]!r} but the weights have {ours} {inferred}")
        for ours, theirs in (("r_min", "rmin"), ("r_max", "rmax"), ("max_phase", "max_phase")):
            if isinstance(cfg_in.get(theirs), (int, float)) and math.isfinite(cfg_in[theirs]):
                cfg[ours] = float(cfg_in[theirs])
    return _finish(cfg, sd, problems, path, TORCH_HINT)
