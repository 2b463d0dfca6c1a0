"""Property tests of the CLI (hypothesis): numeric flags and `run`'s input arrays, any combination, end in
success or in one clean user error (exit 1, `error: ...`, a hint), never a traceback, and a refused command
leaves nothing behind. main() runs in process; examples are few and small so the file stays quick."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lru_deploy import cli
from lru_deploy.cli.build import parse_range
from lru_deploy.errors import LRUDeployError
from lru_deploy.export import ExportOptions, export_model

SETTINGS = dict(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VOCAB, MAX_SEQ = 11, 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny models (tokens, a byte-level LM, continuous inputs) and the token model's fp32 export (max_seq 16)."""
    root = tmp_path_factory.mktemp("props")
    out = {}
    for name, cfg in (("tok", dict(vocab_size=VOCAB, d_model=4, d_hidden=3, n_layers=1, d_output=VOCAB)),
                      ("lm", dict(vocab_size=256, d_model=4, d_hidden=3, n_layers=1, d_output=256)),
                      ("cont", dict(vocab_size=None, d_input=2, d_model=4, d_hidden=3, n_layers=1, d_output=3))):
        (root / f"{name}.json").write_text(json.dumps(cfg))
        assert cli.main(["init", "--config", str(root / f"{name}.json"), "--out", str(root / name)]) == 0
        out[name] = root / name
    out["exp"] = export_model(out["tok"], root / "exp", ExportOptions(precisions=("fp32",), chunk=4,
                                                                      max_seq=MAX_SEQ, validate=False, lint=False))
    return out


def outcome(capsys, argv) -> tuple[int, str, str]:
    """Run the CLI; the result must be success or one clean user error."""
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()  # capsysbinary for generate, whose standard output is the model's raw bytes
    out, err = (v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in (cap.out, cap.err))
    assert rc in (0, 1), (argv, rc, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if rc == 1:
        assert err.startswith("error: ") and "\nhint: " in err, (argv, err)
    return rc, out, err


ints = st.one_of(st.integers(-3, 70), st.sampled_from([0, 2 ** 31, 2 ** 63, 2 ** 70, -2 ** 63]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e-7, 1e-6, 0.8, 1e300]))


@settings(**SETTINGS)
@given(chunk=st.one_of(st.integers(-2, 20), st.sampled_from([64, 256, 512, 4096, 2 ** 40])),
       max_seq=st.one_of(st.integers(-1, 40), st.sampled_from([65536, 2 ** 40])),
       long_seq=st.integers(-1, 50))
def test_export_numeric_flags(folders, tmp_path, capsys, chunk, max_seq, long_seq):
    out = tmp_path / f"e{chunk}_{max_seq}_{long_seq}"
    rc, _, err = outcome(capsys, ["export", folders["tok"], "--out", out, "--precision", "fp32", "--no-validate",
                                  f"--chunk={chunk}", f"--max-seq={max_seq}", f"--long-seq={long_seq}"])
    ok = chunk in (2, 4, 8, 16, 32, 64, 128, 256) and 1 <= chunk <= max_seq and long_seq >= 1
    assert rc == (0 if ok else 1), err
    assert out.exists() == ok and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@settings(**SETTINGS)
@given(tokens=st.integers(-2, 4), temperature=floats, top_k=ints, seed=ints)
def test_generate_numeric_flags(folders, capsysbinary, tokens, temperature, top_k, seed):
    rc, out, err = outcome(capsysbinary, ["generate", folders["lm"], "--prompt", "ab", f"--max-new-tokens={tokens}",
                                    f"--temperature={temperature}", f"--top-k={top_k}", f"--seed={seed}"])
    ok = (tokens >= 0 and top_k >= 0 and 0 <= seed < 2 ** 63 and math.isfinite(temperature)
          and (temperature == 0 or temperature >= 1e-6))
    assert rc == (0 if ok else 1), err
    if ok:
        assert out.startswith("ab") and out.endswith("\n")


@settings(**SETTINGS)
@given(lo=ints, opt=ints, hi=ints, form=st.sampled_from(["{lo}:{opt}:{hi}", "{lo}", "{lo}:{hi}", "{lo}:{opt}:{hi}:1",
                                                          "{lo}:x:{hi}", "", "{lo}.5:{opt}:{hi}"]))
def test_build_ranges(lo, opt, hi, form):
    text = form.format(lo=lo, opt=opt, hi=hi)
    try:
        got = parse_range(text, "batch")
    except LRUDeployError as e:
        assert "--batch" in e.message and e.hint
        return
    assert 1 <= got[0] <= got[1] <= got[2] <= 2 ** 31 - 1 and all(isinstance(v, int) for v in got)


@settings(**SETTINGS)
@given(batch=st.sampled_from(["1:1:2", "0:1:2", "2:1:1", "1:1:x", "-1", "1:1:99999999999"]),
       seq=st.sampled_from(["1:8:16", "1:8:999", "4", "1:2", "16:8:1"]))
def test_build_flags_end_cleanly_without_tensorrt(folders, capsys, batch, seq):
    outcome(capsys, ["build", folders["exp"], f"--batch={batch}", f"--seq={seq}"])


DTYPES = [np.int64, np.int32, np.uint8, np.float32, np.float64, np.float16, np.bool_, np.complex64]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, MAX_SEQ + 3]), min_size=rank, max_size=rank)))
    if np.dtype(dtype).kind in "iu":
        data = draw(st.sampled_from(["ok", "big", "negative"]))
        lo, hi = {"ok": (0, VOCAB - 1), "big": (VOCAB, 1000), "negative": (-5, -1)}[data]
        return np.random.default_rng(0).integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    a = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    if a.size and draw(st.booleans()):
        a.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return a


@settings(**SETTINGS)
@given(x=arrays(), target=st.sampled_from(["tok", "cont", "exp"]), with_state=st.booleans())
def test_run_with_any_input_array(folders, tmp_path, capsys, x, target, with_state):
    np.save(tmp_path / "x.npy", x)
    argv = ["run", folders[target], "--inputs", tmp_path / "x.npy", "--output", tmp_path / "y.npy"]
    if with_state:
        np.save(tmp_path / "s.npy", np.zeros((x.shape[0] if x.ndim else 1, 1, 2, 3), np.float32))
        argv += ["--state", tmp_path / "s.npy"]
    (tmp_path / "y.npy").unlink(missing_ok=True)
    rc, _, err = outcome(capsys, argv)
    assert (tmp_path / "y.npy").exists() == (rc == 0)
    if target != "cont" and rc == 0:  # tokens: only int ids in range, [batch >= 1, seq >= 1]
        assert x.dtype.kind in "iu" and x.ndim == 2 and x.size and x.min() >= 0 and x.max() < VOCAB
