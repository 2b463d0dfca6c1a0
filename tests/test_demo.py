"""lru-deploy demo: the whole job on the bundled model, and its TensorRT branch wired (with stand-ins)."""
import json

import pytest

from lru_deploy import engines, parity
from lru_deploy import trt_env
from lru_deploy.cli import demo
from lru_deploy.checkpoints import default_model_dir
from lru_deploy.cli import main
from lru_deploy.trt_env import RuntimeInfo


def test_demo_end_to_end_on_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for line in ("verified: export", "verified: lint: 4 graph(s), 0 error(s)", "verified: check:",
                 "verified: generate: identical 160 tokens", "skipped:  TensorRT"):
        assert line in text
    assert "FAILED" not in text
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["pass"] and set(report["precisions"]) == {"fp32", "fp16"}
    assert (out / "report" / "fp32" / "error_along_sequence.png").stat().st_size > 1000


def test_demo_takes_the_tensorrt_branch_where_tensorrt_is_present(tmp_path, monkeypatch, capsys):
    """With preflight passing, the demo builds fp16 engines and checks them; stand-ins replace TensorRT."""
    calls = []
    monkeypatch.setattr(trt_env, "preflight", lambda device=0: RuntimeInfo("Fake GPU", "9.0", "10.9", "x"))

    def fake_build(export_dir, out_dir=None, options=None, **kw):
        calls.append(("build", options.precision))
        return tmp_path / "engines", {}

    real_check = parity.check

    def fake_check(target, *a, **kw):
        if str(target).endswith("engines"):
            calls.append(("check", str(target)))
            return {"pass": True, "failures": []}
        return real_check(target, *a, options=parity.CheckOptions(quick=True), **kw)

    monkeypatch.setattr(engines, "build_engines", fake_build)
    monkeypatch.setattr(parity, "check", fake_check)
    monkeypatch.setattr("lru_deploy.parity.report.console", lambda report: "(console)")
    rc = demo.run_demo(default_model_dir(), tmp_path / "export", tokens=8)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert calls == [("build", "fp16"), ("check", str(tmp_path / "engines"))]
    assert "verified: TensorRT fp16 engines" in text and "skipped" not in text


@pytest.mark.parametrize("bad", [["demo", "--model", "/nonexistent/model"]])
def test_demo_user_errors_exit_1(bad, capsys):
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "hint:" in err and "Traceback" not in err
