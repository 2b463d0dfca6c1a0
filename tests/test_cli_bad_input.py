"""A sweep over every subcommand with bad inputs: each ends in a clean refusal (exit 1 with `error: ...` and a
hint -- lint's findings table for a file it cannot load --, or argparse's usage error, exit 2), never a
traceback, and writes nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lru_deploy import cli
from lru_deploy.checkpoints import DEFAULT_MODEL
from lru_deploy.export import ExportOptions, export_model


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A work folder: a tiny model and its export, and files of every kind of wrong."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "cfg.json").write_text(json.dumps(dict(vocab_size=256, d_model=4, d_hidden=3, n_layers=1, d_output=256)))
    assert cli.main(["init", "--config", str(root / "cfg.json"), "--out", str(root / "m")]) == 0
    export_model(root / "m", root / "e", ExportOptions(precisions=("fp32",), chunk=4, max_seq=16, validate=False,
                                                       lint=False))
    (root / "huge.json").write_text(json.dumps(dict(vocab_size=4_000_000_000)))
    (root / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (root / "text.json").write_text("not json")
    (root / "afile").write_text("data")
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 8)
    (root / "deep.msgpack").write_bytes(b"\x81\xa1x" * 5000 + b"\x01")
    (root / "notes.msgpack").write_text("hello")
    (root / "outdir").mkdir()
    np.save(root / "ids.npy", np.array([[1, 2, 3]], np.int64))
    np.save(root / "bad_ids.npy", np.array([[1, 999]], np.int64))
    return root


# (argv with {w} for the work folder, words the message must hold)
CASES = [
    (["init", "--config", "{w}/missing.json", "--out", "{w}/new"], ["missing.json"]),
    (["init", "--config", "{w}/binary.json", "--out", "{w}/new"], ["not UTF-8"]),
    (["init", "--config", "{w}/text.json", "--out", "{w}/new"], ["not valid JSON"]),
    (["init", "--config", "{w}/huge.json", "--out", "{w}/new"], ["cannot run on this machine", "TiB"]),
    (["init", "--config", "{w}/cfg.json", "--out", "{w}/new", "--seed", "-1"], ["--seed"]),
    (["init", "--config", "{w}/cfg.json", "--out", "{w}/afile/sub"], ["afile"]),
    (["info", "{w}/nope"], ["nope"]),
    (["info", "{w}/afile"], ["afile"]),
    (["run", "{w}/m", "--inputs", "{w}/missing.npy", "--output", "{w}/o.npy"], ["missing.npy"]),
    (["run", "{w}/m", "--inputs", "{w}/garbage.npy", "--output", "{w}/o.npy"], ["garbage.npy"]),
    (["run", "{w}/m", "--inputs", "{w}/bad_ids.npy", "--output", "{w}/o.npy"], ["want [0, 255]"]),
    (["run", "{w}/m", "--inputs", "{w}/ids.npy", "--output", "{w}/outdir"], ["is a folder"]),
    (["run", "{w}/m", "--inputs", "{w}/ids.npy", "--output", "{w}/o.npy", "--precision", "fp16"],
     ["applies to export folders"]),
    (["run", "{w}/m", "--inputs", "{w}/ids.npy", "--output", "{w}/o.npy", "--backend", "cuda"], ["invalid choice"]),
    (["generate", "{w}/m", "--prompt", ""], ["prompt is empty"]),
    (["generate", "{w}/m", "--prompt-file", "{w}/missing.txt"], ["missing.txt"]),
    (["generate", "{w}/m", "--prompt", "a", "--temperature", "nan"], ["--temperature"]),
    (["generate", "{w}/m", "--prompt", "a", "--temperature", "-1"], ["--temperature"]),
    (["generate", "{w}/m", "--prompt", "a", "--seed", "-1"], ["--seed"]),
    (["generate", "{w}/m", "--prompt", "a", "--max-new-tokens", "-3"], ["--max-new-tokens"]),
    (["generate", "{w}/m", "--prompt", "a", "--precision", "fp16"], ["applies to export folders"]),
    (["generate", "{w}/e", "--prompt", "a", "--precision", "fp32,fp16"], ["one precision"]),
    (["generate", "{w}/e", "--prompt", "a", "--precision", "fp8"], ["fp8", "fp32, fp16, bf16"]),
    (["generate", "{w}/nope", "--prompt", "a"], ["nope"]),
    (["demo", "--model", "{w}/nope"], ["nope"]),
    (["export", "{w}/nope", "--out", "{w}/x"], ["nope"]),
    (["export", "{w}/m", "--out", "{w}/x", "--chunk", "4096"], ["--chunk", "power of two"]),
    (["export", "{w}/m", "--out", "{w}/x", "--max-seq", "16"], ["--max-seq 16"]),
    (["export", "{w}/m", "--out", "{w}/x", "--precision", "fp32,fp32"], ["fp32 is given 2 times"]),
    (["export", "{w}/m", "--out", "{w}/x", "--precision", "fp8"], ["fp8", "fp32, fp16, bf16"]),
    (["export", "{w}/m", "--out", "{w}/x", "--long-seq", "0"], ["--long-seq"]),
    (["export", "{w}/m", "--out", "{w}/x", "--opset", "99"], ["--opset 99"]),
    (["export", "{w}/m", "--out", "{w}/afile/x"], ["afile"]),
    (["export", "{w}/m", "--out", "{w}/m"], ["input"]),
    (["build", "{w}/nope"], ["nope"]),
    (["build", "{w}/e", "--batch", "0:1:2"], ["--batch"]),
    (["build", "{w}/e", "--precision", "fp32,fp16"], ["one precision"]),
    (["lint", "{w}/nope"], ["nope"]),
    (["lint", "{w}/e", "--trt", "99.0"], ["--trt 99.0"]),
    (["lint", "{w}/garbage.onnx"], ["garbage.onnx", "load"]),
    (["import", "minimal-lru", "{w}/deep.msgpack", "--prenorm", "--pooling", "mean", "--out", "{w}/x"],
     ["not a Flax checkpoint"]),
    (["import", "minimal-lru", "{w}/notes.msgpack", "--out", "{w}/x"], ["--pooling"]),
    (["import", "torch", "{w}/garbage.pt", "--out", "{w}/x"], ["garbage.pt"]),
    (["check", "{w}/nope"], ["nope"]),
    (["check", "{w}/e", "--seed", "-1", "--report", "{w}/x"], ["--seed"]),
    (["check", "{w}/e", "--precision", "fp8", "--report", "{w}/x"], ["fp8"]),
    (["check", "{w}/e", "--atol", "nan", "--report", "{w}/x"], ["--atol"]),
    (["check", "{w}/e", "--drift-steps", "0", "--report", "{w}/x"], ["--drift-steps"]),
    (["triton", "{w}/nope", "--out", "{w}/x"], ["nope"]),
    (["serve", "{w}/nope"], []),
]


def _id(case) -> str:
    return " ".join(a.replace("{w}/", "") for a in case[0])[:60]


def test_every_subcommand_is_swept():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) <= {argv[0] for argv, _ in CASES}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bad_input_is_refused_cleanly(w, capsysbinary, case):
    argv, words = case
    argv = [a.replace("{w}", str(w)) for a in argv]
    before = sorted(p.name for p in w.iterdir())
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: a usage error
        rc = e.code
    cap = capsysbinary.readouterr()
    err = cap.err.decode("utf-8", "replace")
    assert "Traceback" not in err and b"Traceback" not in cap.out, err
    assert rc in (1, 2), (rc, err)
    out = cap.out.decode("utf-8", "replace")
    if rc == 1 and not (argv[0] == "lint" and not err):  # lint's findings are its report, on stdout
        assert err.startswith("error: ") and "\nhint: " in err, err
    for word in words:
        assert word in err + out, (word, err, out)
    assert sorted(p.name for p in w.iterdir()) == before  # nothing written, no temporary left


def _script() -> Path:
    script = Path(sys.executable).parent / "lru-deploy"
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    return script


def test_non_utf8_prompt_bytes_reach_the_model_and_stdout(w):
    """The shell's bytes, not UTF-8: generated from as they are, echoed as they are."""
    prompt = b"\xff\xfe\x80abc"
    res = subprocess.run([_script(), "generate", w / "m", "--prompt", prompt, "--max-new-tokens", "3"],
                         capture_output=True, timeout=120)
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr
    assert res.stdout.startswith(prompt) and len(res.stdout) == len(prompt) + 3 + 1  # + 3 tokens + newline
    (w / "p.bin").write_bytes(prompt)
    res2 = subprocess.run([_script(), "generate", w / "m", "--prompt-file", w / "p.bin", "--max-new-tokens", "3"],
                          capture_output=True, timeout=120)
    assert res2.returncode == 0 and res2.stdout == res.stdout  # the same bytes, the same seed: the same text
    (w / "p.bin").unlink()


def test_a_closed_pipe_ends_quietly():
    """`lru-deploy generate | head -c 20`: no BrokenPipeError traceback, the reader gets its 20 bytes."""
    res = subprocess.run(f"'{_script()}' generate '{DEFAULT_MODEL}' --prompt 'def ' --max-new-tokens 3000 "
                         f"| head -c 20", shell=True, capture_output=True, timeout=300)
    assert len(res.stdout) == 20 and res.stdout.startswith(b"def ")
    assert b"Traceback" not in res.stderr and b"BrokenPipe" not in res.stderr, res.stderr
