"""The core subcommands: init, info, run, generate, demo."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError


def cmd_init(args) -> int:
    from .. import memory
    from ..checkpoints import read_json, save_model
    from ..errors import ConfigError
    from ..model import LRUConfig, LRUModel, init_parameters
    check_seed(args.seed)
    cfg = LRUConfig.from_dict(read_json(args.config, "config", ConfigError))
    memory.require(memory.init_estimate(cfg), ConfigError,  # before the parameters are allocated
                   f"make the model in {args.config} smaller (vocab_size, d_model, d_hidden, n_layers, d_output), "
                   f"or run on a machine with more memory")
    model = init_parameters(LRUModel(cfg), args.seed)
    save_model(model, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    from ..checkpoints import load_model, summary
    from ..manifest import EngineManifest, ExportManifest, folder_kind
    path = Path(args.path)
    kind = folder_kind(path) if path.is_dir() else None
    if kind == "model":
        info = summary(load_model(path))
    elif kind in ("export", "engines"):  # verified first: info never prints a contract the folder does not hold
        info = (ExportManifest if kind == "export" else EngineManifest).read(path).to_dict()
    else:
        raise InputError(f"{path} is neither a model folder nor an export or engine folder",
                         "a model folder holds config.json; export and engine folders hold manifest.json")
    print(json.dumps(info, indent=2))
    return 0


def load_array(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read {what} from {path}: {e}", "save it with numpy.save") from None


def load_state_file(path: str) -> dict:
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise InputError(f"cannot read state from {path}: {e}", "save it with numpy.savez") from None
    return {"state": load_array(path, "state")}


def cmd_run(args) -> int:
    from ..files import atomic_write
    from ..runtime import open_session
    kwargs = _precision_kwargs(args.target, args.backend, args.precision, "run")
    sess = open_session(args.target, args.backend, **kwargs)
    x = load_array(args.inputs, "inputs")
    state = load_state_file(args.state) if args.state else None
    out, st = sess.prefill(x, state)
    atomic_write(args.output, lambda f: np.save(f, out), what="--output")
    if args.state_out:
        atomic_write(args.state_out, lambda f: np.savez(f, **st), what="--state-out")
    print(f"outputs {list(out.shape)} -> {args.output}" + (f"; state -> {args.state_out}" if args.state_out else ""))
    return 0


# Below this, logits / temperature overflows float64 for large logits and sampling is greedy in all but name.
MIN_TEMPERATURE = 1e-6
SEED_MAX = 2 ** 63 - 1  # numpy's and torch's generators both take any seed in [0, 2^63-1]


def check_seed(seed, flag: str = "--seed") -> None:
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"{flag} must be an integer from 0 to 2^63-1, got {seed}", f"for example {flag} 0")


def _precision_kwargs(target, backend, precisions, command: str) -> dict:
    """--precision for a local session: one precision, and only where it means something (export folders)."""
    if precisions is None:
        return {}
    from ..checkpoints import resolve_model_dir
    from ..manifest import folder_kind
    from ..runtime import BACKENDS
    from .common import one_precision
    precision = one_precision(precisions, command)
    folder = resolve_model_dir(target)
    kind = folder_kind(folder)
    backend = backend or {folder: b for b, folder in BACKENDS.items()}.get(kind)
    if backend == "reference":
        raise InputError(f"--precision applies to export folders (the onnxruntime backend); {folder} runs on the "
                         f"reference backend, which computes in float64",
                         "drop --precision, or pass an export folder (lru-deploy export MODEL_DIR)")
    if backend == "tensorrt":
        raise InputError("--precision applies to export folders; an engine folder runs the one precision it was "
                         "built with", "drop --precision, or pass the engine folder built with --precision "
                         f"{precision}")
    return {"precision": precision}


def _prompt_bytes(args) -> bytes:
    """The prompt's bytes: --prompt as the shell passed them (os.fsencode undoes the surrogate escapes Python
    decodes non-UTF-8 arguments with), or the content of --prompt-file."""
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InputError(f"cannot read --prompt-file {args.prompt_file}: {e.strerror or e}",
                             "pass an existing, readable file") from None
    else:
        data = os.fsencode(args.prompt)
    if not data:
        raise InputError("the prompt is empty", "pass at least one character with --prompt or --prompt-file")
    return data


def _write_bytes(data: bytes) -> None:
    """Bytes to stdout as they are (the model speaks bytes), through the binary buffer where there is one."""
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if buf is None:
        out.write(data.decode("utf-8", errors="replace"))
    else:
        out.flush()
        buf.write(data)
        buf.flush()
    out.flush()


def cmd_generate(args) -> int:
    import math
    from ..checkpoints import resolve_model_dir
    from ..runtime import open_session
    problems = [f"{flag} must be an integer >= 0, got {v}" for flag, v in
                (("--max-new-tokens", args.max_new_tokens), ("--top-k", args.top_k)) if v < 0]
    if not (math.isfinite(args.temperature) and (args.temperature == 0 or args.temperature >= MIN_TEMPERATURE)):
        problems.append(f"--temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got "
                        f"{args.temperature}")
    if not 0 <= args.seed <= SEED_MAX:
        problems.append(f"--seed must be an integer from 0 to 2^63-1, got {args.seed}")
    if problems:
        raise InputError("cannot generate:", "fix the options named above", problems)
    prompt_bytes = _prompt_bytes(args)
    if getattr(args, "server", None):  # through a Triton server: lru_deploy.serve.client
        from ..serve.client import remote_session
        sess = remote_session(args)
    else:
        kwargs = _precision_kwargs(args.target, args.backend, args.precision, "generate")
        sess = open_session(resolve_model_dir(args.target), args.backend, **kwargs)
    prompt = np.frombuffer(prompt_bytes, dtype=np.uint8).astype(np.int64)  # byte-level tokens
    _write_bytes(prompt_bytes)
    t0 = time.perf_counter()
    n = 0
    for tok in sess.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed):
        _write_bytes(bytes([int(tok[0])]))
        n += 1
    _write_bytes(b"\n")
    dt = time.perf_counter() - t0
    print(f"[{sess.backend}] {n} tokens in {dt:.2f} s ({n / max(dt, 1e-9):.1f} tokens/s, prompt {prompt.size} "
          f"tokens, seed {args.seed})", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.model, args.out)
