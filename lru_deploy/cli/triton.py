"""`lru-deploy triton`."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("triton", help="write a Triton Inference Server model repository",
                       description="Write a Triton model repository from an export folder (a Python-backend model "
                                   "running lru-deploy's onnxruntime session, and the prefill graph for Triton's "
                                   "onnxruntime backend) or an engine folder (the same with TensorRT). Every "
                                   "config.pbtxt is checked against Triton's schema (tritonclient) before the "
                                   "folder is renamed into place.")
    s.add_argument("source", metavar="EXPORT_OR_ENGINE_DIR", help="export folder or engine folder")
    s.add_argument("--out", required=True, help="repository folder to write")
    s.add_argument("--name", default="lru", help="model name (default lru; the graph flavour adds _onnx or _trt)")
    s.add_argument("--max-batch", type=int, default=8,
                   help="max_batch_size: live sequences per instance, batched together (default 8)")
    s.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    s.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="Triton releases a sequence idle this long (default 60)")
    s.add_argument("--precision", default=None, help="export folders: which precision (default fp32)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds files that `triton` did not write")
    s.set_defaults(func=cmd_triton)


def cmd_triton(args) -> int:
    from ..serve.repository import write_repository
    repo = write_repository(args.source, args.out, name=args.name, max_batch=args.max_batch,
                            instances=args.instances, idle_s=args.idle_timeout, precision=args.precision,
                            overwrite=args.overwrite)
    print(f"wrote {repo.folder}: " + ", ".join(f"{m} ({b} backend)" for m, b in repo.models.items()))
    print(f"serve it: lru-deploy serve {repo.folder}   (or NVIDIA's container: {repo.folder}/README.md)")
    return 0
