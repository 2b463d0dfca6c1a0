"""A client for an LRU served by Triton: the KServe v2 HTTP protocol with the standard library only.

    sess = RemoteSession("127.0.0.1:8000/lru")            # HOST:PORT[/MODEL], model lru by default
    for tok in sess.generate(encode("def "), 64, temperature=0.8, top_k=40, seed=0):
        ...                                               # int64 [1] per new token, as Session.generate

    client = TritonClient("127.0.0.1:8000")
    logits = client.infer("lru", ids[None], sequence_id=7, start=True)   # outputs [1, seq, vocab]

Every request of a sequence carries its sequence id; the first sets `sequence_start`, the last `sequence_end`.
Tensors travel in the binary extension (raw little-endian bytes after the JSON header), so float32 logits
come back bit for bit. Sampling is runtime.base.sample with the same random stream as Session.generate, so a
seed gives the same text as the local backends (the logits agree to float32 rounding). No tritonclient needed.
"""
from __future__ import annotations

import http.client
import json
import logging
import secrets
import socket
from typing import Iterator, Optional

import numpy as np

from ..errors import InputError
from . import ServeError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "lru"
_NP = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32, "UINT64": np.uint64,
       "BOOL": np.bool_}
_WIRE = {np.dtype(v): k for k, v in _NP.items()}
# Triton's own words when a request without START names a sequence it does not hold (released or never begun)
_RELEASED = ("must specify the START flag", "has no state in model")


class SequenceReleased(ServeError):
    """The server no longer holds the sequence (released for idleness, ended, or never started)."""


def parse_server(text: str) -> tuple[str, int, Optional[str]]:
    """'HOST:PORT[/MODEL]' (an http:// prefix is allowed) -> (host, port, model or None)."""
    rest = text.strip()
    if rest.startswith("http://"):
        rest = rest[len("http://"):]
    if rest.startswith("https://") or "://" in rest:
        raise InputError(f"--server {text!r}: only plain http://HOST:PORT is supported",
                         "pass the HTTP port of the server, e.g. --server 127.0.0.1:8000")
    hostport, _, model = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--server {text!r} is not HOST:PORT[/MODEL]",
                         "e.g. --server 127.0.0.1:8000 or --server 127.0.0.1:8000/lru")
    return host.strip("[]"), int(port), model.strip("/") or None


class TritonClient:
    """One persistent HTTP connection to a Triton server (not shared between threads: one client per thread)."""

    def __init__(self, server: str, timeout: float = 60.0):
        self.host, self.port, self.model = parse_server(server)
        self.url = f"http://{self.host}:{self.port}"
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, body: bytes = b"", headers: Optional[dict] = None):
        """(status, headers, body); a server that cannot be reached is one ServeError naming the URL. A GET is
        tried again once on a fresh connection (the server may have closed an idle one); a POST never is, since
        an inference request that reached the model has advanced its sequence."""
        for attempt in ((0, 1) if method == "GET" else (1,)):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body or None, headers=headers or {})
                r = self._conn.getresponse()
                return r.status, dict(r.getheaders()), r.read()
            except (ConnectionRefusedError, socket.gaierror) as e:
                self.close()
                raise ServeError(f"cannot reach the Triton server at {self.url}: "
                                 f"{e.strerror if getattr(e, 'strerror', None) else e}",
                                 f"start one (lru-deploy serve REPO --http-port {self.port}) or check --server "
                                 f"HOST:PORT") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt:
                    raise ServeError(f"the Triton server at {self.url} closed the connection ({e})",
                                     "is it still running? its log says why it stopped") from None
            except (socket.timeout, TimeoutError):
                self.close()
                raise ServeError(f"the Triton server at {self.url} did not answer within {self.timeout:g} s",
                                 "it may be overloaded or stuck; its log says more") from None
            except OSError as e:
                self.close()
                raise ServeError(f"cannot reach the Triton server at {self.url}: {e.strerror or e}",
                                 "check --server HOST:PORT and that the server runs") from None
            except http.client.HTTPException as e:
                self.close()
                raise ServeError(f"{self.url} did not answer as an HTTP server ({type(e).__name__})",
                                 "is --server the HTTP port of a Triton server (not its gRPC port)?") from None
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: Optional[dict] = None) -> tuple[int, dict]:
        status, _, data = self._request(method, path, json.dumps(body).encode() if body is not None else b"",
                                        {"Content-Type": "application/json"} if body is not None else None)
        try:
            obj = json.loads(data) if data else {}
        except ValueError:
            obj = {"error": data[:200].decode("utf-8", "replace")}
        return status, obj if isinstance(obj, dict) else {"items": obj}

    def ready(self) -> bool:
        status, _, _ = self._request("GET", "/v2/health/ready")
        return status == 200

    def models(self) -> list[dict]:
        """The repository index: [{"name", "version", "state"}, ...]."""
        _, obj = self._json("POST", "/v2/repository/index", {})
        return obj.get("items", [])

    def check_model(self, model: str) -> dict:
        """The model's metadata; a model that is not ready is one ServeError listing the ready ones."""
        status, _, _ = self._request("GET", f"/v2/models/{model}/ready")
        if status != 200:
            ready = [m["name"] for m in self.models() if m.get("state") == "READY"]
            raise ServeError(f"the Triton server at {self.url} has no ready model {model!r} (ready: "
                             f"{', '.join(ready) or 'none'})",
                             f"pass --server {self.host}:{self.port}/MODEL with one of those")
        _, meta = self._json("GET", f"/v2/models/{model}")
        return meta

    def infer(self, model: str, x: np.ndarray, *, sequence_id: int, start: bool = False, end: bool = False,
              output: str = "outputs") -> np.ndarray:
        """One request of a sequence: x [1, seq] (or [1, seq, d_input]) -> the model's `output`."""
        x = np.ascontiguousarray(x)
        wire = _WIRE.get(x.dtype)
        if wire is None:
            raise InputError(f"cannot send {x.dtype} data", "send int64 token ids or float32 inputs")
        name = "input_ids" if x.dtype.kind in "iu" else "inputs"
        data = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
        header = json.dumps({
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": wire,
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
            "parameters": {"sequence_id": int(sequence_id), "sequence_start": bool(start),
                           "sequence_end": bool(end)}}).encode()
        status, headers, body = self._request(
            "POST", f"/v2/models/{model}/infer", header + data,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
        n = int({k.lower(): v for k, v in headers.items()}.get("inference-header-content-length", len(body)))
        try:
            meta = json.loads(body[:n])
        except ValueError:
            meta = {"error": body[:200].decode("utf-8", "replace")}
        if status != 200 or "error" in meta:
            msg = str(meta.get("error", f"HTTP {status}"))
            if any(s in msg for s in _RELEASED):
                raise SequenceReleased(
                    f"the Triton server at {self.url} no longer holds sequence {sequence_id} of model {model}: "
                    f"it sat idle longer than the model's max_sequence_idle_microseconds and was released, or it "
                    f"ended or never started ({msg})",
                    "start the sequence again (sequence_start); a slow client needs a longer "
                    "`lru-deploy triton --idle-timeout`")
            raise ServeError(f"model {model} at {self.url} refused the request: {msg}",
                             "the model's input contract is in the repository's README.md")
        offset = n
        for out in meta.get("outputs", []):
            size = int(out.get("parameters", {}).get("binary_data_size", 0))
            if out["name"] == output:
                dtype = np.dtype(_NP[out["datatype"]]).newbyteorder("<")
                arr = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(out["shape"])
                return arr.astype(arr.dtype.newbyteorder("="))
            offset += size
        raise ServeError(f"model {model} at {self.url} answered without {output!r}",
                         "is the server's Python backend running with numpy >= 2? its stub needs numpy < 2")


class RemoteSession:
    """Generation through a Triton server, with Session.generate's signature, sampling and random stream."""

    backend = "triton"

    def __init__(self, server: str, model: Optional[str] = None, timeout: float = 60.0):
        self.server = server
        host, port, named = parse_server(server)
        self.model = model or named or DEFAULT_MODEL
        self.timeout = timeout
        with TritonClient(server, timeout) as c:
            c.check_model(self.model)
        self.url = f"http://{host}:{port}"
        self.backend = f"triton {self.url}/{self.model}"

    def generate(self, prompt_ids, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0, sequence_id: Optional[int] = None) -> Iterator[np.ndarray]:
        """Sample continuations of one prompt (int64 [seq] or [1, seq]); yields int64 [1] per new token."""
        from ..runtime.base import sample
        ids = np.asarray(prompt_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
            raise InputError(f"a served generation takes one prompt [1, seq] with seq >= 1, got shape "
                             f"{list(ids.shape)}", "run one generation per prompt (they may run concurrently)")
        seq_id = sequence_id if sequence_id is not None else secrets.randbits(63) or 1
        rng = np.random.default_rng(seed)
        client = TritonClient(self.server, self.timeout)
        ended = max_new_tokens <= 1
        nxt = None
        try:
            out = client.infer(self.model, ids, sequence_id=seq_id, start=True, end=ended)
            last = out[:, -1] if out.ndim == 3 else out
            for i in range(max_new_tokens):
                nxt = sample(last, temperature, top_k, rng)
                yield nxt
                if i + 1 < max_new_tokens:
                    end = i + 2 >= max_new_tokens  # the request whose logits give the last token ends it
                    out = client.infer(self.model, nxt[:, None], sequence_id=seq_id, end=end)
                    ended = end
                    last = out[:, -1] if out.ndim == 3 else out
        finally:
            client.close()
            if not ended and nxt is not None:
                self._end(seq_id, nxt)

    def _end(self, seq_id: int, token: np.ndarray) -> None:
        """Best effort, after an interrupted generation: end the sequence so its slot is free before the idle
        timeout."""
        try:
            with TritonClient(self.server, timeout=5.0) as c:
                c.infer(self.model, token[:, None], sequence_id=seq_id, end=True)
        except ServeError as e:
            log.debug("could not end sequence %d: %s", seq_id, e.message)


def remote_session(args) -> RemoteSession:
    """`lru-deploy generate --server`: the session, refusing the options that pick a local backend."""
    local = [f for f, v in (("--backend", args.backend), ("--precision", args.precision)) if v]
    if local:
        raise InputError(f"{' and '.join(local)} choose a local backend; with --server the server's model runs",
                         f"drop {' and '.join(local)}, or drop --server to run locally")
    return RemoteSession(args.server)
