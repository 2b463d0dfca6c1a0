"""Serving with NVIDIA Triton Inference Server: model repositories, the bundled server, a client.

- `repository.write_repository` (`lru-deploy triton`): a model repository from an export or engine folder, every
  config.pbtxt checked against Triton's schema (`config`);
- `python_model`: the Python-backend model that runs lru-deploy's runtime inside Triton, state per sequence;
- `server.TritonServer` / `serve_forever` (`lru-deploy serve`): the tritonserver of the nvidia-pytriton wheel;
- `client.TritonClient` / `RemoteSession` (`lru-deploy generate --server`): KServe v2 over HTTP, standard
  library only.

tritonclient (the schema) and nvidia-pytriton (the server) are imported only where they are used. This module
imports nothing heavy, so the client side needs neither.
"""
from __future__ import annotations

from ..errors import LRUDeployError


class ServeError(LRUDeployError):
    """The server cannot start, stopped on its own, or cannot be reached; a request it refused."""
