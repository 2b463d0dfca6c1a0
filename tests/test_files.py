"""The write protocol (lru_deploy.files): destinations that hold other data are refused, inputs are never
destroyed, concurrent writers are locked out, stale temporaries are swept, single files keep their names."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from lru_deploy import files
from lru_deploy.errors import InputError, OutputError


def _write(dest, kind="export", **kw):
    with files.staged_dir(dest, kind, **kw) as tmp:
        (tmp / "manifest.json").write_text("{}")
    return dest


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- folders

def test_a_folder_the_same_command_wrote_is_replaced_whole(tmp_path):
    dest = tmp_path / "e"
    _write(dest)
    (dest / "stale.onnx").unlink(missing_ok=True)
    with files.staged_dir(dest, "export") as tmp:
        (tmp / "new.txt").write_text("new")
    assert _listing(dest) == [files.MARKER, "new.txt"]
    assert _listing(tmp_path) == ["e"]  # no temporary, old or lock file left beside it


def test_a_folder_with_a_users_file_is_refused_and_kept(tmp_path):
    dest = tmp_path / "e"
    _write(dest)
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="notes.txt") as ei:
        _write(dest)
    assert "--overwrite" in ei.value.hint
    assert (dest / "notes.txt").read_text() == "keep me"
    _write(dest, overwrite=True)
    assert not (dest / "notes.txt").exists()


def test_a_folder_another_command_wrote_is_refused(tmp_path):
    dest = _write(tmp_path / "r", kind="check")
    with pytest.raises(OutputError, match="written by `check`, not `export`"):
        _write(dest, kind="export")


def test_nested_folders_that_lru_deploy_wrote_do_not_block_a_rewrite(tmp_path):
    dest = _write(tmp_path / "e")
    _write(dest / "report", kind="check")  # check's default report folder lives inside the export
    _write(dest)
    assert _listing(dest) == [files.MARKER, "manifest.json"]


def test_an_unmarked_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(OutputError, match="a.txt, which lru-deploy export did not write"):
        _write(tmp_path / "mine")
    assert _listing(tmp_path / "mine") == ["a.txt"]


@pytest.mark.parametrize("rel", ["m", "m/sub", "."])
def test_an_output_that_is_contains_or_lies_inside_the_input_is_refused(tmp_path, monkeypatch, rel):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="input"):
        _write(tmp_path / rel if rel != "." else files.Path("."), reads=[model], overwrite=True)
    assert _listing(model) == ["config.json"]


def test_an_existing_file_as_output_folder_is_refused_and_kept(tmp_path):
    f = tmp_path / "afile.txt"
    f.write_text("data")
    with pytest.raises(OutputError, match="is a file"):
        _write(f, overwrite=True)
    with pytest.raises(OutputError, match="lies under .*afile.txt, which is a file"):
        _write(f / "exp")
    assert f.read_text() == "data" and _listing(tmp_path) == ["afile.txt"]


def test_dot_and_dotdot_are_resolved_to_real_names(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    _write(files.Path("."))  # an empty current folder may be written
    assert _listing(tmp_path / "w") == [files.MARKER, "manifest.json"]
    os.chdir(tmp_path / "w")
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        _write(files.Path(".."))


def test_an_unwritable_destination_names_the_path_and_the_reason(tmp_path):
    if os.geteuid() == 0:
        with pytest.raises(OutputError, match="cannot write --out /proc/x"):
            _write(files.Path("/proc/x"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="permission denied"):
            _write(ro / "x")


def test_a_failing_body_leaves_the_old_folder_and_nothing_else(tmp_path):
    dest = _write(tmp_path / "e")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(RuntimeError):
        with files.staged_dir(dest, "export") as tmp:
            (tmp / "half.onnx").write_text("half")
            raise RuntimeError("killed")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert _listing(tmp_path) == ["e"]


# ---------------------------------------------------------------- lock and stale temporaries

def test_a_second_writer_of_the_same_folder_fails_clearly(tmp_path):
    dest = tmp_path / "e"
    with files.staged_dir(dest, "export") as tmp:
        (tmp / "a").write_text("first")
        with pytest.raises(OutputError, match=f"being written by another lru-deploy process \\(pid {os.getpid()}\\)"):
            _write(dest)
    assert (dest / "a").read_text() == "first"


def test_a_writer_in_another_process_locks_the_folder_out(tmp_path):
    dest = tmp_path / "e"
    code = ("import sys, time; from lru_deploy import files\n"
            "with files.staged_dir(sys.argv[1], 'export') as t:\n"
            "    print('in', flush=True); time.sleep(3)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "in"
        with pytest.raises(OutputError, match=f"pid {p.pid}"):
            _write(dest)
    finally:
        p.wait(timeout=30)
    assert p.returncode == 0 and _listing(dest) == [files.MARKER]


def test_stale_temporaries_of_dead_runs_are_swept_and_live_ones_kept(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".e{files.TMP_TAG}dead"
    live = tmp_path / f".e{files.TMP_TAG}live"
    old = tmp_path / f".e{files.TMP_TAG}old"
    for d, pid, started in ((stale, dead.pid, time.time()), (live, os.getpid(), time.time()),
                            (old, os.getpid(), time.time() - 2 * files.STALE_AFTER_S)):
        d.mkdir()
        (d / "big.onnx").write_bytes(b"x" * 1000)
        (d / ".owner.json").write_text(json.dumps({"pid": pid, "host": files.socket.gethostname(), "started": started}))
    unrelated = tmp_path / ".e.something-else"
    unrelated.mkdir()
    with caplog.at_level("WARNING"):
        _write(tmp_path / "e")
    assert not stale.exists() and not old.exists() and live.exists() and unrelated.exists()
    assert "removed 2 stale temporary folder(s)" in caplog.text


# ---------------------------------------------------------------- single files and JSON

@pytest.mark.parametrize("name", ["result", "result.bin", "st.npy"])
def test_atomic_write_keeps_the_name_as_given(tmp_path, name):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    files.atomic_write(tmp_path / name, lambda f: np.save(f, arr))
    assert _listing(tmp_path) == [name]
    np.testing.assert_array_equal(np.load(tmp_path / name), arr)


def test_atomic_write_refuses_a_folder_and_leaves_nothing(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        files.atomic_write(tmp_path / "adir", lambda f: f.write(b"x"))
    with pytest.raises(ValueError):
        files.atomic_write(tmp_path / "x.npy", lambda f: (f.write(b"half"), (_ for _ in ()).throw(ValueError())))
    assert _listing(tmp_path) == ["adir"]


@pytest.mark.parametrize("content,match", [(b"\xff\xfe\x80abc", "not UTF-8"), (b"{not json", "not valid JSON"),
                                           (b"[1, 2]", "JSON list, not an object")])
def test_read_json_turns_every_bad_file_into_one_error(tmp_path, content, match):
    (tmp_path / "c.json").write_bytes(content)
    with pytest.raises(InputError, match=match) as ei:
        files.read_json(tmp_path / "c.json", "model config")
    assert "model config" in ei.value.message and ei.value.hint
    with pytest.raises(InputError, match="does not exist"):
        files.read_json(tmp_path / "missing.json")
    with pytest.raises(InputError, match="is a folder"):
        files.read_json(tmp_path)
