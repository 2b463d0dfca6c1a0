"""Memory estimates: exact parts (parameter counts, graph sizes), the limit, and refusals before allocation."""
from __future__ import annotations

import json

import pytest

from lru_deploy import cli, memory
from lru_deploy.checkpoints import save_model
from lru_deploy.errors import ExportError
from lru_deploy.export import ExportOptions, export_model
from lru_deploy.model import LRUConfig, LRUModel


@pytest.mark.parametrize("fields", [dict(), dict(vocab_size=None, d_input=3, pooling="mean", norm="batch",
                                                 skip="full"), dict(n_layers=1, d_model=5, d_hidden=9)])
def test_parameter_count_is_the_checkpoints_value_count(fields):
    cfg = LRUConfig(**{**dict(vocab_size=17, d_model=6, d_hidden=4, n_layers=2, d_output=5), **fields})
    assert memory.parameter_count(cfg) == sum(t.numel() for t in LRUModel(cfg).state_dict().values())


@pytest.mark.parametrize("chunk", [32, 64])
def test_prefill_graph_estimate_matches_the_file(tmp_path, lru, chunk):
    """The Toeplitz blocks dominate: the estimate is within 3% of the written prefill.onnx (fp32)."""
    cfg = lru.small_config(d_hidden=32, d_model=8, n_layers=2)
    out = export_model(save_model(lru.make_model(cfg, seed=1), tmp_path / "m"), tmp_path / "e",
                       ExportOptions(precisions=("fp32",), chunk=chunk, max_seq=256, validate=False, lint=False))
    size = (out / "fp32" / "prefill.onnx").stat().st_size
    est = 4 * memory.prefill_graph_floats(cfg, chunk)
    assert abs(est - size) <= 0.03 * size, (est, size)


def test_available_memory_and_the_ceiling(monkeypatch):
    avail, source = memory.available_memory()
    assert avail is None or avail > 0
    monkeypatch.setenv(memory.ENV_LIMIT, "0.25")
    limit, why = memory.memory_limit()
    assert limit == min(memory.GIB // 4, avail or memory.GIB) and memory.ENV_LIMIT in why
    monkeypatch.setenv(memory.ENV_LIMIT, "nan")
    limit, why = memory.memory_limit()
    assert limit == avail and "ignored" in why


def test_a_graph_over_the_protobuf_limit_is_refused():
    cfg = LRUConfig(vocab_size=8, d_model=4, d_hidden=1024, n_layers=4, d_output=8)
    est = memory.export_estimate(cfg, ExportOptions(chunk=256))
    assert est.largest_graph > memory.PROTOBUF_LIMIT
    assert any("2 GiB limit" in p for p in memory.problems(est))


def _user_error(capsys, argv) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "hint: " in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("fields, words", [(dict(vocab_size=4_000_000_000), ["TiB", "parameters"]),
                                           (dict(d_model=100_000), ["GiB", "parameters"])])
def test_init_refuses_what_cannot_fit_before_allocating(tmp_path, capsys, monkeypatch, fields, words):
    def no_alloc(*a, **kw):
        raise AssertionError("LRUModel was built: the estimate came too late")
    monkeypatch.setattr("lru_deploy.model.LRUModel.__init__", no_alloc)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(fields))
    err = _user_error(capsys, ["init", "--config", str(cfg), "--out", str(tmp_path / "m")])
    assert "cannot run on this machine" in err and all(w in err for w in words)
    assert not (tmp_path / "m").exists()


def test_export_refuses_over_the_ceiling_before_reading_weights(tmp_path, lru, monkeypatch):
    model = save_model(lru.make_model(lru.small_config(), seed=1), tmp_path / "m")
    monkeypatch.setenv(memory.ENV_LIMIT, "0.01")
    monkeypatch.setattr("lru_deploy.export.load_model", lambda *a, **k: pytest.fail("weights read first"))
    with pytest.raises(ExportError) as e:
        export_model(model, tmp_path / "e", ExportOptions(chunk=8, max_seq=64))
    text = e.value.render()
    assert "export --chunk 8 --precision fp32,fp16 cannot run" in text and "MiB" in text
    assert memory.ENV_LIMIT in text and not (tmp_path / "e").exists()


@pytest.mark.parametrize("chunk, word", [(3, "power of two"), (512, "from 2 to 256"), (1, "power of two"),
                                         (0, "power of two"), (-4, "power of two")])
def test_chunk_bounds(chunk, word):
    assert any(word in p for p in ExportOptions(chunk=chunk).problems())


def test_max_seq_below_the_chunk_is_a_max_seq_error():
    problems = ExportOptions(chunk=32, max_seq=16).problems()
    assert problems and all(p.startswith("--max-seq 16") for p in problems)
