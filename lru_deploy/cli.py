"""The `lru-deploy` command. User errors print one message and a hint to stderr and exit 1, no traceback.

Core subcommands (init, info, run, demo) live here; each stage module adds its own through a
`register(subparsers)` function, listed in STAGES.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .errors import InputError, LRUDeployError

log = logging.getLogger("lru_deploy")

# Stage modules that add subcommands: each has register(subparsers) -> None.
STAGES: list[str] = [
    "lru_deploy.export",
    "lru_deploy.engines",
    "lru_deploy.lint",
    "lru_deploy.importers",
    "lru_deploy.parity",
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
        return int(rc or 0)
    except LRUDeployError as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lru-deploy", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    s = sub.add_parser("init", help="create a randomly initialised model folder from a config JSON",
                       description="Create a model folder (config.json + model.safetensors) with the paper's "
                                   "initialisation.")
    s.add_argument("--config", required=True, help="JSON file with LRUConfig fields")
    s.add_argument("--out", required=True, help="model folder to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("info", help="summarise a model, export or engine folder",
                       description="Print the config and a summary of a model, export or engine folder as JSON.")
    s.add_argument("path")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("run", help="run a model on inputs from a .npy file",
                       description="Prefill a sequence: inputs float32 [batch, seq, d_input] or int64 "
                                   "[batch, seq]. A state file is .npz with the contract's names (state, "
                                   "pool_sum, pool_count) or a plain .npy taken as state.")
    s.add_argument("target", help="model folder (or export/engine folder with another backend)")
    s.add_argument("--inputs", required=True, help=".npy file")
    s.add_argument("--state", help="initial state: .npz (contract names) or .npy (state)")
    s.add_argument("--output", required=True, help=".npy file for `outputs`")
    s.add_argument("--state-out", help=".npz file for the final state")
    s.add_argument("--backend", default=None, help="reference (default for a model folder)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("generate", help="stream text from a token model on any backend",
                       description="Prefill the prompt, then sample one token per step. Standard output carries the "
                                   "prompt and the generated text only; statistics go to standard error.")
    s.add_argument("target", nargs="?", default="default",
                   help="model, export or engine folder (default: the bundled model)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--backend", choices=("reference", "onnxruntime", "tensorrt"), default=None,
                   help="default: what TARGET holds (model -> reference, export -> onnxruntime, engines -> tensorrt)")
    s.add_argument("--precision", default=None, help="onnxruntime: which exported precision to run (default fp32)")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=40, help="0 = all tokens")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("demo", help="the main job end to end on the bundled model",
                       description="Load the bundled model, run every stage available here, and say what was "
                                   "verified and what was skipped.")
    s.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    s.add_argument("--out", default=None, help="work folder (default: export/<model name>)")
    s.set_defaults(func=cmd_demo)

    for mod in STAGES:
        importlib.import_module(mod).register(sub)
    return p


def cmd_init(args) -> int:
    from .checkpoints import read_json, save_model
    from .model import LRUConfig, LRUModel, init_parameters
    cfg = LRUConfig.from_dict(read_json(args.config))
    model = init_parameters(LRUModel(cfg), args.seed)
    save_model(model, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
    from .checkpoints import load_model, read_json, summary
    path = Path(args.path)
    if (path / "config.json").exists():
        info = summary(load_model(path))
    elif (path / "manifest.json").exists():
        info = read_json(path / "manifest.json")
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
    from .files import atomic_write
    from .runtime import open_session
    sess = open_session(args.target, args.backend)
    x = load_array(args.inputs, "inputs")
    state = load_state_file(args.state) if args.state else None
    out, st = sess.prefill(x, state)
    atomic_write(args.output, lambda f: np.save(f, out), what="--output")
    if args.state_out:
        atomic_write(args.state_out, lambda f: np.savez(f, **st), what="--state-out")
    print(f"outputs {list(out.shape)} -> {args.output}" + (f"; state -> {args.state_out}" if args.state_out else ""))
    return 0


def resolve_target(target: str) -> Path:
    from .checkpoints import default_model_dir
    return default_model_dir() if target in (None, "default") else Path(target)


def cmd_generate(args) -> int:
    import codecs
    from .runtime import encode, open_session
    if args.max_new_tokens < 0 or args.top_k < 0 or args.temperature < 0:
        raise InputError("--max-new-tokens, --top-k and --temperature must be >= 0")
    kwargs = {"precision": args.precision} if args.precision else {}
    sess = open_session(resolve_target(args.target), args.backend, **kwargs)
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


if __name__ == "__main__":
    sys.exit(main())
