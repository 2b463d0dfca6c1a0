"""export_module: models beyond the native layout, exported in fp32 and fp16, checked against the eager model.

Each architecture is exported (which validates the graphs over the shape matrix), then `check` runs on the folder
(single calls, continuity, a 10,000-step drift run through the step graph), and the prefill and step graphs are
compared here once more with the eager float64 model directly, with explicit tolerances.
"""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lru_deploy import contract, export_module
from lru_deploy.cases import rel_l2
from lru_deploy.errors import ExportError
from lru_deploy.lint import lint_export
from lru_deploy.manifest import ExportManifest
from lru_deploy.nn import LRU, Pool, carrying
from lru_deploy.parity import CheckOptions, check
from lru_deploy.runtime import open_session

BOUND = {p: contract.TOLERANCES[p]["rel_l2"] for p in ("fp32", "fp16")}  # 1e-5, 3e-3
DRIFT = {p: contract.TOLERANCES[p]["drift_rel_l2"] for p in ("fp32", "fp16")}
ELEMENT = {p: (contract.TOLERANCES[p]["atol"], contract.TOLERANCES[p]["rtol"]) for p in ("fp32", "fp16")}


def _ring(lru: LRU, lo: float, hi: float, seed: int) -> LRU:
    """|lambda| uniform in [lo, hi] (slow modes, the case that stresses the scan)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        r = lo + (hi - lo) * torch.rand(lru.d_hidden, generator=g, dtype=torch.float64)
        lru.nu_log.copy_(torch.log(-torch.log(r)))
        lru.gamma_log.copy_(torch.log(torch.sqrt(1 - r ** 2)))
    return lru


class MyNet(nn.Module):
    """The issue's example."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 64)
        self.lru = LRU(64, 128)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lru(self.inp(x))))


class TwoSizes(nn.Module):
    """Two LRU stacks of different widths and state sizes, a full-skip LRU that changes the width."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 24)
        self.lru1 = _ring(LRU(24, 16, r_min=0.5, r_max=0.99), 0.5, 0.999, 1)
        self.mid = nn.Linear(24, 20)
        self.lru2 = LRU(20, 40, skip="full", d_output=12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.lru2(F.gelu(self.mid(F.gelu(self.lru1(self.enc(x)))))))


class RMSBlock(nn.Module):
    def __init__(self, d: int, n: int):
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.lru = LRU(d, n)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return x + self.out(F.silu(self.lru(self.norm(x))))


class TokenRMS(nn.Module):
    """A token language model: embedding, two pre-RMSNorm residual LRU blocks, tied decoder."""

    def __init__(self, vocab: int = 50, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([RMSBlock(d, 24), RMSBlock(d, 16)])
        self.norm = nn.RMSNorm(d)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.emb.weight.T


class GatedMLP(nn.Module):
    """A continuous model: LRU beside an MLP, mixed by a learned sigmoid gate, then LayerNorm."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 32)
        self.lru = _ring(LRU(32, 48), 0.9, 0.9999, 2)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.gate = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.enc(x)
        g = torch.sigmoid(self.gate(h))
        h = self.norm(h + g * self.lru(h) + (1 - g) * self.mlp(h))
        return self.head(h)


class MeanClassifier(nn.Module):
    """A pooled token classifier: embedding, LRU, LayerNorm, mean over time, MLP head, log_softmax."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.lru = LRU(16, 32)
        self.norm = nn.LayerNorm(16)
        self.pool = Pool("mean")
        self.head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, ids):
        return F.log_softmax(self.head(self.pool(self.norm(self.lru(self.emb(ids))))), dim=-1)


class LastRegressor(nn.Module):
    """A continuous sequence-to-one model: last position after two LRU layers."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 16)
        self.lrus = nn.Sequential(LRU(16, 8), nn.Tanh(), LRU(16, 20))
        self.pool = Pool("last")
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.pool(self.lrus(self.enc(x))))


def _input(model: nn.Module, batch: int, seq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if emb:
        return rng.integers(0, emb[0].num_embeddings, (batch, seq), dtype=np.int64)
    d_in = next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features
    return rng.normal(size=(batch, seq, d_in)).astype(np.float32)


def _eager(model64: nn.Module, x: np.ndarray, states: dict, positions: bool = False):
    xt = torch.from_numpy(x)
    xt = xt if xt.dtype == torch.int64 else xt.double()
    st = {k.removeprefix("state."): torch.from_numpy(v).double() for k, v in states.items()}
    with torch.no_grad(), carrying(model64, st, positions=positions) as out:
        y = model64(xt)
    return y.numpy(), {k: v.numpy() for k, v in out.items()}


ARCHS = {"mynet": MyNet, "two_sizes": TwoSizes, "token_rms": TokenRMS, "gated_mlp": GatedMLP,
         "mean_classifier": MeanClassifier, "last_regressor": LastRegressor}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every architecture exported once (fp32 and fp16); name -> (eager model, folder)."""
    out = {}
    for i, (name, cls) in enumerate(ARCHS.items()):
        torch.manual_seed(i)
        model = cls().eval()
        x = torch.from_numpy(_input(model, 2, 40, i))
        folder = export_module(model, (x,), tmp_path_factory.mktemp("exp") / name, long_seq=1024)
        out[name] = (model, folder)
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_export_matches_eager_model(exported, name):
    model, folder = exported[name]
    m = ExportManifest.read(folder)
    assert m.is_module and m.precisions == ["fp32", "fp16"]
    assert lint_export(folder).ok
    model64 = __import__("copy").deepcopy(model).double().eval()
    spec = m.spec("prefill")
    rng = np.random.default_rng(7)
    x = _input(model, 3, 150, 7)
    states = {t.name: (rng.normal(scale=0.5, size=[3 if d == "batch" else d for d in t.shape])
                       .astype(np.float32)) for t in spec.state_inputs}
    if "pool_count" in states:
        states["pool_sum"] *= 4
        states["pool_count"] = np.full((3, 1), 4.0, np.float32)
    want, want_states = _eager(model64, x, states)
    for prec in ("fp32", "fp16"):
        sess = open_session(folder, precision=prec)
        got, got_states = sess.prefill(x, states)
        err = rel_l2(got, want)
        assert err <= BOUND[prec], (name, prec, err)
        atol, rtol = ELEMENT[prec]
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
        for k, v in want_states.items():
            key = k if k.startswith("pool_") else ContractName(k)
            assert rel_l2(got_states[key], v) <= BOUND[prec], (name, prec, key)
        # step by step from the same state gives the prefill's outputs (continuity)
        st, steps = states, []
        for t in range(12):
            y, st = sess.step(x[:, t], st)
            steps.append(y)
        ref12, _ = _eager(model64, x[:, :12], states, positions=True)
        got12 = np.stack(steps, axis=1)
        assert rel_l2(got12, ref12) <= BOUND[prec], (name, prec)


def ContractName(layer: str) -> str:  # noqa: N802
    return contract.ModuleConfig.state_name(layer)


@pytest.mark.parametrize("name", ["mynet", "gated_mlp", "mean_classifier", "last_regressor"])
def test_check_passes_with_10k_step_drift(exported, name, tmp_path):
    _, folder = exported[name]
    report = check(folder, options=CheckOptions(quick=True, drift_steps=10000), report_dir=tmp_path / "report")
    assert report["pass"], name
    for prec in ("fp32", "fp16"):
        drift = [r for r in report["precisions"][prec]["rows"] if r["kind"] == "drift"]
        assert drift and all(r["rel_l2"] <= DRIFT[prec] for r in drift), (name, prec)
        assert "10000 step" in drift[0]["case"]


def test_drift_10k_steps_against_eager_model(exported):
    """10,000 consecutive step calls (fp32 and fp16) against the eager model's outputs at every position."""
    model, folder = exported["gated_mlp"]
    model64 = __import__("copy").deepcopy(model).double().eval()
    x = _input(model, 1, 10000, 3)
    want, want_states = _eager(model64, x, {})
    for prec in ("fp32", "fp16"):
        sess = ort.InferenceSession(str(folder / prec / "step.onnx"), providers=["CPUExecutionProvider"])
        st = {"state.lru": np.zeros((1, 2, 48), np.float32)}
        ys = []
        for t in range(x.shape[1]):
            y, h = sess.run(None, {"inputs": x[:, t], **st})
            st = {"state.lru": h}
            ys.append(y)
        got = np.stack(ys, axis=1)
        windows = [rel_l2(got[:, s:s + 500], want[:, s:s + 500]) for s in range(0, 10000, 500)]
        assert max(windows) <= DRIFT[prec], (prec, max(windows))
        assert rel_l2(st["state.lru"], want_states["lru"]) <= DRIFT[prec]


class ConvOverTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.lru = LRU(8, 8)
        self.conv = nn.Conv1d(8, 8, kernel_size=3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.lru(self.inp(x))
        return self.head(self.conv(h.transpose(1, 2)).transpose(1, 2))


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.lru = LRU(4, 8)

    def forward(self, x):
        return torch.cumsum(self.lru(x), dim=1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.lru = LRU(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.lru(x)
        return self.attn(h, h, h, need_weights=False)[0]


def test_conv1d_over_time_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ExportError) as e:
        export_module(ConvOverTime().eval(), (torch.randn(2, 10, 4),), tmp_path / "conv")
    assert "module 'conv' (Conv1d) mixes positions" in e.value.message
    assert not (tmp_path / "conv").exists()


@pytest.mark.parametrize("cls, where", [(Cumsum, "Cumsum.forward"), (Attention, "module 'attn' (MultiheadAttention)")])
def test_other_position_mixing_is_refused(tmp_path, cls, where):
    torch.manual_seed(0)
    x = torch.randn(2, 10, 4 if cls is Cumsum else 8)
    with pytest.raises(ExportError) as e:
        export_module(cls().eval(), (x,), tmp_path / "m")
    assert where in e.value.message
    assert not (tmp_path / "m").exists()


def test_pointwise_conv1d_is_accepted(tmp_path):
    """A kernel-1 Conv1d over channels acts on each position alone: no refusal."""

    class Pointwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.lru = LRU(6, 8)
            self.conv = nn.Conv1d(6, 3, kernel_size=1)

        def forward(self, x):
            return self.conv(self.lru(x).transpose(1, 2)).transpose(1, 2)

    torch.manual_seed(0)
    folder = export_module(Pointwise().eval(), (torch.randn(2, 9, 6),), tmp_path / "pw", precision=("fp32",),
                           long_seq=256)
    assert ExportManifest.read(folder).spec("step").output_names == ["outputs", "state.lru_out"]


def test_refusals_list_every_problem(tmp_path):
    class NoLRU(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ExportError) as e:
        export_module(NoLRU(), (torch.randn(1, 1, 3),), tmp_path / "x", precision=("fp64",), chunk=3)
    text = e.value.render()
    for bit in ("precision 'fp64' is unknown", "chunk must be a power of two", "batch and seq must be >= 2",
                "has no lru_deploy.nn.LRU layer"):
        assert bit in text
    assert not (tmp_path / "x").exists()


def test_layer_called_twice_is_refused(tmp_path):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lru = LRU(4, 4)

        def forward(self, x):
            return self.lru(self.lru(x))

    with pytest.raises(ExportError, match="called 2 times"):
        export_module(Twice().eval(), (torch.randn(2, 5, 4),), tmp_path / "t")


def test_contract_and_reference_in_manifest(exported):
    _, folder = exported["two_sizes"]
    m = ExportManifest.read(folder)
    spec = m.spec("prefill")
    assert spec.input_names == ["inputs", "state.lru1", "state.lru2"]
    assert [list(t.shape) for t in spec.state_inputs] == [["batch", 2, 16], ["batch", 2, 40]]
    assert spec.output_names == ["outputs", "state.lru1_out", "state.lru2_out"]
    assert sorted(m.reference) == ["prefill"] and (folder / "reference" / "prefill.pt2").is_file()
    _, folder = exported["mean_classifier"]
    spec = ExportManifest.read(folder).spec("step")
    assert spec.input_names == ["input_ids", "state.lru", "pool_sum", "pool_count"]
    assert [list(t.shape) for t in spec.outputs] == [["batch", 5], ["batch", 2, 32], ["batch", 16], ["batch", 1]]
    # the reference backend runs the saved program, not the eager model
    sess = open_session(folder, backend="reference")
    ids = _input(exported["mean_classifier"][0], 2, 30, 1)
    got, _ = sess.prefill(ids)
    want, _ = _eager(__import__("copy").deepcopy(exported["mean_classifier"][0]).double(), ids, {})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert math.isclose(float(np.exp(got).sum(-1).mean()), 1.0, rel_tol=1e-5)
