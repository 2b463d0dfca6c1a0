"""`lru-deploy export`."""
from __future__ import annotations

from ..export import DEFAULT_CHUNK, export_model
from ..export.graphs import INTRA


def register(sub) -> None:
    s = sub.add_parser("export", help="export prefill and step ONNX graphs per precision, validated and linted",
                       description="Write EXPORT_DIR/<precision>/{prefill,step}.onnx and manifest.json. Every graph "
                                   "is checked in ONNX Runtime against the float64 reference and linted for "
                                   "TensorRT; any failure writes nothing and exits 1.")
    s.add_argument("model_dir", nargs="?", default="default", help="model folder (default: the bundled model)")
    s.add_argument("--out", help="export folder (default: export/<model name>)")
    s.add_argument("--precision", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16 (default fp32,fp16)")
    s.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"scan chunk T (default {DEFAULT_CHUNK})")
    s.add_argument("--max-seq", type=int, default=65536, help="longest prefill one call takes (default 65536)")
    s.add_argument("--opset", type=int, default=18, help="ONNX opset, 18-20 (default 18)")
    s.add_argument("--prefill-outputs", choices=("all", "last"), default="all",
                   help="pooling none: outputs at every position (all) or the last one only")
    s.add_argument("--intra", choices=INTRA, default="toeplitz", help="intra-chunk scan formulation")
    s.add_argument("--long-seq", type=int, default=4096, help="the long validation case's length (default 4096)")
    s.add_argument("--no-validate", action="store_true", help="skip validation (not recommended)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `export` did not write")
    s.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    out = export_model(args.model_dir, args.out, precisions, args.chunk, args.max_seq, args.opset,
                       args.prefill_outputs, args.intra, not args.no_validate, args.long_seq,
                       overwrite=args.overwrite)
    print(f"exported {', '.join(precisions)} to {out}")
    return 0
