"""`lru-deploy check`."""
from __future__ import annotations

from ..parity import DEFAULT_DRIFT_STEPS, DEFAULT_LONG_SEQ, QUICK_DRIFT_STEPS, check


def register(sub) -> None:
    s = sub.add_parser("check", help="parity of an export or engine folder against the reference (Polygraphy)",
                       description="Compare every graph of an export folder (ONNX Runtime) or an engine folder "
                                   "(TensorRT) with the complex128 reference model through Polygraphy: the shape "
                                   "matrix, the continuity identities and a long step-by-step drift run. Writes "
                                   "TARGET/report (report.json, a plot, Polygraphy input/output files). Any miss "
                                   "exits 1.")
    s.add_argument("target", help="export folder or engine folder")
    s.add_argument("--model", help="model folder (default: the one the manifest records)")
    s.add_argument("--precision", help="comma-separated precisions to check (default: all in the folder)")
    s.add_argument("--report", help="report folder (default: TARGET/report)")
    s.add_argument("--atol", type=float, help="override the table's absolute tolerance (announced loudly)")
    s.add_argument("--rtol", type=float, help="override the table's relative tolerance (announced loudly)")
    s.add_argument("--seed", type=int, default=0, help="inputs seed (default 0)")
    s.add_argument("--long-seq", type=int, default=DEFAULT_LONG_SEQ,
                   help=f"the long prefill case's length (default {DEFAULT_LONG_SEQ})")
    s.add_argument("--drift-steps", type=int, default=None,
                   help=f"consecutive steps of the drift run (default {DEFAULT_DRIFT_STEPS}, "
                        f"{QUICK_DRIFT_STEPS} with --quick)")
    s.add_argument("--quick", action="store_true", help="no long case, a shorter drift run")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --report even if it holds files that `check` did not write")
    s.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from ..parity.report import console
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()] if args.precision else None
    report = check(args.target, args.model, precisions, args.report, args.atol, args.rtol, args.seed,
                   args.long_seq, args.drift_steps, args.quick, overwrite=args.overwrite)
    print(console(report))
    return 0 if report["pass"] else 1
