"""`lru-deploy lint`."""
from __future__ import annotations

import argparse
import json

from ..lint import DEFAULT_TRT, TRT_RANGE, _ver, lint_export


def _parse_trt(s: str) -> tuple[int, int]:
    try:
        major, minor = (int(x) for x in s.split(".")[:2])
    except ValueError:  # also fewer than two parts
        raise argparse.ArgumentTypeError(f"want MAJOR.MINOR such as 10.0, got {s!r}") from None
    return major, minor


def register(subparsers) -> None:
    s = subparsers.add_parser("lint", help="check exported ONNX graphs for TensorRT readiness",
                              description="Lint every <precision>/{prefill,step}.onnx under EXPORT_DIR (or one .onnx "
                                          "file): opset range, TensorRT 10's operator table, forbidden ops, "
                                          "float64/complex and stray int64 tensors, dynamic-shape hazards, and the "
                                          "I/O contract when manifest.json is present. Exit 1 on any error.")
    s.add_argument("export_dir", metavar="EXPORT_DIR", help="export folder or .onnx file")
    s.add_argument("--trt", type=_parse_trt, default=DEFAULT_TRT, metavar="MAJOR.MINOR",
                   help=f"oldest TensorRT the graphs must parse on, {_ver(TRT_RANGE[0])} to {_ver(TRT_RANGE[1])} "
                        f"(default {_ver(DEFAULT_TRT)})")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_lint)


def cmd_lint(args) -> int:
    report = lint_export(args.export_dir, trt_version=args.trt)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        print(report.summary())
    return 0 if report.ok else 1
