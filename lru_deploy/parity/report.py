"""The parity report of `lru-deploy check`: the console table, report.json, the error-along-the-sequence plot,
and the Polygraphy input/output files with the `polygraphy run` command that reproduces the single-call cases
without lru-deploy. The report folder appears whole or not at all (temporary folder, then rename).

    REPORT/report.json
    REPORT/<precision>/error_along_sequence.png
    REPORT/<precision>/localize.png                  with --localize or a miss: error per block and sub-step
    REPORT/<precision>/{prefill,step}.inputs.json     polygraphy.json.save_json of the feed dicts
    REPORT/<precision>/{prefill,step}.outputs.json    RunResults of the reference runner (--load-outputs)
    REPORT/<precision>/{prefill,step}.emulated.onnx   bf16 exports only: the float32 twin ONNX Runtime can run
"""
from __future__ import annotations

import json
import logging
import math
import shlex
import time
from pathlib import Path

import numpy as np

from .. import contract
from ..manifest import tool_versions
from ..files import staged_dir

log = logging.getLogger(__name__)
FORMAT = "lru-deploy-parity-v1"
REPRO_MAX_BYTES = 8 << 20  # a case goes into the Polygraphy files when its float32 outputs fit in 8 MiB
PLOT = "error_along_sequence.png"
LOCALIZE_PLOT = "localize.png"


def write_report(out: Path, target, model: dict, checks: dict, settings: dict, seconds: float,
                 overwrite: bool = False) -> dict:
    """Write the report folder `out` atomically; returns report.json's content."""
    out = Path(out).resolve()
    with staged_dir(out, "check", reads=target.input_paths() + [model["path"]], overwrite=overwrite,
                    flag="--report") as tmp:
        precisions = {}
        for prec, pc in checks.items():
            (tmp / prec).mkdir()
            entry = precision_entry(pc)
            entry["polygraphy"] = write_repro(tmp / prec, out / prec, target, pc)
            if write_plot(tmp / prec / PLOT, pc.curves, pc.tol, f"{target.folder.name} {prec} ({target.backend})"):
                entry["plot"] = str(out / prec / PLOT)
            if entry.get("localize") and write_localize_plot(tmp / prec / LOCALIZE_PLOT, entry["localize"],
                                                             f"{target.folder.name} {prec}: error per probe"):
                entry["localize_plot"] = str(out / prec / LOCALIZE_PLOT)
            precisions[prec] = entry
        failures = [f for e in precisions.values() for f in e["failures"]]
        report = {
            "format": FORMAT, "target": {"path": str(target.folder.resolve()), "kind": target.kind,
                                         "backend": target.backend},
            "model": model, "notes": list(target.notes), "settings": settings,
            "tolerance_overrides": [n for e in precisions.values() for n in e["tolerances"]["overridden"]],
            "pass": not failures, "failures": failures,
            "commands": [g["command"] for e in precisions.values() for g in e["polygraphy"].values()],
            "precisions": precisions, "report_dir": str(out), "seconds": round(seconds, 2),
            "tools": tool_versions(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "report.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    log.info("report written to %s", out)
    return report


def precision_entry(pc) -> dict:
    rows = pc.rows
    failures = [f"{pc.prec} {r['case']}: {r['output']}: {r['why']}" for r in rows if r["pass"] is False]
    summary = {}
    for r in rows:
        if r["rel_l2"] is None:
            continue
        s = summary.get(r["kind"])
        if s is None or r["rel_l2"] > s["worst_rel_l2"]:
            summary[r["kind"]] = {"worst_rel_l2": r["rel_l2"], "case": r["case"], "output": r["output"]}
    drift = {}
    if "drift" in pc.curves:
        c = pc.curves["drift"]
        drift = {"steps": c["positions"][-1], "window": c["window"], "last_window_rel_l2": c["rel_l2"][-1],
                 "worst_window_rel_l2": max(c["rel_l2"]), "bound": pc.tol["drift_rel_l2"]}
        drift.update({f"{r['output']}_rel_l2": r["rel_l2"] for r in rows
                      if r["kind"] == "drift" and r["output"].endswith("_out")})
    return {"backend": pc.t.backend, "mode": "bf16-emulated" if pc.prec == "bf16" and pc.t.kind == "export"
            else "native", "pass": not failures, "failures": failures,
            "tolerances": {"table": contract.TOLERANCES[pc.prec], "used": pc.tol, "overridden": pc.overrides},
            "summary": summary, "drift": drift, "curves": pc.curves, "rows": rows,
            "localize": list(getattr(pc, "localization", []))}


def write_repro(tmp: Path, final: Path, target, pc) -> dict:
    """The Polygraphy files per graph and the command that checks them; paths as they will be after the rename."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    from .runners import REFERENCE, polygraphy_quiet
    out = {}
    for graph, r in pc.repro.items():
        if not r["cases"]:
            continue
        ins, outs = f"{graph}.inputs.json", f"{graph}.outputs.json"
        results = RunResults()
        results.append((REFERENCE, [IterationResult(outputs=g, runtime=0.0, runner_name=REFERENCE)
                                    for g in r["gold"]]))
        with polygraphy_quiet():
            save_json(r["feeds"], str(tmp / ins), description="lru-deploy check inputs")
            results.save(str(tmp / outs))
        graph_path = target.graph_path(pc.prec, graph).resolve()
        if target.kind == "export" and pc.prec == "bf16":  # ONNX Runtime's CPU provider has no bf16 MatMul
            (tmp / f"{graph}.emulated.onnx").write_bytes(target.model_source(pc.prec, graph))
            graph_path = final / f"{graph}.emulated.onnx"
        out[graph] = {"graph": str(graph_path), "inputs": str(final / ins), "outputs": str(final / outs),
                      "cases": r["cases"],
                      "command": polygraphy_command(graph_path, target.backend, final / ins, final / outs, pc.tol)}
    return out


def polygraphy_command(graph: Path, backend: str, inputs: Path, outputs: Path, tol: dict) -> str:
    args = ["polygraphy", "run", str(graph)]
    args += ["--onnxrt"] if backend == "onnxrt" else ["--model-type", "engine", "--trt"]
    args += ["--load-inputs", str(inputs), "--load-outputs", str(outputs),
             "--atol", f"{tol['atol']:g}", "--rtol", f"{tol['rtol']:g}"]
    return shlex.join(args)


def write_plot(path: Path, curves: dict, tol: dict, title: str) -> bool:
    """Error per window of positions against position, log y: the long prefill case and the drift run."""
    if not curves:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    panels = (("long", "position", tol["rel_l2"], "long prefill: outputs"),
              ("drift", "step", tol["drift_rel_l2"], "drift: consecutive steps, outputs"))
    for ax, (key, xlabel, bound, name) in zip(fig.subplots(1, 2), panels):
        c = curves.get(key)
        ax.set_xlabel(f"{xlabel} (end of a {c['window'] if c else '?'}-position window)")
        ax.set_ylabel("relative L2 error")
        if not c:
            ax.text(0.5, 0.5, "no per-position outputs\n(pooled or last-output prefill, or no long case)",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name)
            continue
        ax.semilogy(c["positions"], np.maximum(c["rel_l2"], 1e-12), marker=".", label=c["case"])
        ax.axhline(bound, color="tab:red", linestyle="--", label=f"bound {bound:g}")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(str(path), dpi=100)
    return True


def write_localize_plot(path: Path, results: list[dict], title: str) -> bool:
    """Relative L2 error at every probe, in network order, one line per localized graph, log y."""
    results = [r for r in results if r["rows"]]
    if not results:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    labels = [row["probe"] for row in max(results, key=lambda r: len(r["rows"]))["rows"]]
    for r in results:
        ys = {row["probe"]: row["rel_l2"] for row in r["rows"] if row["rel_l2"] is not None}
        xs = [i for i, name in enumerate(labels) if name in ys]
        ax.semilogy(xs, [max(ys[labels[i]], 1e-12) for i in xs], marker="o", label=f"{r['graph']} ({r['case']})")
        if r.get("first_over") in labels:
            i = labels.index(r["first_over"])
            ax.annotate(f"first over: {r['first_over']}", (i, max(ys.get(r["first_over"], 1e-12), 1e-12)),
                        textcoords="offset points", xytext=(5, 8), fontsize="small")
    ax.axhline(results[0]["bound_rel_l2"], color="tab:red", linestyle="--",
               label=f"bound {results[0]['bound_rel_l2']:g}")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel("relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.savefig(str(path), dpi=100)
    return True


# ---------------------------------------------------------------- console

def _num(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def _tol_text(r: dict, pc_overridden: bool) -> str:
    if r["bound_rel_l2"] is None:
        return "-"
    star = "*" if pc_overridden else ""
    if "atol" in r:
        return f"L2 {r['bound_rel_l2']:.0e}, a {r['atol']:g}{star}, r {r['rtol']:g}{star}"
    return f"L2 {r['bound_rel_l2']:.0e} (drift)"


def table(rows: list[dict], overridden: bool) -> str:
    head = ("case", "shapes", "output", "rel L2", "max abs", "tolerance", "pass")
    body = [(r["case"], "[" + ", ".join(map(str, r["shape"])) + "]" if r["shape"] else "-", r["output"],
             _num(r["rel_l2"]), _num(r["max_abs"]), _tol_text(r, overridden),
             "skip" if r["pass"] is None else "ok" if r["pass"] else "MISS") for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def console(report: dict) -> str:
    """What `lru-deploy check` prints: per precision the table and a summary, the commands, the verdict."""
    t = report["target"]
    lines = [f"parity of {t['path']} ({'ONNX Runtime' if t['backend'] == 'onnxrt' else 'TensorRT'} via "
             f"Polygraphy) against the complex128 reference of {report['model']['path']}"]
    lines += [f"note: {n}" for n in report["notes"]]
    for prec, e in report["precisions"].items():
        tol = e["tolerances"]["used"]
        lines += ["", f"== {prec} ({e['mode']}): rel L2 <= {tol['rel_l2']:g}, Polygraphy atol {tol['atol']:g} "
                      f"rtol {tol['rtol']:g}, drift rel L2 <= {tol['drift_rel_l2']:g}"]
        lines += [f"!! {n}" for n in e["tolerances"]["overridden"]]
        lines.append(table(e["rows"], bool(e["tolerances"]["overridden"])))
        lines += [f"!! {n}" for n in e["tolerances"]["overridden"]]
        worst = ", ".join(f"{k} {v['worst_rel_l2']:.1e}" for k, v in e["summary"].items())
        lines.append(f"worst rel L2 per kind: {worst}")
        if e["drift"]:
            d = e["drift"]
            lines.append(f"drift after {d['steps']} steps: outputs {d['last_window_rel_l2']:.1e} in the last "
                         f"{d['window']}-step window (worst {d['worst_window_rel_l2']:.1e}), state "
                         f"{_num(d.get('state_out_rel_l2'))}; bound {d['bound']:g}")
        if "plot" in e:
            lines.append(f"plot: {e['plot']}")
        for loc in e.get("localize", []):
            lines.append(f"localize {loc['case']}: {loc['summary']}")
            lines += [f"    {row['probe']:<24} rel L2 {_num(row['rel_l2'])}  max abs {_num(row['max_abs'])}"
                      + (f"  x{row['growth']:.3g}" if row.get("growth") else "") for row in loc["rows"]]
        if "localize_plot" in e:
            lines.append(f"localize plot: {e['localize_plot']}")
    if report["commands"]:
        lines += ["", "reproduce the single-call cases without lru-deploy:"]
        lines += [f"  {c}" for c in report["commands"]]
    lines += ["", f"report: {Path(report['report_dir']) / 'report.json'} ({report['seconds']:.1f} s)"]
    if report["pass"]:
        lines.append("PASS: every output of every case is within tolerance")
    else:
        lines.append(f"FAIL: {len(report['failures'])} miss(es):")
        lines += [f"  - {f}" for f in report["failures"]]
    return "\n".join(lines)


def _clean(o):
    """JSON-safe: numpy scalars to Python, NaN and infinities to strings (json.dumps would write bare NaN)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o
