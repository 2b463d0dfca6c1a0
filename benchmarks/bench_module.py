"""export_module against `lru-deploy export` on the native layout: prefill time of the two graphs, same run.

    .venv/bin/python benchmarks/bench_module.py [--quick] [--threads 2] [--json OUT.json]

The native model ("lru256": one layer, d_model = d_hidden = 256, vocab 256, init_parameters(seed 0); and the
bundled 4-layer model) is exported by lru_deploy.export.export_model; `NativeLayout`, the same network written
as a plain nn.Module with lru_deploy.nn.LRU and loaded with the same state dict, by lru_deploy.export_module.
Both fp32 prefill graphs run in ONNX Runtime (export.ort_session's options) on the same feeds, alternating
repetition by repetition; each figure is the minimum. The outputs of the two graphs are compared too. The graph
summary (node counts by op type) says what PyTorch's exporter contributes. Never fails: a missed target prints
MISS, the exit status stays 0.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lru_deploy import export_module  # noqa: E402
from lru_deploy.cases import rel_l2  # noqa: E402
from lru_deploy.nn import LRU  # noqa: E402

TARGET = 1.10  # export_module's prefill time / export's, at most


class NativeBlock(nn.Module):
    def __init__(self, d: int, n: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=eps)
        self.lru = LRU(d, n)
        self.out1 = nn.Linear(d, d)
        self.out2 = nn.Linear(d, d)

    def forward(self, u):
        x = F.gelu(self.lru(self.norm(u)))
        return u + self.out1(x) * torch.sigmoid(self.out2(x))


class NativeLayout(nn.Module):
    """LRUModel's default network (embedding, pre-LayerNorm blocks of LRU, exact GELU, GLU, residual; decoder)
    as a user would write it; its state dict has the native model's keys."""

    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(NativeBlock(cfg.d_model, cfg.d_hidden, cfg.norm_eps) for _ in range(cfg.n_layers))
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)

    def forward(self, ids):
        u = self.embedding(ids)
        for b in self.layers:
            u = b(u)
        return self.decoder(u)


def ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def prepare(name: str, native, root: Path) -> dict:
    from lru_deploy.checkpoints import save_model
    from lru_deploy.export import ExportOptions, export_model
    mdir = save_model(native, root / name / "model")
    t0 = time.perf_counter()
    nat = export_model(mdir, root / name / "native", ExportOptions(precisions=("fp32",)))
    t_nat = time.perf_counter() - t0
    mod = NativeLayout(native.cfg)
    mod.load_state_dict(native.state_dict())
    mod.eval()
    t0 = time.perf_counter()
    ex = export_module(mod, (torch.randint(0, native.cfg.vocab_size, (2, 40)),), root / name / "module",
                       precision=("fp32",))
    t_mod = time.perf_counter() - t0
    return {"name": name, "cfg": native.cfg, "native": nat, "module": ex, "export_s": (t_nat, t_mod),
            "state_names": [t for t in json.loads((ex / "manifest.json").read_text())["contract"]["prefill"]["inputs"]]}


def run(model: dict, shapes, threads: int, budget: float) -> list[dict]:
    from lru_deploy.runtime.onnxruntime import ort_session
    cfg = model["cfg"]
    sess = {k: ort_session(model[k] / "fp32" / "prefill.onnx", "fp32", threads=threads)[0] for k in ("native", "module")}
    rows = []
    for batch, seq in shapes:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int64)
        st = rng.normal(scale=0.5, size=(batch, cfg.n_layers, 2, cfg.d_hidden)).astype(np.float32)
        feeds = {"native": {"input_ids": ids, "state": st},
                 "module": {"input_ids": ids, **{f"state.layers.{i}.lru": np.ascontiguousarray(st[:, i])
                                                for i in range(cfg.n_layers)}}}
        outs = {k: sess[k].run(["outputs"], feeds[k])[0] for k in sess}  # warm-up, and the outputs compared
        best = {k: float("inf") for k in sess}
        t_end, reps = time.perf_counter() + budget, 0
        while reps < 3 or (time.perf_counter() < t_end and reps < 50):
            for k in (("native", "module") if reps % 2 == 0 else ("module", "native")):
                time.sleep(0.05)
                t0 = time.perf_counter()
                sess[k].run(["outputs"], feeds[k])
                best[k] = min(best[k], time.perf_counter() - t0)
            reps += 1
        ratio = best["module"] / best["native"]
        rows.append({"model": model["name"], "batch": batch, "seq": seq, "native_ms": best["native"] * 1e3,
                     "module_ms": best["module"] * 1e3, "ratio": ratio, "reps": reps,
                     "rel_l2_module_vs_native": rel_l2(outs["module"], outs["native"]),
                     "ok": ratio <= TARGET})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from lru_deploy.checkpoints import default_model_dir, load_model
    from lru_deploy.model import LRUConfig, LRUModel, init_parameters
    torch.manual_seed(0)
    shapes = [(1, 4096), (1, 1024)] if args.quick else [(1, 1024), (1, 4096), (8, 1024), (1, 16384)]
    natives = [("lru256", init_parameters(LRUModel(LRUConfig(vocab_size=256, d_model=256, d_hidden=256, n_layers=1,
                                                             d_output=256)), seed=0))]
    if not args.quick and default_model_dir().is_dir():
        natives.append(("bundled", load_model(default_model_dir())))
    rows, graphs = [], {}
    with tempfile.TemporaryDirectory() as td:
        for name, native in natives:
            m = prepare(name, copy.deepcopy(native), Path(td))
            graphs[name] = {k: dict(ops(m[k] / "fp32" / "prefill.onnx")) for k in ("native", "module")}
            graphs[name]["export_s"] = m["export_s"]
            rows += run(m, shapes, args.threads, 3.0 if args.quick else 8.0)
    print("| model | batch x seq | export prefill ms | export_module prefill ms | ratio | target | outputs rel L2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} x {r['seq']} | {r['native_ms']:.2f} | {r['module_ms']:.2f} | "
              f"{r['ratio']:.3f} | <= {TARGET} {'ok' if r['ok'] else 'MISS'} | {r['rel_l2_module_vs_native']:.1e} |")
    for name, g in graphs.items():
        nat, mod = collections.Counter(g["native"]), collections.Counter(g["module"])
        more = {k: v for k, v in (mod - nat).items()}
        less = {k: v for k, v in (nat - mod).items()}
        print(f"{name}: prefill nodes {sum(nat.values())} (export) vs {sum(mod.values())} (export_module); "
              f"export_module has more {more} and fewer {less}; export took {g['export_s'][0]:.1f} s vs "
              f"{g['export_s'][1]:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "graphs": graphs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
