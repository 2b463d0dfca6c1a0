"""`lru-deploy export`."""
from __future__ import annotations

from ..export import ExportOptions, export_model
from ..export.graphs import INTRA
from ..memory import MAX_CHUNK
from .common import precision_list

D = ExportOptions()  # the defaults are owned by ExportOptions


def register(sub) -> None:
    s = sub.add_parser("export", help="export prefill and step ONNX graphs per precision, validated and linted",
                       description="Write EXPORT_DIR/<precision>/{prefill,step}.onnx and manifest.json. Every graph "
                                   "is checked in ONNX Runtime against the float64 reference and linted for "
                                   "TensorRT; any failure writes nothing and exits 1. The memory the export needs "
                                   "is estimated first; what exceeds the machine's available memory (or "
                                   "LRU_DEPLOY_MEMORY_LIMIT_GIB) is refused.")
    s.add_argument("model_dir", nargs="?", default="default", help="model folder (default: the bundled model)")
    s.add_argument("--out", help="export folder (default: export/<model name>)")
    s.add_argument("--precision", type=precision_list, default=D.precisions, metavar="LIST",
                   help=f"comma-separated: fp32, fp16, bf16 (default {','.join(D.precisions)})")
    s.add_argument("--chunk", type=int, default=D.chunk,
                   help=f"scan chunk T, a power of two from 2 to {MAX_CHUNK} (default {D.chunk})")
    s.add_argument("--max-seq", type=int, default=D.max_seq,
                   help=f"longest prefill one call takes (default {D.max_seq})")
    s.add_argument("--opset", type=int, default=D.opset, help=f"ONNX opset, 18-20 (default {D.opset})")
    s.add_argument("--prefill-outputs", choices=("all", "last"), default=D.prefill_outputs,
                   help=f"pooling none: outputs at every position (all) or the last one only "
                        f"(default {D.prefill_outputs})")
    s.add_argument("--intra", choices=INTRA, default=D.intra,
                   help=f"intra-chunk scan formulation (default {D.intra})")
    s.add_argument("--long-seq", type=int, default=D.long_seq,
                   help=f"the long validation case's length (default {D.long_seq})")
    s.add_argument("--no-validate", action="store_true", help="skip validation (not recommended)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `export` did not write")
    s.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    options = ExportOptions(precisions=args.precision, chunk=args.chunk, max_seq=args.max_seq, opset=args.opset,
                            prefill_outputs=args.prefill_outputs, intra=args.intra, validate=not args.no_validate,
                            long_seq=args.long_seq)
    out = export_model(args.model_dir, args.out, options, overwrite=args.overwrite)
    print(f"exported {', '.join(options.precisions)} to {out}")
    return 0
