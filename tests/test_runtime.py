"""open_session: which session a folder gets, and its refusals."""
from __future__ import annotations


import pytest

from lru_deploy.errors import InputError, ManifestError
from lru_deploy.runtime import ReferenceSession, open_session
from lru_deploy.runtime.onnxruntime import OnnxruntimeSession



# ---------------------------------------------------------------- open_session

def test_open_session_dispatches_on_the_folder(tiny):
    _, model_dir, export = tiny
    assert type(open_session(model_dir)) is ReferenceSession
    ort = open_session(export)
    assert type(ort) is OnnxruntimeSession and ort.max_seq == 16 and ort.precision == "fp32"
    assert open_session(export, precision="fp16").precision == "fp16"
    assert type(open_session(export, backend="reference")) is ReferenceSession  # follows the manifest's model


def test_open_session_refuses_clearly(tiny, tmp_path):
    _, model_dir, export = tiny
    with pytest.raises(InputError, match="backend onnxruntime needs an export folder") as e:
        open_session(model_dir, backend="onnxruntime")
    assert "lru-deploy export" in e.value.hint
    with pytest.raises(InputError, match="unknown backend 'jax'"):
        open_session(model_dir, backend="jax")
    with pytest.raises(InputError, match="neither a model, an export nor an engine folder"):
        open_session(tmp_path)
    with pytest.raises(ManifestError, match="no bf16 graphs"):
        open_session(export, precision="bf16")
    with pytest.raises(InputError, match="lacks CUDAExecutionProvider"):
        open_session(export, providers=["CUDAExecutionProvider"])
