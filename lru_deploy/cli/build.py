"""`lru-deploy build`."""
from __future__ import annotations


from ..engines import DEFAULT_SEQ, HW_COMPAT, MANIFEST, BuildOptions, build_engines, check_range
from .common import one_precision, precision_list

D = BuildOptions()  # the defaults are owned by BuildOptions


def register(sub) -> None:
    s = sub.add_parser("build", help="build TensorRT engines from an export folder",
                       description="Build prefill.plan and step.plan (strongly typed networks from the precision's "
                                   "ONNX, one optimization profile per graph) and an engine manifest; print the "
                                   "equivalent trtexec command lines. Needs TensorRT and an NVIDIA GPU.")
    s.add_argument("export_dir", help="export folder (manifest.json with graphs)")
    s.add_argument("--out", default=None, help="engine folder (default: engines/<model name>/<gpu>-<precision>)")
    s.add_argument("--precision", type=precision_list, default=(D.precision,), metavar="PRECISION",
                   help=f"which of the export's precisions to build, one per engine folder: fp32, fp16 or bf16 "
                        f"(default {D.precision})")
    s.add_argument("--batch", default=":".join(map(str, D.batch)),
                   help=f"MIN:OPT:MAX batch range (default {':'.join(map(str, D.batch))})")
    s.add_argument("--seq", default=None, help=f"MIN:OPT:MAX prefill seq range (default {':'.join(map(str, DEFAULT_SEQ))}"
                                               f", at most the export's max_seq; longer prompts are split by the "
                                               f"runtime)")
    s.add_argument("--timing-cache", default=D.timing_cache, help="timing cache file, read and updated")
    s.add_argument("--opt-level", type=int, default=D.opt_level, metavar="N",
                   help="builder optimization level 0..5 (TensorRT's default 3)")
    s.add_argument("--hardware-compat", default=D.hardware_compat, choices=list(HW_COMPAT),
                   help="run on other GPUs: ampere+ (compute capability >= 8.0) or same-cc")
    s.add_argument("--version-compatible", action="store_true", help="run with later TensorRT versions too")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--tf32", dest="tf32", action="store_true", help="allow TF32 matmuls (faster, ~1e-3 error)")
    g.add_argument("--no-tf32", dest="tf32", action="store_false", help="no TF32 (default; keeps fp32 parity)")
    s.set_defaults(tf32=D.tf32)
    s.add_argument("--workspace", type=float, default=D.workspace_gib, metavar="GIB",
                   help="builder workspace limit in GiB")
    s.add_argument("--device", type=int, default=D.device, help=f"CUDA device index (default {D.device})")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `build` did not write")
    s.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    options = BuildOptions(precision=one_precision(args.precision, "build"), batch=parse_range(args.batch, "batch"),
                           seq=parse_range(args.seq, "seq") if args.seq is not None else None,
                           timing_cache=args.timing_cache, opt_level=args.opt_level,
                           hardware_compat=args.hardware_compat, version_compatible=args.version_compatible,
                           tf32=args.tf32, workspace_gib=args.workspace, device=args.device)
    out, m = build_engines(args.export_dir, args.out, options, overwrite=args.overwrite)
    print(f"wrote {out}: prefill.plan, step.plan, {MANIFEST} ({m.gpu['name']}, compute capability "
          f"{m.gpu['compute_capability']}, TensorRT {m.tensorrt['version']}, {m.precision}, "
          f"tf32 {'on' if m.tf32 else 'off'})")
    print("equivalent trtexec commands:")
    for cmd in m.trtexec.values():
        print("  " + cmd)
    return 0


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or one number for all three) -> (min, opt, max) with 1 <= min <= opt <= max."""
    try:
        vals = [int(p) for p in str(text).split(":")]
    except ValueError:
        vals = []
    return check_range(vals * 3 if len(vals) == 1 else vals, what, text)
