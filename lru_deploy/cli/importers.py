"""`lru-deploy import minimal-lru` and `lru-deploy import torch`."""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoints import save_model
from ..errors import CheckpointError
from ..importers import default_out_dir, import_minimal_lru
from ..importers.torch_layouts import FORMATS, import_torch
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
                                   "pre- or post-norm and the pooling are not stored there, so --prenorm or "
                                   "--postnorm and --pooling are required: pass the values used in training "
                                   "(minimal-LRU's run_train.py defaults are --prenorm --pooling mean). "
                                   "Models trained with multidim > 1 are not supported.")
    m.add_argument("params", help="the .msgpack file")
    m.add_argument("--out", help="model folder to write (default: <input dir>/<stem>-lru-deploy)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--prenorm", dest="prenorm", action="store_true", default=None,
                   help="the model was trained pre-norm (required: this or --postnorm)")
    g.add_argument("--postnorm", dest="prenorm", action="store_false", help="the model was trained post-norm")
    m.add_argument("--pooling", choices=POOLINGS, default=None, help="pooling over time used in training (required)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--log-softmax", dest="log_softmax", action="store_true", default=True,
                   help="apply log_softmax to the decoder output, as minimal-LRU does (default)")
    g.add_argument("--no-log-softmax", dest="log_softmax", action="store_false", help="raw decoder output")
    m.add_argument("--norm", choices=("layer", "batch"), default=None,
                   help="check the norm kind (default: batch when the file has batch_stats, else layer)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    m.set_defaults(func=cmd_import_minimal_lru)
    t = sub.add_parser("torch", help="a PyTorch port's state dict",
                       description="Import a PyTorch state dict (bare, or under 'model', 'state_dict' or "
                                   "'model_state_dict'), loaded with weights_only=True. The layout is detected "
                                   "from the keys: lru-reduction (forgi86/lru-reduction, forgi86/sysid-pytorch-lru), "
                                   "gothos (Gothos/LRU-pytorch), lrnnx-classifier and lrnnx-lm (SforAiDl/lrnnx), "
                                   "lrurec (yueqirex/LRURec).")
    t.add_argument("state", help="the .pt file")
    t.add_argument("--format", choices=FORMATS, default=None,
                   help="read the file as this layout (default: detected from the keys)")
    t.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="pooling over time, which the file does not record (default: the upstream's: last for "
                        "lrnnx-classifier, none for the others)")
    t.add_argument("--norm-eps", type=float, default=None,
                   help="the norms' epsilon, which the file does not record (default: 1e-5, the upstreams' "
                        "torch LayerNorm/RMSNorm default)")
    t.add_argument("--out", help="model folder to write (default: <input dir>/<stem>-lru-deploy)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    t.set_defaults(func=cmd_import_torch)


def _report(model: LRUModel, src: str, out: Path, layout: str = "") -> None:
    c = model.cfg
    inputs = f"vocab_size {c.vocab_size}" if c.tokens else f"d_input {c.d_input}"
    print(f"imported {src}{f' ({layout} layout)' if layout else ''} -> {out}")
    print(f"  {inputs}, d_model {c.d_model}, d_hidden {c.d_hidden}, n_layers {c.n_layers}, d_output {c.d_output}, "
          f"norm {c.norm} ({'pre' if c.prenorm else 'post'}, eps {c.norm_eps:g}), gelu {c.gelu}, skip {c.skip}, "
          f"pooling {c.pooling}, log_softmax {str(c.log_softmax).lower()}")
    block = [f"ff {c.ff}" + (f" (d_ff {c.d_ff}, {c.activation})" if c.ff == "mlp" else ""),
             *(["ff_sublayer"] if c.ff_sublayer else []), *([] if c.residual else ["no residual"]),
             *(["lru_bias"] if c.lru_bias else []), *(["embedding_norm"] if c.embedding_norm else []),
             *(["final_norm"] if c.final_norm else []), *(["encoder none"] if c.encoder == "none" else []),
             f"decoder {c.decoder}" + ("" if c.decoder == "none" else f" ({'with' if c.decoder_bias else 'no'} bias)")]
    print(f"  {', '.join(block)}")


def cmd_import_minimal_lru(args) -> int:
    missing = [flag for flag, v in (("--prenorm or --postnorm", args.prenorm), ("--pooling", args.pooling))
               if v is None]
    if missing:
        raise CheckpointError(f"{args.params}: a minimal-LRU msgpack does not record pre- or post-norm or the "
                              f"pooling, so they cannot be guessed; missing: {' and '.join(missing)}",
                              "pass the values used in training, e.g. --prenorm --pooling mean (minimal-LRU's "
                              "run_train.py defaults) or --postnorm --pooling last")
    model = import_minimal_lru(args.params, prenorm=args.prenorm, pooling=args.pooling,
                               log_softmax=args.log_softmax, norm=args.norm)
    out = Path(args.out) if args.out else default_out_dir(args.params)
    save_model(model, out, overwrite=args.overwrite)
    _report(model, args.params, out)
    return 0


def cmd_import_torch(args) -> int:
    model, layout = import_torch(args.state, args.format, pooling=args.pooling, norm_eps=args.norm_eps)
    out = Path(args.out) if args.out else default_out_dir(args.state)
    save_model(model, out, overwrite=args.overwrite)
    _report(model, args.state, out, layout)
    return 0
