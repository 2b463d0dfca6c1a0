"""Prefill of each imported PyTorch layout against its projections-only floor, batch 1, seq 4096 (fp32).

    .venv/bin/python benchmarks/layouts.py [--threads 2] [--reps 15] [--json OUT.json]

One block per model at the sizes below (d_model 256 as the 256 model of benchmarks/run.py), the layout of each
upstream as lru_deploy.importers.torch_layouts maps it, parameters from init_parameters(seed 0). The exported
prefill graph (graphs.build_prefill, chunk 32) and its floor (benchmarks/floors.py: the same graph with the scan
removed, positions in sequence order) run in ONNX Runtime, alternating repetition by repetition with a 50 ms
pause before each run (see benchmarks/README.md); each figure is the minimum. Target: ratio <= 1.6.
Never fails; not part of `make test`. Figures: RESULTS.md, "Imported layouts".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 1.6
H = 256
LAYOUTS = {  # name: LRUConfig fields (n_layers 1)
    "256 model (run.py's, for scale)": dict(vocab_size=256, d_output=256),
    "gothos (bare layer)": dict(vocab_size=None, d_input=H, d_model=H, d_output=H, encoder="none", decoder="none",
                                norm="none", ff="none", residual=False, skip="full"),
    "lrnnx-classifier": dict(vocab_size=None, d_input=16, d_output=10, norm="layer", prenorm=False, ff="none",
                             pooling="last"),
    "lrnnx-lm": dict(vocab_size=256, d_output=256, norm="rms", ff="none", final_norm=True, decoder="tied",
                     decoder_bias=False),
    "lrurec": dict(vocab_size=256, d_output=256, d_hidden=2 * H, norm="layer", prenorm=False, skip="identity",
                   residual=False, lru_bias=True, ff="mlp", d_ff=4 * H, ff_sublayer=True, embedding_norm=True,
                   decoder="tied"),
    "sysid-pytorch-lru ff=MLP": dict(vocab_size=None, d_input=16, d_output=16, ff="mlp", d_ff=4 * H, skip="full"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from floors import floor_prefill

    from lru_deploy.export.graphs import build_prefill
    from lru_deploy.model import LRUConfig, LRUModel, gold, init_parameters
    from lru_deploy.runtime.onnxruntime import ort_session

    rng = np.random.default_rng(0)
    rows = []
    for name, fields in LAYOUTS.items():
        cfg = LRUConfig(**{"d_model": H, "d_hidden": H, "n_layers": 1, **fields}).validate()
        m64 = gold(init_parameters(LRUModel(cfg), seed=0))
        graphs = {"prefill": build_prefill(m64, "fp32", 32, 65536), "floor": floor_prefill(m64, 32, 65536)}
        sessions = {k: ort_session(g, "fp32", args.threads)[0] for k, g in graphs.items()}
        x = (rng.integers(0, cfg.vocab_size, (1, args.seq)) if cfg.tokens
             else rng.standard_normal((1, args.seq, cfg.d_input)).astype(np.float32))
        feeds = {"input_ids" if cfg.tokens else "inputs": x,
                 "state": np.zeros((1, 1, 2, cfg.d_hidden), np.float32)}
        best = {k: float("inf") for k in sessions}
        for _ in range(args.reps):
            for k, s in sessions.items():
                time.sleep(0.05)
                t0 = time.perf_counter()
                s.run(None, feeds)
                best[k] = min(best[k], time.perf_counter() - t0)
        ratio = best["prefill"] / best["floor"]
        rows.append({"layout": name, "prefill_ms": best["prefill"] * 1e3, "floor_ms": best["floor"] * 1e3,
                     "ratio": ratio, "pass": ratio <= TARGET, "config": cfg.to_dict()})
        print(f"{name:28s} prefill {best['prefill'] * 1e3:7.2f} ms  floor {best['floor'] * 1e3:7.2f} ms  "
              f"ratio {ratio:4.2f}  {'ok' if ratio <= TARGET else 'MISS'} (<= {TARGET})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"batch": 1, "seq": args.seq, "threads": args.threads, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
