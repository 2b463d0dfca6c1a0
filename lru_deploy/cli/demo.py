"""`lru-deploy demo`: the main job end to end on the bundled model, then what was verified and what was skipped.

export (export's default precisions, validated against the float64 reference) -> lint (TensorRT readiness) ->
check (Polygraphy parity: shape matrix, continuity, the drift run) -> TensorRT build and check where TensorRT
and a GPU exist -> generate the same text on every backend with the same seed. The summary's figures are read
from what each stage wrote (the export manifest, the parity report), not restated here.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ..errors import EngineError

log = logging.getLogger(__name__)


def run_demo(model_dir=None, out_dir=None, prompt: str = "def ", tokens: int = 160) -> int:
    from ..checkpoints import load_model, resolve_model_dir, summary
    from ..export import export_model
    from ..lint import lint_export
    from ..manifest import ExportManifest
    from ..parity import check
    from ..parity.report import console
    from ..runtime import decode, encode, open_session

    model_dir = resolve_model_dir(model_dir)
    name = model_dir.resolve().name
    out_dir = Path(out_dir) if out_dir else Path("export") / name
    verified, skipped, failed = [], [], []
    s = summary(load_model(model_dir))
    c = s["config"]
    _say(f"== model {model_dir}: byte-level LM, {c['n_layers']} layers, d_model {c['d_model']}, d_hidden "
         f"{c['d_hidden']}, {s['parameters']:,} parameters, |lambda| in [{s['lambda_abs_min']:.4f}, "
         f"{s['lambda_abs_max']:.6f}]")

    _say(f"\n== export -> {out_dir} (every graph validated against the float64 reference)")
    t0 = time.perf_counter()
    export_model(model_dir, out_dir)
    man = ExportManifest.read(out_dir)
    cases = sorted({v["cases"] for v in man.validation.values()})
    verified.append(f"export: {' and '.join(man.precisions)} prefill/step graphs match the float64 reference on "
                    f"{'/'.join(map(str, cases))} shapes each ({time.perf_counter() - t0:.1f} s)")

    _say("\n== lint (TensorRT 10 readiness)")
    report = lint_export(out_dir)
    _say(report.table())
    _say(report.summary())
    (verified if report.ok else failed).append(report.summary())

    _say("\n== check (Polygraphy: ONNX Runtime against the complex128 reference)")
    rep = check(out_dir)
    _say(console(rep))
    (verified if rep["pass"] else failed).append(
        f"check: shape matrix, continuity identities and a {rep['settings']['drift_steps']:,}-step drift run, "
        f"{' and '.join(rep['precisions'])} " + ("pass" if rep["pass"] else f"FAIL ({len(rep['failures'])} misses)"))

    _say("\n== TensorRT")
    try:
        from ..engines import BuildOptions, build_engines
        from ..trt_env import preflight
        preflight()
    except EngineError as e:
        skipped.append("TensorRT build and check: " + "; ".join(e.problems or [e.message]))
        _say("skipped: " + "; ".join(e.problems or [e.message]))
    else:
        eng, _ = build_engines(out_dir, options=BuildOptions(precision="fp16"))
        rep_trt = check(eng)
        _say(console(rep_trt))
        (verified if rep_trt["pass"] else failed).append(f"TensorRT fp16 engines {eng}: check "
                                                         f"{'pass' if rep_trt['pass'] else 'FAIL'}")

    _say(f"\n== generate (prompt {prompt!r}, {tokens} tokens, temperature 0.8, top-k 40, seed 0)")
    texts = {}
    runs = [("reference (float64)", model_dir, "reference", {})]
    runs += [(f"onnxruntime {p}", out_dir, "onnxruntime", {"precision": p}) for p in man.precisions]
    for label, target, backend, kw in runs:
        sess = open_session(target, backend, **kw)
        t0 = time.perf_counter()
        ids = [int(t[0]) for t in sess.generate(encode(prompt), tokens, 0.8, 40, 0)]
        dt = time.perf_counter() - t0
        texts[label] = ids
        _say(f"-- {label}: {len(ids) / dt:.0f} tokens/s")
    first = next(iter(texts.values()))
    _say(prompt + decode(first))
    same = [k for k, v in texts.items() if v == first]
    differ = [k for k in texts if k not in same]
    if not differ:
        verified.append(f"generate: identical {tokens} tokens on {', '.join(texts)}")
    else:  # sampling from logits that agree to ~1e-4 may still flip a near-tie; say so rather than hide it
        n = min(next(i for i, (a, b) in enumerate(zip(first, texts[k])) if a != b) for k in differ)
        failed.append(f"generate: {', '.join(differ)} diverge from the reference after {n} tokens")

    _say("\n== summary")
    for v in verified:
        _say(f"  verified: {v}")
    for v in skipped:
        _say(f"  skipped:  {v}")
    for v in failed:
        _say(f"  FAILED:   {v}")
    return 1 if failed else 0


def _say(text: str) -> None:
    print(text)
    sys.stdout.flush()


