"""`lru-deploy check`."""
from __future__ import annotations

from ..parity import DEFAULT_DRIFT_STEPS, QUICK_DRIFT_STEPS, CheckOptions, check
from .common import precision_list

D = CheckOptions()  # the defaults are owned by CheckOptions


def register(sub) -> None:
    s = sub.add_parser("check", help="parity of an export or engine folder against the reference (Polygraphy)",
                       description="Compare every graph of an export folder (ONNX Runtime) or an engine folder "
                                   "(TensorRT) with the complex128 reference model through Polygraphy: the shape "
                                   "matrix, the continuity identities and a long step-by-step drift run. Writes "
                                   "TARGET/report (report.json, a plot, Polygraphy input/output files). Any miss "
                                   "exits 1.")
    s.add_argument("target", help="export folder or engine folder")
    s.add_argument("--model", help="model folder (default: the one the manifest records)")
    s.add_argument("--precision", type=precision_list, default=D.precisions, metavar="LIST",
                   help="comma-separated precisions to check (default: all in the folder)")
    s.add_argument("--report", help="report folder (default: TARGET/report)")
    s.add_argument("--atol", type=float, default=D.atol,
                   help="override the table's absolute tolerance (announced loudly)")
    s.add_argument("--rtol", type=float, default=D.rtol,
                   help="override the table's relative tolerance (announced loudly)")
    s.add_argument("--seed", type=int, default=D.seed, help=f"inputs seed, 0 to 2^63-1 (default {D.seed})")
    s.add_argument("--long-seq", type=int, default=D.long_seq,
                   help=f"the long prefill case's length (default {D.long_seq})")
    s.add_argument("--drift-steps", type=int, default=D.drift_steps,
                   help=f"consecutive steps of the drift run (default {DEFAULT_DRIFT_STEPS}, "
                        f"{QUICK_DRIFT_STEPS} with --quick)")
    s.add_argument("--quick", action="store_true", default=D.quick, help="no long case, a shorter drift run")
    s.add_argument("--localize", action="store_true", default=D.localize,
                   help="compare every block's values with the reference's and name where the error first "
                        "exceeds the bound (always done when a case misses)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --report even if it holds files that `check` did not write")
    s.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from ..parity.report import console
    options = CheckOptions(precisions=args.precision, atol=args.atol, rtol=args.rtol, seed=args.seed,
                           long_seq=args.long_seq, drift_steps=args.drift_steps, quick=args.quick,
                           localize=args.localize)
    report = check(args.target, args.model, options, report_dir=args.report, overwrite=args.overwrite)
    print(console(report))
    return 0 if report["pass"] else 1
