"""Typed manifests: one reader and writer per kind, every problem of a malformed or lying manifest at once,
and every consumer (run, generate, check, lint, info) refusing what the manifest cannot vouch for."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lru_deploy import cli, contract
from lru_deploy.checkpoints import save_model
from lru_deploy.errors import ManifestError
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.files import file_sha256
from lru_deploy.manifest import EngineManifest, ExportManifest, folder_kind


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, lru):
    root = tmp_path_factory.mktemp("man")
    model = save_model(lru.make_model(lru.small_config(), seed=4), root / "model")
    return export_model(model, root / "exp", ExportOptions(precisions=("fp32",), chunk=4, max_seq=32,
                        validate=False, lint=False))


@pytest.fixture
def copy(export_dir, tmp_path):
    return shutil.copytree(export_dir, tmp_path / "copy")


def _edit(folder, fn):
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _user_error(capsys, argv) -> str:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "\nhint: " in err and "Traceback" not in err, err
    return err


def test_round_trip_and_kind(export_dir, tmp_path):
    m = ExportManifest.read(export_dir)
    assert folder_kind(export_dir) == "export" and m.precisions == ["fp32"] and m.chunk == 4
    assert m.spec("step") == contract.graph_spec(m.cfg, "step")
    assert m.graph_path("fp32", "prefill") == export_dir / "fp32" / "prefill.onnx"
    shutil.copytree(export_dir, tmp_path / "again")
    m.write(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "manifest.json").read_text()) == \
        json.loads((export_dir / "manifest.json").read_text())
    with pytest.raises(ManifestError, match="not an engine folder"):
        EngineManifest.read(tmp_path)


def test_every_malformed_field_is_listed_at_once(copy):
    _edit(copy, lambda m: (m.pop("chunk"), m.pop("opset"), m.update(max_seq="many", format="v0")))
    with pytest.raises(ManifestError) as e:
        ExportManifest.read(copy)
    text = e.value.render()
    for word in ("format is 'v0'", "no 'chunk' entry", "no 'opset' entry", "'max_seq' is a str"):
        assert word in text
    (copy / "manifest.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ManifestError, match="not UTF-8"):
        ExportManifest.read(copy)


@pytest.mark.parametrize("lie, words", [
    (lambda m: m["graphs"]["fp32"]["step"].update(path="../../etc/passwd"), "leaves the folder"),
    (lambda m: m["graphs"]["fp32"]["step"].update(path="/etc/passwd"), "leaves the folder"),
    (lambda m: m["graphs"].update(fp8={}), "precision 'fp8' is unknown"),
    (lambda m: m["graphs"].update(fp16={}), "fp16/prefill: no path recorded"),
    (lambda m: m["contract"]["step"]["outputs"][1]["shape"].__setitem__(3, 99), "the contract disagrees"),
    (lambda m: m["config"].update(n_layers=0), "config: "),
    (lambda m: m["graphs"]["fp32"]["prefill"].update(sha256="0" * 64), "does not match the sha256"),
])
def test_a_lying_manifest_is_refused_by_every_consumer(copy, capsys, lie, words):
    _edit(copy, lie)
    with pytest.raises(ManifestError, match=words.replace("(", r"\(")):
        ExportManifest.read(copy)
    x = copy.parent / "x.npy"
    np.save(x, np.zeros((1, 3), np.int64))
    for argv in (["run", copy, "--backend", "onnxruntime", "--inputs", x, "--output", copy.parent / "y.npy"],
                 ["generate", copy, "--prompt", "ab", "--max-new-tokens", "2"],
                 ["check", copy, "--quick", "--report", copy.parent / "r"],
                 ["info", copy]):
        assert words in _user_error(capsys, argv), argv
    rc = cli.main(["lint", str(copy)])
    assert rc == 1 and words in capsys.readouterr().out


def test_a_false_max_seq_is_refused_by_every_consumer(copy, capsys):
    """The graphs record the limits they were built for; a manifest that claims more is caught by its readers."""
    _edit(copy, lambda m: m.update(max_seq=64))
    words = "the graph was built for max_seq 32, the manifest says 64"
    x = copy.parent / "x.npy"
    np.save(x, np.zeros((1, 3), np.int64))
    for argv in (["run", copy, "--backend", "onnxruntime", "--inputs", x, "--output", copy.parent / "y.npy"],
                 ["generate", copy, "--prompt", "ab", "--max-new-tokens", "2"],
                 ["check", copy, "--quick", "--report", copy.parent / "r"]):
        assert words in _user_error(capsys, argv), argv
    rc = cli.main(["lint", str(copy)])
    assert rc == 1 and words in capsys.readouterr().out


def test_a_damaged_graph_whose_hash_was_updated_is_one_clean_error(copy, capsys):
    graph = copy / "fp32" / "prefill.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    _edit(copy, lambda m: m["graphs"]["fp32"]["prefill"].update(sha256=file_sha256(graph)))
    x = copy.parent / "x.npy"
    np.save(x, np.zeros((1, 3), np.int64))
    err = _user_error(capsys, ["run", copy, "--inputs", x, "--output", copy.parent / "y.npy"])
    assert "cannot load" in err and str(graph) in err
    assert "cannot load" in _user_error(capsys, ["generate", copy, "--prompt", "ab", "--max-new-tokens", "2"])
    assert "not a readable ONNX model" in _user_error(capsys, ["check", copy, "--quick", "--report",
                                                                copy.parent / "r"])
    assert not (copy.parent / "y.npy").exists() and not (copy.parent / "r").exists()
