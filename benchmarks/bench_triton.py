"""Generation through the bundled Triton server against the onnxruntime session alone, in the same run.

    .venv/triton/bin/python benchmarks/bench_triton.py [--concurrency 1,4,16] [--tokens 200] [--json OUT.json]

Runs in the Triton environment (`make triton-env`): it exports the bundled model (fp32), writes a repository
with `lru_deploy.serve.write_repository` (--max-batch 16, one instance), starts `TritonServer` on free loopback
ports and, for each concurrency c:

- triton: c threads, one HTTP connection and one sequence each: a prompt of --prompt tokens (START), then
  --tokens - 1 steps, each a round trip carrying one token; the Python-backend model batches the steps that
  meet in one execution;
- onnxruntime: one OnnxruntimeSession generating the c sequences as one batch (prefill [c, prompt], then
  steps of batch c), in this process.

Sampling is top-k 40 at temperature 0.8 for both. Reported: generated tokens/s over all sequences (wall
time from the first prompt to the last token), and p50 / p99 of the per-token latency (one step round trip for
triton, one batched step call for onnxruntime). Both share the machine's cores: the server's stub runs its own
onnxruntime with default threads. Not part of `make test`; figures go to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def model_stats(url: str) -> tuple[int, int]:
    """(inference_count, execution_count) of the lru model, from Triton's statistics."""
    import urllib.request
    with urllib.request.urlopen(f"http://{url}/v2/models/lru/stats", timeout=10) as r:
        m = json.loads(r.read())["model_stats"][0]
    return int(m["inference_count"]), int(m["execution_count"])


def run_triton(url: str, c: int, prompt_len: int, tokens: int, seed: int) -> dict:
    from lru_deploy.errors import LRUDeployError
    from lru_deploy.runtime.base import sample
    from lru_deploy.serve.client import TritonClient
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 256, size=(c, prompt_len))
    lat: list = [[] for _ in range(c)]
    errors: list = []
    barrier = threading.Barrier(c + 1)

    def drive(i: int) -> None:
        r = np.random.default_rng(seed + i)
        with TritonClient(url) as cl:
            barrier.wait()
            try:
                out = cl.infer("lru", prompts[i:i + 1], sequence_id=10_000 * c + i, start=True)
                last = out[:, -1]
                for k in range(tokens - 1):
                    nxt = sample(last, 0.8, 40, r)
                    t0 = time.perf_counter()
                    out = cl.infer("lru", nxt[:, None], sequence_id=10_000 * c + i, end=k == tokens - 2)
                    lat[i].append(time.perf_counter() - t0)
                    last = out[:, -1]
            except LRUDeployError as e:  # reported after the join, not lost in the thread
                errors.append(e)

    before = model_stats(url)
    threads = [threading.Thread(target=drive, args=(i,)) for i in range(c)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    flat = [x for xs in lat for x in xs]
    after = model_stats(url)
    per_exec = (after[0] - before[0]) / max(1, after[1] - before[1])
    return {"backend": "triton", "requests_per_execution": per_exec, "concurrency": c, "tokens_per_s": c * tokens / wall, "p50_ms": pct(flat, 50),
            "p99_ms": pct(flat, 99), "wall_s": wall}


def run_local(sess, c: int, prompt_len: int, tokens: int, seed: int) -> dict:
    from lru_deploy.runtime.base import sample
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 256, size=(c, prompt_len))
    r = np.random.default_rng(seed)
    lat = []
    t0 = time.perf_counter()
    out, st = sess.prefill(prompts)
    last = out[:, -1]
    for _ in range(tokens - 1):
        nxt = sample(last, 0.8, 40, r)
        t1 = time.perf_counter()
        last, st = sess.step(nxt, st)
        lat.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    return {"backend": "onnxruntime", "concurrency": c, "tokens_per_s": c * tokens / wall, "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99), "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=200, help="generated tokens per sequence")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    ap.add_argument("--repeats", type=int, default=2, help="runs per backend and concurrency (best kept)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from lru_deploy import cli
    from lru_deploy.runtime import open_session
    from lru_deploy.serve.repository import write_repository
    from lru_deploy.serve.server import TritonServer
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        export = Path(tmp) / "export"
        if cli.main(["export", "default", "--out", str(export), "--precision", "fp32", "--no-validate"]) != 0:
            return 1
        repo = write_repository(export, Path(tmp) / "repo", max_batch=max(levels), instances=1).folder
        sess = open_session(export, backend="onnxruntime")
        server = TritonServer(repo, free_port(), free_port())
        t0 = time.perf_counter()
        server.start()
        startup = time.perf_counter() - t0
        records = []
        try:
            # one warm-up sequence on each side
            run_triton(server.url, 1, args.prompt, 20, 0)
            run_local(sess, 1, args.prompt, 20, 0)
            for c in levels:
                for backend in ("triton", "onnxruntime"):
                    runs = [run_triton(server.url, c, args.prompt, args.tokens, 1) if backend == "triton"
                            else run_local(sess, c, args.prompt, args.tokens, 1) for _ in range(args.repeats)]
                    records.append(max(runs, key=lambda r: r["tokens_per_s"]))
            rtt = []
            from lru_deploy.serve.client import TritonClient
            with TritonClient(server.url) as cl:
                for _ in range(200):
                    t1 = time.perf_counter()
                    cl.ready()
                    rtt.append(time.perf_counter() - t1)
        finally:
            server.stop()
    print(f"server startup (process start to models ready): {startup:.2f} s; HTTP round trip "
          f"(/v2/health/ready) p50 {pct(rtt, 50):.2f} ms, p99 {pct(rtt, 99):.2f} ms")
    print(f"{'backend':<12} {'conc':>4} {'tokens/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/exec':>8}")
    for r in records:
        per = f"{r['requests_per_execution']:.1f}" if "requests_per_execution" in r else "-"
        print(f"{r['backend']:<12} {r['concurrency']:>4} {r['tokens_per_s']:>10.0f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {per:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps({"startup_s": startup, "records": records,
                                               "rtt_p50_ms": pct(rtt, 50)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
