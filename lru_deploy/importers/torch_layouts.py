"""PyTorch LRU checkpoints of several public ports, the layout detected from the keys.

`import_torch(path)` loads a state dict (weights_only; unwrapping `model`, `state_dict` and `model_state_dict`
and the torch.compile / DataParallel prefixes), refuses layers whose meaning differs from the paper's where the
keys show it, detects the layout from its anchor keys and maps it onto a native LRUModel. Hyperparameters the
file cannot tell come from the caller, with each upstream's own defaults.

In every layout below the LRU layer computes what ours does (the output reads the state that includes the
current input, B is scaled by exp(gamma_log), lambda = exp(-exp(nu_log) + i exp(theta_log))).

| layout | upstream | its network, as the native config writes it |
|---|---|---|
| gothos | Gothos/LRU-pytorch (PyPI LRU-pytorch) | a bare layer: complex B (N, in), C (out, N), full D (out, in); encoder none, decoder none, no norm, no residual |
| lrnnx-classifier | SforAiDl/lrnnx Classifier with LRU mixers | input_proj, blocks x = LayerNorm(LRU(x) + x) (post-norm, ff none), `final_block` the last of them, pooling (default last), output_proj |
| lrnnx-lm | SforAiDl/lrnnx LRNNLMHeadModel with LRU mixers | embedding, r = r + LRU(RMSNorm(r)) (pre-norm, ff none), norm_f (final_norm), lm_head tied to the embedding without bias (or untied); the vocabulary as padded (a multiple of 8) |
| lrurec | yueqirex/LRURec (WSDM 2024) | embedding + LayerNorm (embedding_norm), blocks x = LN(Re(C h + b_C) + x) (identity skip, lru_bias, no residual, post-norm) then x = LN2(W2 GELU(W1 x) + x) (ff mlp as a sublayer), scores x E^T + bias (decoder tied) |
| lru-reduction | forgi86/lru-reduction DLRU, forgi86/sysid-pytorch-lru DWN (ff GLU or MLP) | importers/__init__.py |

Refused, with the reason, where the keys show it: adrian-valente/lru_experiments (`layers.{i}.LRU.gamma_log`
used as diag(gamma_log) @ B, without exp), zhongshuren/lru-pytorch (`lru_layers.{i}.layer_norm`: a LayerNorm
inside the layer, y = GELU(Re(C h)) + D u with no identity residual), any other `gamma` stored without `_log`.
LRURec treats item 0 as padding and its scan drops the state carried out of a padded position; prompts for the
imported model must hold real items only (strip the left padding), which is what its scan computes for them.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..model import POOLINGS, LRUModel
from . import _finish, _layer_indices, _load_torch_state, _shape, _Spec, _tensor, import_lru_reduction

HINT = ("pass --format to read the file as one layout and see every problem against it; the layouts read are "
        "lru-reduction, gothos, lrnnx-classifier, lrnnx-lm and lrurec")


class Layout(NamedTuple):
    name: str
    upstream: str
    anchors: tuple[str, ...]  # regular expressions, each matched by at least one key (re.fullmatch)


LAYOUTS = (
    Layout("lru-reduction", "forgi86/lru-reduction or forgi86/sysid-pytorch-lru",
           (r"encoder\.weight", r"blocks\.\d+\.lru\.nu_log", r"blocks\.\d+\.lru\.B", r"decoder\.weight")),
    Layout("gothos", "Gothos/LRU-pytorch", (r"nu_log", r"theta_log", r"gamma_log", r"B", r"C", r"D")),
    Layout("lrnnx-classifier", "SforAiDl/lrnnx Classifier",
           (r"input_proj\.weight", r"final_block\.lrnn\.nu_log", r"final_block\.output_proj\.weight")),
    Layout("lrnnx-lm", "SforAiDl/lrnnx LRNNLMHeadModel",
           (r"backbone\.embedding\.weight", r"backbone\.layers\.\d+\.mixer\.nu_log", r"backbone\.norm_f\.weight",
            r"lm_head\.weight")),
    Layout("lrurec", "yueqirex/LRURec",
           (r"embedding\.token\.weight", r"model\.lru_blocks\.\d+\.lru_layer\.params_log", r"model\.bias")),
)
FORMATS = tuple(layout.name for layout in LAYOUTS)

# Keys that show a layer whose meaning differs from the paper's; the reason names the project where known.
_REFUSED = [
    (r"layers\.\d+\.LRU\.gamma_log", "adrian-valente/lru_experiments computes B_norm = diag(gamma_log) @ B: "
     "gamma_log is used without exp, while the LRU normalises B by exp(gamma_log); importing it would silently "
     "change every output"),
    (r"lru_layers\.\d+\.layer_norm\.(weight|bias)", "zhongshuren/lru-pytorch has a LayerNorm inside the layer "
     "and computes y = GELU(Re(C h)) + D * u with no identity residual, a block lru-deploy cannot express"),
    (r"(.*\.)?gamma", "a `gamma` stored without `_log` is applied without exp; the LRU normalises B by "
     "exp(gamma_log)"),
]


def _pattern(key: str) -> str:
    return re.sub(r"\.\d+\.", ".{i}.", key)


def detect(sd: Mapping[str, Any]) -> tuple[Optional[str], list[str]]:
    """(the layout whose anchors all match, or None; per layout what was missing when none matched)."""
    keys = list(sd)
    missing = {}
    for layout in LAYOUTS:
        lost = [a for a in layout.anchors if not any(re.fullmatch(a, k) for k in keys)]
        if not lost:
            return layout.name, []
        missing[layout] = lost
    report = []
    for layout, lost in missing.items():
        want = ", ".join(a.replace("\\", "").replace(r"\d+", "{i}").replace("d+", "{i}") for a in layout.anchors)
        gone = ", ".join(a.replace("\\", "").replace("d+", "{i}") for a in lost)
        report.append(f"{layout.name} ({layout.upstream}) expects {want}; missing {gone}")
    return None, report


def refusals(sd: Mapping[str, Any]) -> list[str]:
    out = []
    for pattern, reason in _REFUSED:
        hits = sorted(k for k in sd if re.fullmatch(pattern, k))
        if hits:
            out.append(f"not representable: {reason} ({', '.join(hits[:3])}{', ...' if len(hits) > 3 else ''})")
            break  # the first, most specific reason is the one that applies
    return out


def import_torch(path: str | os.PathLike, format: Optional[str] = None, pooling: Optional[str] = None,
                 norm_eps: Optional[float] = None) -> tuple[LRUModel, str]:
    """A PyTorch checkpoint as an LRUModel, and the layout it was read as. format None: detect it.

    pooling / norm_eps: the values the file cannot tell; None takes the layout's upstream default (pooling
    last for lrnnx-classifier, none elsewhere; eps 1e-5, torch's LayerNorm and RMSNorm default, everywhere).
    """
    path = Path(path)
    problems = []
    if format is not None and format not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if pooling is not None and pooling not in POOLINGS:
        problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if norm_eps is not None and not (isinstance(norm_eps, (int, float)) and math.isfinite(norm_eps)
                                     and 0 < norm_eps < 1):
        problems.append(f"norm eps must be in (0, 1), got {norm_eps!r}")
    if problems:
        raise CheckpointError("cannot import:", "fix the options named above", problems)
    sd, cfg_in = _load_torch_state(path)
    refused = refusals(sd)
    if refused:
        raise CheckpointError(f"cannot import {path}: its layer differs in meaning from the LRU's:",
                              "such a checkpoint needs the model rebuilt in a form lru-deploy expresses; nothing "
                              "was written", refused)
    layout = format
    if layout is None:
        layout, report = detect(sd)
        if layout is None:
            found = sorted({_pattern(k) for k in sd})
            shown = ", ".join(found[:16]) + (f", ... ({len(found) - 16} more)" if len(found) > 16 else "")
            raise CheckpointError(f"cannot tell which PyTorch LRU layout {path} holds (keys: {shown})", HINT,
                                  report)
    if layout == "lru-reduction":
        if pooling not in (None, "none") or norm_eps not in (None, 1e-5):
            raise CheckpointError("the lru-reduction layout has no pooling and LayerNorm eps 1e-5 (its code's)",
                                  "drop --pooling and --norm-eps")
        return import_lru_reduction(path), layout
    eps = 1e-5 if norm_eps is None else float(norm_eps)
    build: Callable = {"gothos": _gothos, "lrnnx-classifier": _lrnnx_classifier, "lrnnx-lm": _lrnnx_lm,
                       "lrurec": _lrurec}[layout]
    return build(path, sd, pooling, eps), layout


def _hint(layout: str) -> str:
    up = next(x.upstream for x in LAYOUTS if x.name == layout)
    return f"the file must be the state dict of a {up} model, saved by its own code (torch.save)"


def _sizes_lost(path: Path, layout: str, lost: list[str], problems: list[str]) -> None:
    if lost:
        problems.append(f"cannot infer the model sizes, missing or malformed: {', '.join(lost)}")
        raise CheckpointError(f"cannot import {path} as {layout} ({len(problems)} problem(s)):", _hint(layout),
                              problems)


def _lru_split(spec: _Spec, src: str, dst: str, N: int, d_in: int, d_out: int, skip: str) -> None:
    """The lrnnx names, which are ours: nu_log, theta_log, gamma_log, B_re/B_im, C_re/C_im, D."""
    for name in ("nu_log", "theta_log", "gamma_log"):
        spec.add(src + name, dst + name, (N,))
    for name, shape in (("B_re", (N, d_in)), ("B_im", (N, d_in)), ("C_re", (d_out, N)), ("C_im", (d_out, N))):
        spec.add(src + name, dst + name, shape)
    spec.add(src + "D", dst + "D", (d_in,) if skip == "diagonal" else (d_out, d_in))


# ------------------------------------------------------------------------------------------------- gothos

def _gothos(path: Path, sd: dict, pooling: Optional[str], eps: float) -> LRUModel:
    problems: list[str] = []
    B, C, nu = _shape(sd, "B", 2), _shape(sd, "C", 2), _shape(sd, "nu_log", 1)
    _sizes_lost(path, "gothos", [n for v, n in ((B, "B"), (C, "C"), (nu, "nu_log")) if not v], problems)
    N, d_in, d_out = nu[0], B[1], C[0]
    spec = _Spec(sd)
    for name in ("nu_log", "theta_log", "gamma_log"):
        spec.add(name, "layers.0.lru." + name, (N,))
    spec.add("B", ("layers.0.lru.B_re", "layers.0.lru.B_im"), (N, d_in), "complex")
    spec.add("C", ("layers.0.lru.C_re", "layers.0.lru.C_im"), (d_out, N), "complex")
    spec.add("D", "layers.0.lru.D", (d_out, d_in))
    out = spec.build()
    problems += spec.problems
    cfg = dict(vocab_size=None, d_input=d_in, d_model=d_out, d_hidden=N, n_layers=1, d_output=d_out,
               encoder="none", decoder="none", norm="none", ff="none", residual=False, skip="full",
               pooling=pooling or "none", norm_eps=eps)
    return _finish(cfg, out, problems, path, _hint("gothos"))


# ------------------------------------------------------------------------------------------------- lrnnx

def _lrnnx_classifier(path: Path, sd: dict, pooling: Optional[str], eps: float) -> LRUModel:
    problems: list[str] = []
    enc, out_w = _shape(sd, "input_proj.weight", 2), _shape(sd, "final_block.output_proj.weight", 2)
    nu = _shape(sd, "final_block.lrnn.nu_log", 1)
    idx = _layer_indices(sd, r"blocks\.(\d+)\.", "blocks.{i}", problems)
    _sizes_lost(path, "lrnnx-classifier", [n for v, n in ((enc, "input_proj.weight"),
                                                          (out_w, "final_block.output_proj.weight"),
                                                          (nu, "final_block.lrnn.nu_log")) if not v], problems)
    H, d_in, N, d_out = enc[0], enc[1], nu[0], out_w[0]
    if any(k.startswith("embedding.") for k in sd):
        problems.append("token-embedding classifiers (vocab_size set) are not read; continuous inputs only")
    if any(re.fullmatch(r"(blocks\.\d+|final_block)\.lrnn\.(Lambda|A|log_dt|log_A_real)\w*", k) for k in sd):
        problems.append("a mixer other than LRU (S5, Centaurus): only LRU mixers map onto the LRU layer")
    sources = [f"blocks.{i}." for i in idx] + ["final_block."]
    spec = _Spec(sd)
    spec.add("input_proj.weight", "encoder.weight", (H, d_in))
    spec.add("input_proj.bias", "encoder.bias", (H,))
    for i, src in enumerate(sources):
        _lru_split(spec, src + "lrnn.", f"layers.{i}.lru.", N, H, H, "diagonal")
        spec.add(src + "norm.weight", f"layers.{i}.norm.weight", (H,))
        spec.add(src + "norm.bias", f"layers.{i}.norm.bias", (H,))
    spec.add("final_block.output_proj.weight", "decoder.weight", (d_out, H))
    spec.add("final_block.output_proj.bias", "decoder.bias", (d_out,))
    out = spec.build()
    problems += spec.problems
    cfg = dict(vocab_size=None, d_input=d_in, d_model=H, d_hidden=N, n_layers=len(sources), d_output=d_out,
               norm="layer", prenorm=False, norm_eps=eps, ff="none", skip="diagonal",
               pooling=pooling or "last")
    return _finish(cfg, out, problems, path, _hint("lrnnx-classifier"))


def _lrnnx_lm(path: Path, sd: dict, pooling: Optional[str], eps: float) -> LRUModel:
    problems: list[str] = []
    emb, nf = _shape(sd, "backbone.embedding.weight", 2), _shape(sd, "backbone.norm_f.weight", 1)
    idx = _layer_indices(sd, r"backbone\.layers\.(\d+)\.", "backbone.layers.{i}", problems)
    nu = _shape(sd, f"backbone.layers.{idx[0]}.mixer.nu_log", 1) if idx else None
    _sizes_lost(path, "lrnnx-lm", [n for v, n in ((emb, "backbone.embedding.weight"), (idx, "backbone.layers.0"),
                                                  (nu, "backbone.layers.0.mixer.nu_log")) if not v], problems)
    V, H, N = emb[0], emb[1], nu[0]
    if any(re.fullmatch(r"backbone\.layers\.\d+\.(mlp|norm2)\.\S+", k) for k in sd):
        problems.append("not representable: a GatedMLP after the mixer (d_intermediate > 0: fc1 to 2*d, "
                        "y * silu(gate), fc2); only d_intermediate = 0 (no MLP) maps onto the block")
    rms = "backbone.norm_f.bias" not in sd  # rms_norm=True (its default) has no bias; LayerNorm has one
    kind = "rms" if rms else "layer"
    spec = _Spec(sd)
    spec.skip |= {k for k in sd if re.fullmatch(r"backbone\.layers\.\d+\.(mlp|norm2)\.\S+", k)}
    spec.add("backbone.embedding.weight", "embedding.weight", (V, H))
    for i in idx:
        src, dst = f"backbone.layers.{i}.", f"layers.{i}."
        _lru_split(spec, src + "mixer.", dst + "lru.", N, H, H, "diagonal")
        spec.add(src + "norm.weight", dst + "norm.weight", (H,))
        if not rms:
            spec.add(src + "norm.bias", dst + "norm.bias", (H,))
    spec.add("backbone.norm_f.weight", "decoder.norm.weight", (H,))
    if not rms:
        spec.add("backbone.norm_f.bias", "decoder.norm.bias", (H,))
    head = sd.get("lm_head.weight")
    table = sd.get("backbone.embedding.weight")
    tied = isinstance(head, torch.Tensor) and isinstance(table, torch.Tensor) and head.shape == table.shape \
        and bool(torch.equal(head, table))
    if tied:
        spec.skip.add("lm_head.weight")  # the same tensor as the embedding (tie_embeddings=True)
    else:
        spec.add("lm_head.weight", "decoder.weight", (V, H))
    if "lm_head.bias" in sd:
        spec.add("lm_head.bias", "decoder.bias", (V,))
    out = spec.build()
    problems += spec.problems
    if nf is None and "backbone.norm_f.weight" in sd:
        problems.append("backbone.norm_f.weight: not a vector")
    cfg = dict(vocab_size=V, d_model=H, d_hidden=N, n_layers=(idx[-1] + 1) if idx else 0, d_output=V, norm=kind,
               prenorm=True, norm_eps=eps, ff="none", skip="diagonal", pooling=pooling or "none", final_norm=True,
               decoder="tied" if tied else "linear", decoder_bias="lm_head.bias" in sd)
    return _finish(cfg, out, problems, path, _hint("lrnnx-lm"))


# ------------------------------------------------------------------------------------------------- LRURec

def _lrurec(path: Path, sd: dict, pooling: Optional[str], eps: float) -> LRUModel:
    problems: list[str] = []
    emb = _shape(sd, "embedding.token.weight", 2)
    idx = _layer_indices(sd, r"model\.lru_blocks\.(\d+)\.", "model.lru_blocks.{i}", problems)
    p0 = f"model.lru_blocks.{idx[0] if idx else 0}."
    plog, w1 = _shape(sd, p0 + "lru_layer.params_log", 2), _shape(sd, p0 + "feed_forward.w_1.weight", 2)
    _sizes_lost(path, "lrurec", [n for v, n in ((emb, "embedding.token.weight"), (idx, "model.lru_blocks.0"),
                                                (plog, p0 + "lru_layer.params_log"),
                                                (w1, p0 + "feed_forward.w_1.weight")) if not v], problems)
    V, H, N, d_ff = emb[0], emb[1], plog[1], w1[0]
    if plog[0] != 3:
        problems.append(f"{p0}lru_layer.params_log: shape {plog}, want (3, N): nu_log, theta_log, gamma_log")
    bias = any(re.fullmatch(r"model\.lru_blocks\.\d+\.lru_layer\.(in|out)_proj\.bias", k) for k in sd)
    spec = _Spec(sd)
    spec.skip |= {f"model.lru_blocks.{i}.lru_layer.params_log" for i in idx}  # split below
    spec.add("embedding.token.weight", "embedding.weight", (V, H))
    spec.add("embedding.layer_norm.weight", "embedding_norm.weight", (H,))
    spec.add("embedding.layer_norm.bias", "embedding_norm.bias", (H,))
    for i in idx:
        src, dst = f"model.lru_blocks.{i}.", f"layers.{i}."
        L = src + "lru_layer."
        spec.add(L + "in_proj.weight", (dst + "lru.B_re", dst + "lru.B_im"), (N, H), "complex")
        spec.add(L + "out_proj.weight", (dst + "lru.C_re", dst + "lru.C_im"), (H, N), "complex")
        if bias:  # Im(b_C) never reaches Re(C h + b_C): only the real part is kept
            spec.add(L + "in_proj.bias", (dst + "lru.B_bias_re", dst + "lru.B_bias_im"), (N,), "complex")
            spec.add(L + "out_proj.bias", (dst + "lru.C_bias", dst + "lru.C_bias_im_unused"), (H,), "complex")
        spec.add(L + "layer_norm.weight", dst + "norm.weight", (H,))
        spec.add(L + "layer_norm.bias", dst + "norm.bias", (H,))
        F_ = src + "feed_forward."
        spec.add(F_ + "w_1.weight", dst + "fc1.weight", (d_ff, H))
        spec.add(F_ + "w_1.bias", dst + "fc1.bias", (d_ff,))
        spec.add(F_ + "w_2.weight", dst + "fc2.weight", (H, d_ff))
        spec.add(F_ + "w_2.bias", dst + "fc2.bias", (H,))
        spec.add(F_ + "layer_norm.weight", dst + "norm2.weight", (H,))
        spec.add(F_ + "layer_norm.bias", dst + "norm2.bias", (H,))
    spec.add("model.bias", "decoder.bias", (V,))
    out = spec.build()
    problems += spec.problems
    for i in idx:
        out.pop(f"layers.{i}.lru.C_bias_im_unused", None)
        k = f"model.lru_blocks.{i}.lru_layer.params_log"
        a = sd.get(k)
        if isinstance(a, torch.Tensor) and tuple(a.shape) == (3, N) and a.is_floating_point():
            v = a.detach().cpu().to(torch.float64).numpy()
            if not np.isfinite(v).all():
                problems.append(f"{k}: NaN or Inf value(s)")
            for j, name in enumerate(("nu_log", "theta_log", "gamma_log")):
                out[f"layers.{i}.lru.{name}"] = _tensor(v[j])
        elif k in sd:
            problems.append(f"{k}: want a real (3, {N}) tensor, got {getattr(a, 'dtype', type(a).__name__)} "
                            f"{tuple(getattr(a, 'shape', ()))}")
    cfg = dict(vocab_size=V, d_model=H, d_hidden=N, n_layers=(idx[-1] + 1) if idx else 0, d_output=V,
               norm="layer", prenorm=False, norm_eps=eps, gelu="exact", skip="identity", residual=False,
               lru_bias=bias, ff="mlp", d_ff=d_ff, activation="gelu", ff_sublayer=True, embedding_norm=True,
               decoder="tied", decoder_bias=True, pooling=pooling or "none")
    return _finish(cfg, out, problems, path, _hint("lrurec"))
