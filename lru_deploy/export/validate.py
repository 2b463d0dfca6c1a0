"""Export validation: each graph in ONNX Runtime against the float64 reference over the shape matrix.

Names are checked first, then shapes, then values (relative L2 per output, bound from contract.TOLERANCES);
every failure is listed. bf16 graphs run emulated (see runtime.onnxruntime.emulate_reduced).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .. import contract
from ..cases import Case, random_inputs, reference_outputs, rel_l2
from ..model import LRUModel
from ..runtime.onnxruntime import ort_session, run_session

log = logging.getLogger(__name__)
STEPS = 4  # each step case runs this many consecutive steps, each from the graph's own previous state


def compare(label: str, spec: contract.GraphSpec, got: dict, ref: dict, bound: float, sizes: dict) -> tuple[list, list]:
    """Names, then shapes, then values. Returns (problems, per-output records)."""
    problems, records = [], []
    names = set(spec.output_names)
    if set(got) != names:
        problems.append(f"{label}: outputs {sorted(got)} != contract {sorted(names)}")
        return problems, records
    for t in spec.outputs:
        want = [sizes.get(d, d) if isinstance(d, str) else d for d in t.shape]
        if list(got[t.name].shape) != want:
            problems.append(f"{label}: {t.name} shape {list(got[t.name].shape)}, want {want}")
    if problems:
        return problems, records
    for t in spec.outputs:
        err = rel_l2(got[t.name], ref[t.name])
        mx = float(np.abs(got[t.name].astype(np.float64) - ref[t.name]).max())
        ok = bool(np.isfinite(err) and err <= bound)
        records.append({"case": label, "output": t.name, "rel_l2": err, "max_abs": mx, "bound": bound, "pass": ok})
        if not ok:
            problems.append(f"{label}: {t.name} relative L2 error {err:.2e} > {bound:.0e} (max abs {mx:.2e})")
    return problems, records


def validate_graphs(model64: LRUModel, graphs: dict, precision: str, cases: list[Case], prefill_outputs: str,
                    seed: int = 0) -> tuple[list, list, str]:
    """Run every case through ONNX Runtime and the reference. Returns (problems, records, run mode)."""
    cfg = model64.cfg
    bound = contract.TOLERANCES[precision]["rel_l2"]
    problems, records, mode = [], [], "native"
    sessions = {}
    for g, m in graphs.items():
        problems += [f"{precision}/{g}: {p}" for p in
                     contract.onnx_io_problems(contract.graph_spec(cfg, g, prefill_outputs), m)]
        sessions[g], mode = ort_session(m, precision)
    if problems:
        return problems, records, mode
    rng = np.random.default_rng(seed)
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        label = f"{precision} {case.label}"
        spec = contract.graph_spec(cfg, case.graph, prefill_outputs)
        if case.graph == "prefill":
            feeds = random_inputs(cfg, case.batch, case.seq, case.nonzero_state, rng)
            p, r = compare(label, spec, run_session(sessions["prefill"], feeds),
                           reference_outputs(model64, "prefill", feeds, prefill_outputs), bound,
                           {"batch": case.batch, "seq": case.seq})
        else:
            feeds = random_inputs(cfg, case.batch, None, case.nonzero_state, rng)
            p, r = [], []
            for k in range(STEPS):  # consecutive steps, each from the graph's own previous state
                got = run_session(sessions["step"], feeds)
                ref = reference_outputs(model64, "step", feeds)
                pk, rk = compare(f"{label} step {k}", spec, got, ref, bound, {"batch": case.batch})
                p, r = p + pk, r + rk
                nxt = random_inputs(cfg, case.batch, None, False, rng)
                feeds = {contract.input_name(cfg): nxt[contract.input_name(cfg)], **contract.carry(spec, got)}
        problems += p
        records += r
        worst = max((x["rel_l2"] for x in r), default=float("nan"))
        log.info("  [%d/%d] %-28s worst rel L2 %.1e %s (%.1f s)", i + 1, len(cases), label, worst,
                 "ok" if not p else "FAIL", time.perf_counter() - t0)
    return problems, records, mode


def validation_entry(model64, graphs: dict, precision: str, cases: list[Case], prefill_outputs: str
                     ) -> tuple[list, dict]:
    """validate_graphs, and the manifest's `validation` entry of the precision: (problems, entry)."""
    problems, records, mode = validate_graphs(model64, graphs, precision, cases, prefill_outputs)
    return problems, {"mode": mode, "bound_rel_l2": contract.TOLERANCES[precision]["rel_l2"], "cases": len(cases),
                      "failures": len(problems), "records": records}
