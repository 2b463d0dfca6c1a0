"""The core subcommands: init, info, run, generate, demo."""
from __future__ import annotations

import json
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
    sess = open_session(args.target, args.backend)
    x = load_array(args.inputs, "inputs")
    state = load_state_file(args.state) if args.state else None
    out, st = sess.prefill(x, state)
    atomic_write(args.output, lambda f: np.save(f, out), what="--output")
    if args.state_out:
        atomic_write(args.state_out, lambda f: np.savez(f, **st), what="--state-out")
    print(f"outputs {list(out.shape)} -> {args.output}" + (f"; state -> {args.state_out}" if args.state_out else ""))
    return 0


def cmd_generate(args) -> int:
    import codecs
    from ..checkpoints import resolve_model_dir
    from ..runtime import encode, open_session
    if args.max_new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
        raise InputError("--max-new-tokens, --top-k and --temperature must be >= 0")
    kwargs = {"precision": args.precision} if args.precision else {}
    if getattr(args, "server", None):  # through a Triton server: lru_deploy.serve.client
        from ..serve.client import remote_session
        sess = remote_session(args)
    else:
        sess = open_session(resolve_model_dir(args.target), args.backend, **kwargs)
    prompt = encode(args.prompt)
    if prompt.size == 0:
        raise InputError("the prompt is empty", "pass at least one character with --prompt")
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    t0 = time.perf_counter()
    n = 0
    for tok in sess.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed):
        out.write(dec.decode(bytes([int(tok[0])])))
        out.flush()
        n += 1
    out.write(dec.decode(b"", final=True) + "\n")
    dt = time.perf_counter() - t0
    print(f"[{sess.backend}] {n} tokens in {dt:.2f} s ({n / max(dt, 1e-9):.1f} tokens/s, prompt {prompt.size} "
          f"tokens, seed {args.seed})", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.model, args.out)
