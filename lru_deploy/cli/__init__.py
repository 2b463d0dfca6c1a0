"""The `lru-deploy` command. User errors print one message and a hint to stderr and exit 1, no traceback.

The CLI is a layer of its own over the stage modules' Python APIs: the core subcommands (init, info, run,
generate, demo) are parsed here and run in cli/core.py; each stage has a module in this package that adds
its subcommand through a `register(subparsers)` function, listed in STAGES.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys


from ..errors import LRUDeployError
from .common import precision_list
from .core import cmd_demo, cmd_generate, cmd_info, cmd_init, cmd_run

log = logging.getLogger("lru_deploy")
BACKEND_CHOICES = ("reference", "onnxruntime", "tensorrt")  # runtime.BACKENDS, without importing the runtime
BACKEND_HELP = "default: what TARGET holds (model -> reference, export -> onnxruntime, engines -> tensorrt)"

# Stage modules that add subcommands: each has register(subparsers) -> None.
STAGES: list[str] = [
    "lru_deploy.cli.export",
    "lru_deploy.cli.build",
    "lru_deploy.cli.lint",
    "lru_deploy.cli.importers",
    "lru_deploy.cli.check",
    "lru_deploy.cli.triton",
    "lru_deploy.cli.serve",
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
    except BrokenPipeError:  # the reader went away (`generate ... | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE, the status a Unix tool killed by the closed pipe reports


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lru-deploy", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    s = sub.add_parser("init", help="create a randomly initialised model folder from a config JSON",
                       description="Create a model folder (config.json + model.safetensors) with the paper's "
                                   "initialisation.")
    s.add_argument("--config", required=True, help="JSON file with LRUConfig fields")
    s.add_argument("--out", required=True, help="model folder to write")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed, 0 to 2^63-1 (default 0)")
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
    s.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help=BACKEND_HELP)
    s.add_argument("--precision", type=precision_list, default=None, metavar="PRECISION",
                   help="onnxruntime: which exported precision to run, one of fp32, fp16, bf16 (default fp32)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("generate", help="stream text from a token model on any backend",
                       description="Prefill the prompt, then sample one token per step. Standard output carries the "
                                   "prompt and the generated text only; statistics go to standard error.")
    s.add_argument("target", nargs="?", default="default",
                   help="model, export or engine folder (default: the bundled model)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="the prompt text (its bytes as given, UTF-8 or not)")
    g.add_argument("--prompt-file", metavar="FILE", help="read the prompt's bytes from FILE")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help=BACKEND_HELP)
    s.add_argument("--precision", type=precision_list, default=None, metavar="PRECISION",
                   help="onnxruntime: which exported precision to run, one of fp32, fp16, bf16 (default fp32)")
    s.add_argument("--server", default=None, metavar="HOST:PORT[/MODEL]",
                   help="generate through a Triton server's HTTP port instead (model lru unless named; TARGET unused)")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy, else a finite number >= 1e-6 (default 0.8)")
    s.add_argument("--top-k", type=int, default=40, help="0 = all tokens (default 40)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed, 0 to 2^63-1 (default 0)")
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

