"""`lru-deploy import minimal-lru` and `lru-deploy import torch`."""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoints import save_model
from ..importers import default_out_dir, import_lru_reduction, import_minimal_lru
from ..model import POOLINGS, LRUModel

log = logging.getLogger("lru_deploy")


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="import a checkpoint trained elsewhere into a model folder",
                              description="Convert a minimal-LRU (JAX/Flax) or lru-reduction (PyTorch) checkpoint "
                                          "into a native model folder (config.json + model.safetensors).")
    sub = p.add_subparsers(title="formats", metavar="FORMAT", dest="importer", required=True)
    m = sub.add_parser("minimal-lru", help="a minimal-LRU Flax msgpack file",
                       description="Import flax.serialization.to_bytes({'params': ..., 'batch_stats': ...}) of a "
                                   "minimal-LRU ClassificationModel. Sizes and the norm kind are read from the file; "
                                   "prenorm and pooling are not stored there: pass the values used in training "
                                   "(defaults: minimal-LRU's run_train.py defaults, --prenorm --pooling mean). "
                                   "Models trained with multidim > 1 are not supported.")
    m.add_argument("params", help="the .msgpack file")
    m.add_argument("--out", help="model folder to write (default: <input dir>/<stem>-lru-deploy)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--prenorm", dest="prenorm", action="store_true", default=True, help="pre-norm (default)")
    g.add_argument("--postnorm", dest="prenorm", action="store_false", help="post-norm")
    m.add_argument("--pooling", choices=POOLINGS, default="mean", help="pooling over time (default: mean)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--log-softmax", dest="log_softmax", action="store_true", default=True,
                   help="apply log_softmax to the decoder output, as minimal-LRU does (default)")
    g.add_argument("--no-log-softmax", dest="log_softmax", action="store_false", help="raw decoder output")
    m.add_argument("--norm", choices=("layer", "batch"), default=None,
                   help="check the norm kind (default: batch when the file has batch_stats, else layer)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    m.set_defaults(func=cmd_import_minimal_lru)
    t = sub.add_parser("torch", help="a PyTorch port's state dict",
                       description="Import a PyTorch state dict ({'model': state_dict, 'cfg': ...} or a bare state "
                                   "dict), loaded with weights_only=True.")
    t.add_argument("state", help="the .pt file")
    t.add_argument("--format", required=True, choices=("lru-reduction",), help="which port trained it")
    t.add_argument("--out", help="model folder to write (default: <input dir>/<stem>-lru-deploy)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    t.set_defaults(func=cmd_import_torch)


def _report(model: LRUModel, src: str, out: Path) -> None:
    c = model.cfg
    inputs = f"vocab_size {c.vocab_size}" if c.tokens else f"d_input {c.d_input}"
    print(f"imported {src} -> {out}")
    print(f"  {inputs}, d_model {c.d_model}, d_hidden {c.d_hidden}, n_layers {c.n_layers}, d_output {c.d_output}, "
          f"norm {c.norm} ({'pre' if c.prenorm else 'post'}, eps {c.norm_eps:g}), gelu {c.gelu}, skip {c.skip}, "
          f"pooling {c.pooling}, log_softmax {str(c.log_softmax).lower()}")


def cmd_import_minimal_lru(args) -> int:
    model = import_minimal_lru(args.params, prenorm=args.prenorm, pooling=args.pooling,
                               log_softmax=args.log_softmax, norm=args.norm)
    out = Path(args.out) if args.out else default_out_dir(args.params)
    save_model(model, out, overwrite=args.overwrite)
    _report(model, args.params, out)
    return 0


def cmd_import_torch(args) -> int:
    model = import_lru_reduction(args.state)
    out = Path(args.out) if args.out else default_out_dir(args.state)
    save_model(model, out, overwrite=args.overwrite)
    _report(model, args.state, out)
    return 0
