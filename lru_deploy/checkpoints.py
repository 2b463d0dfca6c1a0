"""The native checkpoint: a folder with config.json and model.safetensors. Every other stage reads it.

Keys (torch Linear layout, out x in; the bracketed ones only where the config has that piece):
    encoder.weight (d_model, d_input), encoder.bias        or  embedding.weight (vocab_size, d_model)
    [embedding_norm.weight, .bias (d_model,)]
    layers.{i}.norm.weight, .bias (d_model,)               [+ .running_mean, .running_var for batch norm;
                                                            rms norm has no bias]
    layers.{i}.lru.nu_log, .theta_log, .gamma_log (N,)
    layers.{i}.lru.B_re, .B_im (N, H); .C_re, .C_im (H, N); .D (H,) or (H, H) when skip = full, none when
                                                           skip = identity
    [layers.{i}.lru.B_bias_re, .B_bias_im (N,), .C_bias (H,)]   lru_bias
    layers.{i}.out1.weight, out2.weight (H, H); .bias (H,) ff glu; or fc1 (d_ff, H), fc2 (H, d_ff) ff mlp
    [layers.{i}.norm2.*]                                    ff_sublayer
    [decoder.norm.*]                                        final_norm
    decoder.weight (d_output, d_model) (decoder linear), decoder.bias (decoder_bias)
A bare layer (encoder none, layer 0 reading d_input wide inputs) has B (N, d_input) and D (d_model, d_input).

Loading checks everything at once and raises one CheckpointError listing every problem. Saving is atomic:
the folder is written beside its destination and renamed into place.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError, ConfigError
from .files import default_file_mode, file_sha256, read_json, staged_dir  # noqa: F401  (read_json, file_sha256: re-exported)
from .model import LRUConfig, LRUModel

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NONFINITE = "NaN or Inf value(s)"
ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default"


def default_model_dir() -> Path:
    return DEFAULT_MODEL


def resolve_model_dir(target) -> Path:
    """A folder argument: None or "default" names the bundled model, anything else is a path."""
    return default_model_dir() if target in (None, "default") else Path(target)


def expected_shapes(cfg: LRUConfig) -> dict[str, tuple[int, ...]]:
    H, N = cfg.d_model, cfg.d_hidden
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, d: int) -> None:
        if cfg.norm != "none":
            shapes[prefix + "weight"] = (d,)
        if cfg.norm in ("layer", "batch"):
            shapes[prefix + "bias"] = (d,)
        if cfg.norm == "batch":
            shapes[prefix + "running_mean"] = (d,)
            shapes[prefix + "running_var"] = (d,)

    if cfg.tokens:
        shapes["embedding.weight"] = (cfg.vocab_size, H)
    elif cfg.encoder == "linear":
        shapes["encoder.weight"] = (H, cfg.d_input)
        shapes["encoder.bias"] = (H,)
    if cfg.embedding_norm:
        norm("embedding_norm.", H)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        d_in, d_out = cfg.layer_widths(i)
        norm(p + "norm.", d_in if cfg.prenorm else d_out)
        for name in ("nu_log", "theta_log", "gamma_log"):
            shapes[p + "lru." + name] = (N,)
        shapes[p + "lru.B_re"] = shapes[p + "lru.B_im"] = (N, d_in)
        shapes[p + "lru.C_re"] = shapes[p + "lru.C_im"] = (d_out, N)
        if cfg.skip in ("diagonal", "full"):
            shapes[p + "lru.D"] = (d_in,) if cfg.skip == "diagonal" else (d_out, d_in)
        if cfg.lru_bias:
            shapes[p + "lru.B_bias_re"] = shapes[p + "lru.B_bias_im"] = (N,)
            shapes[p + "lru.C_bias"] = (d_out,)
        if cfg.ff == "glu":
            for lin in ("out1", "out2"):
                shapes[p + lin + ".weight"] = (d_out, d_out)
                shapes[p + lin + ".bias"] = (d_out,)
        elif cfg.ff == "mlp":
            shapes[p + "fc1.weight"], shapes[p + "fc1.bias"] = (cfg.d_ff, d_out), (cfg.d_ff,)
            shapes[p + "fc2.weight"], shapes[p + "fc2.bias"] = (d_out, cfg.d_ff), (d_out,)
        if cfg.ff_sublayer:
            norm(p + "norm2.", d_out)
    if cfg.final_norm:
        norm("decoder.norm.", H)
    if cfg.decoder == "linear":
        shapes["decoder.weight"] = (cfg.d_output, H)
    if cfg.decoder != "none" and cfg.decoder_bias:
        shapes["decoder.bias"] = (cfg.d_output,)
    return shapes


def state_dict_problems(cfg: LRUConfig, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Every problem of a state dict against a config: keys, shapes, dtypes, NaN/Inf, |lambda| >= 1."""
    problems = []
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(sorted(unexpected))}")
    for k, shape in want.items():
        if k not in sd:
            continue
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            problems.append(f"{k}: not a tensor ({type(t).__name__})")
            continue
        if not t.is_floating_point():
            problems.append(f"{k}: dtype {t.dtype}, want a floating-point tensor")
            continue
        if tuple(t.shape) != shape:
            problems.append(f"{k}: shape {tuple(t.shape)}, want {shape}")
            continue
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            problems.append(f"{k}: {bad} {NONFINITE}")
        if k.endswith("running_var") and (t < 0).any():
            problems.append(f"{k}: negative variance")
    for i in range(cfg.n_layers):
        k = f"layers.{i}.lru.nu_log"
        if k in sd and isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) == want[k]:
            with torch.no_grad():
                mod = torch.exp(-torch.exp(sd[k].double()))
            bad = (~(mod < 1)).sum().item()
            if bad:
                problems.append(f"layer {i}: {bad} eigenvalue(s) with |lambda| >= 1 (exp(nu_log) underflows to 0);"
                                f" the recurrence would not decay")
    return problems


def model_from_state_dict(cfg: LRUConfig, sd: Mapping[str, torch.Tensor], source: str = "state dict",
                          dtype: torch.dtype = torch.float32) -> LRUModel:
    problems = state_dict_problems(cfg, sd)
    if problems and all(NONFINITE in p for p in problems):  # the weights are damaged, the config is not at fault
        raise CheckpointError(f"{source} holds NaN or Inf weights ({len(problems)} tensor(s)):",
                              "the checkpoint is damaged or its training diverged; save it again from finite "
                              "weights", problems)
    if problems:
        raise CheckpointError(f"{source} does not fit its config ({len(problems)} problem(s)):",
                              "re-export the checkpoint, or fix config.json to describe the weights", problems)
    model = LRUModel(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()


def load_config(path: str | os.PathLike) -> LRUConfig:
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"no {CONFIG_FILE} at {path}",
                              "a model folder holds config.json and model.safetensors; create one with "
                              "`lru-deploy init` or `lru-deploy import`")
    try:
        return LRUConfig.from_dict(read_json(path, "model config", CheckpointError))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e.message}", e.hint, e.problems) from None


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .safetensors file or a PyTorch .pt/.pth/.bin state dict (weights_only=True, never unpickled)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}", "check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}",
                                  "the file is corrupt or truncated; save or copy it again") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds here (UnpicklingError, RuntimeError, EOFError, ...)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        glob = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
        if glob:  # a pickle that names Python objects: refused, never run (and no hint to load it unsafely)
            raise CheckpointError(f"{path} refers to Python objects other than tensors and plain containers "
                                  f"({glob.group(1)}), which weights-only loading refuses; lru-deploy never "
                                  f"unpickles Python objects",
                                  "save a plain state dict: torch.save(model.state_dict(), path) (lru-deploy reads "
                                  ".pt files with weights_only=True)") from None
        first = text.split("\n")[0].split(". ")[0] if text else ""
        if "Weights only load failed" in first or not first:
            first = "not a tensor pickle torch.save writes"
        raise CheckpointError(f"{path} is not a readable PyTorch state dict file ({type(e).__name__}: {first}): "
                              f"it is corrupt, truncated or of another format",
                              "save or copy it again (torch.save(model.state_dict(), path)); lru-deploy reads .pt "
                              "files with weights_only=True") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict",
                              "save a plain state dict: torch.save(model.state_dict(), path)")
    return obj


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LRUModel:
    """Load a native model folder, checking config and weights together."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a model folder",
                              "pass a folder holding config.json and model.safetensors")
    cfg = load_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {path}", "the folder is incomplete; save or import it again")
    sd = load_weights_file(weights)
    return model_from_state_dict(cfg, sd, source=str(weights), dtype=dtype)


def save_model(model: LRUModel, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write config.json and model.safetensors atomically (a sibling temp folder renamed into place)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    problems = state_dict_problems(model.cfg, model.state_dict())
    if problems:
        raise CheckpointError("refusing to save an invalid model:",
                              "fix the weights or the config named above before saving", problems)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is a file, not a folder", "choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{out_dir} exists and is not empty", "choose another --out or remove the folder")
    with staged_dir(out_dir, "model", overwrite=overwrite, mark=False) as tmp:
        sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": "lru-deploy-native-v1"})
        (tmp / CONFIG_FILE).write_text(model.cfg.to_json() + "\n")
        for f in (WEIGHTS_FILE, CONFIG_FILE):  # one file mode for both, whatever the writer library chose
            os.chmod(tmp / f, default_file_mode())
    log.info("saved model to %s", out_dir)
    return out_dir


def checkpoint_sha256(model_dir: str | os.PathLike) -> str:
    return file_sha256(Path(model_dir) / WEIGHTS_FILE)


def summary(model: LRUModel) -> dict:
    cfg = model.cfg
    mods = []
    for layer in model.layers:
        with torch.no_grad():
            mods.append(torch.exp(-torch.exp(layer.lru.nu_log.double())))
    mod = torch.cat(mods) if mods else torch.zeros(1)
    return {
        "config": cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "state_floats_per_sequence": cfg.n_layers * 2 * cfg.d_hidden,
        "lambda_abs_min": float(mod.min()),
        "lambda_abs_max": float(mod.max()),
        "half_life_max_steps": float(math.log(0.5) / math.log(float(mod.max()))) if float(mod.max()) > 0 else 0.0,
    }
