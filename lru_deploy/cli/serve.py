"""`lru-deploy serve`."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("serve", help="run the bundled Triton server on a repository (127.0.0.1, foreground)",
                       description="Run the tritonserver that the nvidia-pytriton wheel bundles on 127.0.0.1 with "
                                   "the repository's Python-backend models, until Ctrl-C or SIGTERM. Needs an "
                                   "environment with nvidia-pytriton and numpy<2 (make triton-env).")
    s.add_argument("repo", metavar="REPO", help="the folder that `lru-deploy triton` wrote")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from ..serve.server import serve_forever
    return serve_forever(args.repo, args.http_port, args.grpc_port, verbose=args.verbose)
