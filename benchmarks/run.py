"""Prefill and step speed of the exported graphs against their floors and the PyTorch reference.

    .venv/bin/python benchmarks/run.py [--quick] [--json OUT.json] [--threads 2]

Side by side in one run, per model and shape: the PyTorch reference in its fastest float32 form (LRUModel
float32, mode='parallel', torch.no_grad; model.step for the step), the exported graphs in ONNX Runtime (fp32, and
fp16 outside --quick), and the floors in ONNX Runtime (benchmarks/floors.py: the same
projections and the rest of the block, the scan removed). The runs being compared alternate, repetition by
repetition, and each figure is the minimum, so a burst of load from other jobs hits every backend alike.

Peak memory: each measurement runs once more in a fresh worker process (forked from a server that has only
imported the libraries), which reports its peak RSS (VmHWM) and the growth of RSS during the run beyond its
outputs; peaks never mix between measurements.

Models: "lru256", one layer, d_model = d_hidden = 256, token inputs (vocab 256), d_output 256, init_parameters(seed 0)
(the model the targets name); "bundled", lru_deploy.checkpoints.default_model_dir(), skipped with a message when
absent. Each is exported with lru_deploy.export.export_model (validated, linted; the export time is recorded).

Benchmarks never fail: a missed target is printed as MISS, the exit status stays 0. Not part of `make test`.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUICK = {"prefill": [(1, 1024), (1, 4096), (8, 1024)], "step": [1, 8]}
FULL = {"prefill": [(b, s) for b in (1, 8) for s in (1024, 4096, 16384, 65536)], "step": [1, 8]}
STEPS = 200  # consecutive steps per timed step run (state carried)
SPLIT = 4096  # prefill longer than this is also timed as calls of SPLIT positions with the state carried
PAUSE = 0.05  # seconds before each timed run: lets the previous backend's spinning threads go to sleep
TARGETS = {"floor_ratio": 1.6, "torch_prefill": 2.5, "torch_step": 3.0, "seq_scaling": 17.0}


# ---- runners: one object per backend, prefill(feeds) and step(feeds) -> next step feeds -----------------------

class TorchRunner:
    def __init__(self, model_dir, threads: int):
        import torch
        from lru_deploy.checkpoints import load_model
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_model(model_dir).eval()

    def _t(self, feeds):
        return {k: self.torch.from_numpy(v) for k, v in feeds.items()}

    def prefill(self, feeds):
        t = self._t(feeds)
        x = t.get("input_ids", t.get("inputs"))
        with self.torch.no_grad():
            return self.model(x, t["state"], t.get("pool_sum"), t.get("pool_count"), mode="parallel")

    def steps(self, xs, feeds):
        t = self._t(feeds)
        state, ps, pc = t["state"], t.get("pool_sum"), t.get("pool_count")
        with self.torch.no_grad():
            for x in xs:
                r = self.model.step(self.torch.from_numpy(x), state, ps, pc)
                state, ps, pc = r.state, r.pool_sum, r.pool_count
        return r


class OrtRunner:
    def __init__(self, path, precision: str, threads: int, split: int | None = None):
        from lru_deploy.runtime.onnxruntime import ort_session
        self.sess, self.mode = ort_session(path, precision, threads)
        self.names = [o.name for o in self.sess.get_outputs()]
        self.split = split

    def prefill(self, feeds):
        if not self.split:
            return self.sess.run(None, feeds)
        # What a runtime that splits long prompts does: calls of `split` positions, the state carried (exact).
        xname = "input_ids" if "input_ids" in feeds else "inputs"
        x, feeds, outs = feeds[xname], dict(feeds), []
        for start in range(0, x.shape[1], self.split):
            feeds[xname] = x[:, start:start + self.split]
            out = dict(zip(self.names, self.sess.run(None, feeds)))
            outs.append(out["outputs"])
            feeds["state"] = out["state_out"]
            if "pool_sum" in feeds:
                feeds["pool_sum"], feeds["pool_count"] = out["pool_sum_out"], out["pool_count_out"]
        out["outputs"] = np.concatenate(outs, axis=1) if outs[0].ndim == 3 else outs[-1]
        return out

    def steps(self, xs, feeds):
        feeds = dict(feeds)
        xname = "input_ids" if "input_ids" in feeds else "inputs"
        for x in xs:
            feeds[xname] = x
            out = dict(zip(self.names, self.sess.run(None, feeds)))
            feeds["state"] = out["state_out"]
            if "pool_sum" in feeds:
                feeds["pool_sum"], feeds["pool_count"] = out["pool_sum_out"], out["pool_count_out"]
        return out


def make_runner(spec: dict):
    if spec["backend"] == "torch":
        return TorchRunner(spec["model_dir"], spec["threads"])
    return OrtRunner(spec["path"], spec["precision"], spec["threads"], spec.get("split"))


def make_feeds(cfg_dict: dict, kind: str, batch: int, seq: int, seed: int = 0):
    """Contract-named numpy feeds (zero state); for the step, also the inputs of `STEPS` consecutive steps."""
    from lru_deploy.cases import random_inputs
    from lru_deploy.model import LRUConfig
    cfg = LRUConfig.from_dict(cfg_dict)
    rng = np.random.default_rng(seed)
    if kind == "prefill":
        return random_inputs(cfg, batch, seq, False, rng), None
    feeds = random_inputs(cfg, batch, None, False, rng)
    xname = "input_ids" if cfg.tokens else "inputs"
    return feeds, [random_inputs(cfg, batch, None, False, rng)[xname] for _ in range(STEPS)]


def call(runner, kind, feeds, xs):
    return runner.prefill(feeds) if kind == "prefill" else runner.steps(xs, feeds)


# ---- peak memory, in a fresh worker per measurement ------------------------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_worker(spec: dict) -> dict:
    """Runs one measurement once in this (fresh) process: peak RSS and the RSS growth of the run."""
    runner = make_runner(spec)
    feeds, xs = make_feeds(spec["config"], spec["kind"], spec["batch"], spec["seq"])
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = call(runner, spec["kind"], feeds, xs)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    outs = out.values() if isinstance(out, dict) else out
    out_bytes = sum(np.asarray(o).nbytes for o in outs if o is not None)
    return {"peak_rss_mb": peak / 1024, "run_mb": (peak - before) / 1024 - out_bytes / 2**20,
            "output_mb": out_bytes / 2**20, "seconds": seconds}


# ---- timing, interleaved ---------------------------------------------------------------------------------------

def interleaved(fns: dict, budget_s: float, max_reps: int, min_reps: int = 3) -> dict:
    """Warm each up once, then alternate them; returns name -> (best seconds, reps).

    Each backend gets its own share of the budget (a slow one does not starve the fast ones of repetitions)
    and at least `min_reps` timed runs, unless its warm-up alone took more than three shares (then the
    warm-up is the one measurement: allocation is a small part of such a run).
    """
    first = {}
    for k, f in fns.items():
        time.sleep(PAUSE)
        t0 = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t0
    share = budget_s / len(fns)
    reps = {k: 0 if t > 3 * share else int(max(min_reps, min(max_reps, share / max(t, 1e-9))))
            for k, t in first.items()}
    best = {k: (first[k] if reps[k] == 0 else float("inf")) for k in fns}
    for r in range(max(reps.values())):
        for k, f in fns.items():
            if r < reps[k]:
                time.sleep(PAUSE)
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
    return {k: (best[k], max(reps[k], 1)) for k in fns}


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


# ---- setup: models, exports, floors ----------------------------------------------------------------------------

def lru256_dir(root: Path) -> Path:
    from lru_deploy.checkpoints import save_model
    from lru_deploy.model import LRUConfig, LRUModel, init_parameters
    cfg = LRUConfig(vocab_size=256, d_model=256, d_hidden=256, n_layers=1, d_output=256)
    return save_model(init_parameters(LRUModel(cfg), seed=0), root / "lru256")


def prepare(name: str, model_dir: Path, root: Path, precisions, chunk=None) -> dict:
    """Export (timed), and write the floors beside it."""
    import onnx
    from lru_deploy.checkpoints import load_model
    from lru_deploy.export import ExportOptions, export_model
    from lru_deploy.model import gold
    from floors import floor_prefill, floor_step
    t0 = time.perf_counter()
    out = export_model(model_dir, root / "export" / name,
                       ExportOptions(precisions=precisions, **({"chunk": chunk} if chunk else {})))
    export_s = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    m64 = gold(load_model(model_dir))
    floor = root / "floor" / name
    floor.mkdir(parents=True)
    onnx.save(floor_prefill(m64, man["chunk"], man["max_seq"], man["opset"], man["prefill_outputs"]),
              str(floor / "prefill.onnx"))
    onnx.save(floor_step(m64, man["opset"]), str(floor / "step.onnx"))
    model = {"name": name, "model_dir": str(model_dir), "export": out, "floor": floor, "manifest": man,
             "export_seconds": export_s}
    model["paper"] = paper_figures(model)
    return model


def paper_figures(model: dict) -> dict:
    """For the GPU targets (on paper): FLOPs per position and weight bytes read per step."""
    import onnx
    cfg, T = model["manifest"]["config"], model["manifest"]["chunk"]
    H, N, L, dout = cfg["d_model"], cfg["d_hidden"], cfg["n_layers"], cfg["d_output"]
    enc = 0 if cfg.get("vocab_size") else 2 * cfg["d_input"] * H
    layer = 8 * H * N + 4 * H * H + (2 * H * H if cfg["skip"] == "full" else 0)  # B, C, GLU (+ full skip)
    floor = enc + L * layer + 2 * H * dout  # decoder at every position (pooling none, outputs all)
    scan = L * N * (8 * T + 8 + 8)  # Toeplitz with carry columns, chunk-end rows; the cross-chunk scan is ~0
    out = {"floor_flops_per_position": floor, "scan_flops_per_position": scan}
    for p in model["manifest"]["precisions"]:
        m = onnx.load(str(model["export"] / p / "step.onnx"))
        table = sum(np.prod(t.dims) * 4 for t in m.graph.initializer if t.name.startswith("embedding"))
        total = sum(onnx.numpy_helper.to_array(t).nbytes for t in m.graph.initializer)
        out[f"step_weight_bytes_{p}"] = int(total - table + (H * 4 if table else 0))  # one embedding row
    return out


def backends(model: dict, kind: str, seq, precisions, threads: int) -> dict:
    base = {"config": model["manifest"]["config"], "threads": threads, "kind": kind}
    out = {"torch": dict(base, backend="torch", precision="fp32", model_dir=model["model_dir"])}
    for p in precisions:
        out[f"onnxruntime-{p}"] = dict(base, backend="onnxruntime", precision=p,
                                       path=str(model["export"] / p / f"{kind}.onnx"))
    if kind == "prefill" and seq > SPLIT:
        out["onnxruntime-fp32-split"] = dict(out["onnxruntime-fp32"], split=SPLIT)
    out["floor"] = dict(base, backend="floor", precision="fp32", path=str(model["floor"] / f"{kind}.onnx"))
    return out


# ---- one shape: memory workers, then interleaved timing ----------------------------------------------------------

def measure(model: dict, kind: str, batch: int, seq, precisions, args, pool) -> list[dict]:
    specs = backends(model, kind, seq, precisions, args.threads)
    for s in specs.values():
        s.update(batch=batch, seq=seq or 1)
    mem = {}
    if not args.no_memory:
        for k, s in specs.items():
            mem[k] = pool.apply(memory_worker, (s,))
    need = sum(m["run_mb"] + m["output_mb"] for m in mem.values()) * 1.3
    together = need < 0.6 * mem_available_mb()
    feeds, xs = make_feeds(model["manifest"]["config"], kind, batch, seq or 1)
    budget = args.budget / (1 if together else len(specs))
    times = {}
    groups = [list(specs)] if together else [[k] for k in specs]
    for group in groups:
        runners = {k: make_runner(specs[k]) for k in group}
        fns = {k: (lambda r=r: call(r, kind, feeds, xs)) for k, r in runners.items()}
        times.update(interleaved(fns, budget, args.max_reps))
        del runners, fns
        gc.collect()
    records = []
    for k, s in specs.items():
        sec, reps = times[k]
        tokens = batch * (seq if kind == "prefill" else STEPS)
        rec = {"kind": kind, "model": model["name"], "backend": s["backend"], "precision": s["precision"],
               "split": s.get("split"),
               "batch": batch, "seq": seq, "tokens_per_s": tokens / sec, "us_per_token": sec / tokens * 1e6,
               "us_per_call": sec / (1 if kind == "prefill" else STEPS) * 1e6, "reps": reps,
               "interleaved": together, "threads": args.threads}
        if k in mem:
            rec.update(peak_rss_mb=round(mem[k]["peak_rss_mb"], 1), run_rss_mb=round(mem[k]["run_mb"], 1),
                       output_mb=round(mem[k]["output_mb"], 1))
        else:
            rec["peak_rss_mb"] = None
        records.append(rec)
    return records


# ---- report ----------------------------------------------------------------------------------------------------

def _find(records, **kw):
    kw.setdefault("split", None)
    return next((r for r in records if all(r.get(k) == v for k, v in kw.items())), None)


def table(records: list[dict]) -> str:
    lines = []
    keys = sorted({(r["model"], r["kind"], r["batch"], r["seq"] or 0) for r in records},
                  key=lambda k: (k[0], k[1] != "prefill", k[2], k[3]))
    cols = (("torch", "fp32", None), ("onnxruntime", "fp32", None), ("onnxruntime", "fp16", None),
            ("onnxruntime", "fp32", SPLIT), ("floor", "fp32", None))
    hdr = (f"{'model':8} {'kind':7} {'b':>2} {'seq':>6} | {'torch':>9} {'ort fp32':>9} {'ort fp16':>9} "
           f"{'ort split':>9} {'floor':>9} | {'ort/floor':>9} {'x torch':>7} | {'peak RSS MB torch/ort/floor':>27}")
    lines += [hdr, "-" * len(hdr)]
    for model, kind, b, s in keys:
        rs = {(r["backend"], r["precision"], r.get("split")): r for r in records
              if (r["model"], r["kind"], r["batch"], r["seq"] or 0) == (model, kind, b, s)}
        t, o, h, sp, f = (rs.get(k) for k in cols)
        if kind == "prefill":
            fmt = lambda r: f"{r['tokens_per_s']:9.0f}" if r else f"{'-':>9}"  # noqa: E731
        else:
            fmt = lambda r: f"{r['us_per_call']:7.1f}us" if r else f"{'-':>9}"  # noqa: E731
        ratio = f"{o['us_per_token'] / f['us_per_token']:9.2f}" if o and f else f"{'-':>9}"
        speed = f"{t['us_per_token'] / o['us_per_token']:7.2f}" if o and t else f"{'-':>7}"
        mem = "/".join(f"{r['peak_rss_mb']:.0f}" if r and r.get("peak_rss_mb") else "-" for r in (t, o, f))
        lines.append(f"{model:8} {kind:7} {b:2d} {s or '':>6} | {fmt(t)} {fmt(o)} {fmt(h)} {fmt(sp)} {fmt(f)} | "
                     f"{ratio} {speed} | {mem:>27}")
    lines.append(f"prefill columns: tokens/s; step columns: microseconds per step call (batch tokens); ort split: "
                 f"the same positions as calls of {SPLIT} with the state carried; ort/floor: time ratio; "
                 f"x torch: ONNX Runtime fp32 speed-up over PyTorch")
    return "\n".join(lines)


def targets(records: list[dict], model: str = "lru256") -> list[tuple[str, float | None, str, bool | None]]:
    """(target, measured, bound, pass) for the issue's CPU targets on the 256 model."""
    out = []
    ort = dict(model=model, backend="onnxruntime", precision="fp32")
    o = _find(records, kind="prefill", batch=1, seq=4096, **ort)
    f = _find(records, model=model, kind="prefill", backend="floor", batch=1, seq=4096)
    t = _find(records, model=model, kind="prefill", backend="torch", batch=1, seq=4096)
    r = o["us_per_token"] / f["us_per_token"] if o and f else None
    out.append(("prefill time / projections floor, b1 s4096", r, f"<= {TARGETS['floor_ratio']}",
                r is not None and r <= TARGETS["floor_ratio"]))
    r = t["us_per_token"] / o["us_per_token"] if o and t else None
    out.append(("prefill throughput / PyTorch, b1 s4096", r, f">= {TARGETS['torch_prefill']}",
                r is not None and r >= TARGETS["torch_prefill"]))
    ratios = []
    for x in records:
        if all(x.get(k) == v for k, v in ort.items()) and x["kind"] == "prefill" and x.get("split") is None:
            tt = _find(records, model=model, kind="prefill", backend="torch", batch=x["batch"], seq=x["seq"])
            if tt:
                ratios.append(tt["us_per_token"] / x["us_per_token"])
    r = min(ratios) if ratios else None
    out.append(("prefill throughput / PyTorch, worst shape", r, f">= {TARGETS['torch_prefill']}",
                r is not None and r >= TARGETS["torch_prefill"]))
    o = _find(records, kind="step", batch=1, **ort)
    t = _find(records, model=model, kind="step", backend="torch", batch=1)
    r = t["us_per_call"] / o["us_per_call"] if o and t else None
    out.append(("step speed-up over PyTorch, b1", r, f">= {TARGETS['torch_step']}",
                r is not None and r >= TARGETS["torch_step"]))
    for b in (1, 8):
        lo = _find(records, kind="prefill", batch=b, seq=4096, **ort)
        for split, label in ((None, "one call"), (SPLIT, f"calls of {SPLIT}")):
            hi = _find(records, kind="prefill", batch=b, seq=65536, split=split, **ort)
            r = hi["us_per_call"] / lo["us_per_call"] if lo and hi else None
            out.append((f"time(seq 65536) / time(seq 4096), b{b}, {label}", r, f"<= {TARGETS['seq_scaling']:.0f}",
                        r is not None and r <= TARGETS["seq_scaling"]))
        fl = [_find(records, model=model, kind="prefill", backend="floor", batch=b, seq=s) for s in (4096, 65536)]
        if all(fl):
            out.append((f"  (floor's own: time(65536) / time(4096), b{b})", fl[1]["us_per_call"] /
                        fl[0]["us_per_call"], "info", None))
    return out


def summary(records: list[dict], models: list[dict]) -> str:
    lines = ["", "Targets (256 model, ONNX Runtime fp32, CPU):"]
    for name, r, bound, ok in targets(records):
        verdict = "not measured" if r is None else ("" if ok is None else ("pass" if ok else "MISS"))
        lines.append(f"  {name:56} {'-' if r is None else f'{r:.2f}':>7}  {bound:8} {verdict}")
    lines.append("")
    for m in models:
        lines.append(f"export time {m['name']}: {m['export_seconds']:.1f} s (precisions "
                     f"{', '.join(m['manifest']['precisions'])}, validated and linted; chunk {m['manifest']['chunk']})")
    lines.append("")
    for m in models:
        f = m["paper"]
        wb = ", ".join(f"{k.rsplit('_', 1)[1]} {v / 1e6:.2f} MB" for k, v in f.items() if k.startswith("step_w"))
        lines.append(f"GPU paper figures {m['name']}: {f['floor_flops_per_position'] / 1e6:.3f} MFLOP per position "
                     f"in the projections floor, +{f['scan_flops_per_position'] / 1e6:.3f} for the chunked scan; "
                     f"weights read per step (batch 1): {wb}")
    for r in records:
        if r["backend"] == "onnxruntime" and r["kind"] == "prefill" and r.get("split") is None and \
                r.get("run_rss_mb") is not None and r["seq"] == 65536:
            lines.append(f"memory {r['model']} {r['precision']} prefill b{r['batch']} s65536: peak RSS "
                         f"{r['peak_rss_mb']:.0f} MB; the run grew RSS by {r['run_rss_mb']:.0f} MB beyond its "
                         f"inputs and its {r['output_mb']:.0f} MB of outputs")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset of shapes that finishes in under 2 minutes")
    ap.add_argument("--json", help="write one record per measurement to this file")
    ap.add_argument("--threads", type=int, default=2, help="threads for ONNX Runtime and PyTorch (default 2)")
    ap.add_argument("--models", default="lru256,bundled", help="comma-separated: lru256, bundled")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed runs per shape (default 2, 10 full)")
    ap.add_argument("--max-reps", type=int, default=30, help="most timed repetitions per backend and shape")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS workers")
    ap.add_argument("--chunk", type=int, default=None, help="export with this scan chunk (default: export's)")
    args = ap.parse_args(argv)
    args.budget = args.budget or (2.0 if args.quick else 10.0)
    plan = QUICK if args.quick else FULL
    precisions = ("fp32",) if args.quick else ("fp32", "fp16")
    import logging
    logging.basicConfig(level=logging.WARNING)
    from lru_deploy.checkpoints import default_model_dir

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "torch", "onnxruntime", "onnx", "lru_deploy.export"])
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lru_bench_") as tmp, ctx.Pool(1, maxtasksperchild=1) as pool:
        root = Path(tmp)
        models = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "lru256":
                models.append(prepare("lru256", lru256_dir(root), root, precisions, args.chunk))
            elif name == "bundled":
                d = default_model_dir()
                if (d / "config.json").exists():
                    models.append(prepare("bundled", d, root, precisions, args.chunk))
                else:
                    print(f"bundled model not found at {d}: skipped")
            else:
                print(f"unknown model {name!r}: skipped (choose lru256, bundled)")
        records = []
        for m in models:
            print(f"{m['name']}: exported in {m['export_seconds']:.1f} s; measuring", flush=True)
            for b, s in plan["prefill"]:
                records += measure(m, "prefill", b, s, precisions, args, pool)
                print(f"  prefill b{b} s{s} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
            for b in plan["step"]:
                records += measure(m, "step", b, None, precisions, args, pool)
                print(f"  step b{b} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    print()
    print(table(records))
    print(summary(records, models))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s, {args.threads} threads")
    if args.json:
        meta = {"export_seconds": {m["name"]: round(m["export_seconds"], 2) for m in models},
                "paper": {m["name"]: {k: int(v) for k, v in m["paper"].items()} for m in models},
                "targets": [{"target": n, "measured": r, "bound": b, "pass": ok} for n, r, b, ok in targets(records)]}
        Path(args.json).write_text(json.dumps({"records": records, **meta}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
