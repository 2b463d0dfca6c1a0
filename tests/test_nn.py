"""lru_deploy.nn: the LRU layer (parameters, initialisation, math, state), Pool, and from_module/swap.

The public implementations are stood in for by small layers with their parameter layouts and their forward
written here from their documented recurrence (x_k = lambda x_{k-1} + gamma * B u_k, y_k = Re(C x_k) + D u_k):
Gothos LRU-pytorch and lru-reduction (complex B (N, H_in) and C (H_out, N), full D (H_out, H_in)) and lrnnx
(B_re/B_im/C_re/C_im, diagonal D). Where Gothos LRU-pytorch is installed, its own layer is converted too.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lru_deploy import model as native
from lru_deploy.errors import ConfigError
from lru_deploy.nn import LRU, Pool, carrying, from_module, swap

PARAMS = ["nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D"]


def _loop(lam, B, C, D, x):
    """The recurrence, one position at a time, complex128."""
    h = torch.zeros(x.shape[0], lam.shape[0], dtype=torch.complex128)
    ys = []
    for t in range(x.shape[1]):
        u = x[:, t].to(torch.float64)
        h = lam * h + u.to(torch.complex128) @ B.T
        ys.append((h @ C.T).real + (u * D if D.dim() == 1 else u @ D.T))
    return torch.stack(ys, 1)


class ComplexLayout(nn.Module):
    """Gothos LRU-pytorch / lru-reduction layout: LRU(in_features, out_features, state_features)."""

    def __init__(self, d_in, d_out, n, delay: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.D = nn.Parameter(torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in))
        self.nu_log = nn.Parameter(torch.log(-torch.log(0.5 + 0.49 * torch.rand(n, generator=g))))
        self.theta_log = nn.Parameter(torch.log(6.28 * torch.rand(n, generator=g)))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - torch.exp(-2 * torch.exp(self.nu_log.detach())))))
        self.B = nn.Parameter(torch.complex(torch.randn(n, d_in, generator=g), torch.randn(n, d_in, generator=g)))
        self.C = nn.Parameter(torch.complex(torch.randn(d_out, n, generator=g), torch.randn(d_out, n, generator=g)))
        self.delay = delay

    def forward(self, x):
        lam = torch.exp(-torch.exp(self.nu_log.double()) + 1j * torch.exp(self.theta_log.double()))
        B = self.B.to(torch.complex128) * torch.exp(self.gamma_log.double())[:, None]
        y = _loop(lam, B, self.C.to(torch.complex128), self.D.double(), x)
        if self.delay:  # a port whose output lags one position: not the paper's layer
            y = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)
        return y.to(x.dtype)


class SplitLayout(nn.Module):
    """lrnnx layout: LRU(d_model, d_state) with B_re/B_im/C_re/C_im and a diagonal D."""

    def __init__(self, d, n):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.nu_log = nn.Parameter(torch.log(-torch.log(0.3 + 0.69 * torch.rand(n, generator=g))))
        self.theta_log = nn.Parameter(torch.log(6.28 * torch.rand(n, generator=g)))
        self.gamma_log = nn.Parameter(torch.randn(n, generator=g) * 0.1 - 0.5)
        self.B_re = nn.Parameter(torch.randn(n, d, generator=g))
        self.B_im = nn.Parameter(torch.randn(n, d, generator=g))
        self.C_re = nn.Parameter(torch.randn(d, n, generator=g))
        self.C_im = nn.Parameter(torch.randn(d, n, generator=g))
        self.D = nn.Parameter(torch.randn(d, generator=g))

    def forward(self, x):
        lam = torch.exp(-torch.exp(self.nu_log.double()) + 1j * torch.exp(self.theta_log.double()))
        B = torch.complex(self.B_re.double(), self.B_im.double()) * torch.exp(self.gamma_log.double())[:, None]
        return _loop(lam, B, torch.complex(self.C_re.double(), self.C_im.double()), self.D.double(), x).to(x.dtype)


def test_parameters_and_initialisation():
    torch.manual_seed(0)
    m = LRU(64, 512, r_min=0.4, r_max=0.9, max_phase=math.pi)
    assert [n for n, _ in m.named_parameters()] == PARAMS
    shapes = {n: list(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"nu_log": [512], "theta_log": [512], "gamma_log": [512], "B_re": [512, 64], "B_im": [512, 64],
                      "C_re": [64, 512], "C_im": [64, 512], "D": [64]}
    r = torch.exp(-torch.exp(m.nu_log.detach().double()))
    assert 0.4 <= float(r.min()) and float(r.max()) <= 0.9
    # |lambda|^2 uniform on [r_min^2, r_max^2] (appendix A): its mean is the midpoint
    assert abs(float((r ** 2).mean()) - (0.4 ** 2 + 0.9 ** 2) / 2) < 0.03
    phase = torch.exp(m.theta_log.detach().double())
    assert 0 <= float(phase.min()) and float(phase.max()) <= math.pi
    np.testing.assert_allclose(torch.exp(m.gamma_log.detach().double()), torch.sqrt(1 - r ** 2), rtol=1e-6)
    assert abs(float(m.B_re.detach().std()) - 1 / math.sqrt(128)) < 0.01
    assert abs(float(m.C_re.detach().std()) - 1 / math.sqrt(512)) < 0.005


def test_bad_arguments_are_one_config_error():
    with pytest.raises(ConfigError) as e:
        LRU(0, 4, r_min=0.9, r_max=0.5, max_phase=7.0)
    assert len(e.value.problems) == 3


def test_forward_is_the_native_layer_and_the_recurrence():
    torch.manual_seed(1)
    m = LRU(6, 10).double()
    x = torch.randn(3, 17, 6, dtype=torch.float64)
    y = m(x)
    ref = native.LRU(6, 10)
    ref.load_state_dict(m.state_dict())
    y_native, _ = ref.double()(x, torch.zeros(3, 10, dtype=torch.complex128))
    np.testing.assert_allclose(y.detach(), y_native.detach(), rtol=1e-12, atol=1e-12)
    lam = torch.exp(-torch.exp(m.nu_log) + 1j * torch.exp(m.theta_log))
    B = torch.complex(m.B_re, m.B_im) * torch.exp(m.gamma_log)[:, None]
    want = _loop(lam.detach(), B.detach(), torch.complex(m.C_re, m.C_im).detach(), m.D.detach(), x)
    np.testing.assert_allclose(y.detach(), want, rtol=1e-10, atol=1e-12)


def test_gradients_flow_for_training():
    torch.manual_seed(2)
    m = LRU(4, 8)
    m(torch.randn(2, 9, 4)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_state_split_is_exact():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 8), LRU(8, 6), nn.GELU(), LRU(8, 5), nn.LayerNorm(8), Pool("mean")).double()
    x = torch.randn(2, 23, 3, dtype=torch.float64)
    with torch.no_grad(), carrying(net) as whole:
        y = net(x)
    with torch.no_grad(), carrying(net) as a:
        net(x[:, :10])
    with torch.no_grad(), carrying(net, a) as b:
        y2 = net(x[:, 10:])
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    assert sorted(b) == ["1", "3", "pool_count", "pool_sum"]
    for k in whole:
        np.testing.assert_allclose(b[k], whole[k], rtol=1e-12, atol=1e-12)
    assert list(whole["1"].shape) == [2, 2, 6]
    # outside `carrying` the layers start from zeros and keep no state
    with torch.no_grad():
        np.testing.assert_allclose(net(x), y, rtol=1e-12)


def test_pool_last_and_mean():
    x = torch.randn(2, 5, 3)
    np.testing.assert_allclose(Pool("last")(x), x[:, -1])
    np.testing.assert_allclose(Pool("mean")(x), x.mean(1), rtol=1e-6)
    with pytest.raises(ConfigError):
        Pool("max")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_module_complex_layout(dtype):
    src = ComplexLayout(7, 5, 12)
    for name in ("D", "nu_log", "theta_log", "gamma_log"):  # real parameters only: .to(dtype) would drop Im(B)
        getattr(src, name).data = getattr(src, name).data.to(dtype)
    m = from_module(src)
    assert m.skip == "full" and (m.d_model, m.d_output, m.d_hidden) == (7, 5, 12)
    assert m.nu_log.dtype == dtype
    x = torch.randn(2, 11, 7, dtype=dtype)
    np.testing.assert_allclose(m(x).detach(), src(x).detach(), rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_from_module_split_layout():
    src = SplitLayout(6, 9)
    m = from_module(src)
    assert m.skip == "diagonal"
    for n in PARAMS:
        assert torch.equal(getattr(m, n), getattr(src, n))
    x = torch.randn(3, 8, 6)
    np.testing.assert_allclose(m(x).detach(), src(x).detach(), rtol=1e-4, atol=1e-5)


def test_from_module_refuses_a_layer_that_computes_otherwise():
    with pytest.raises(ConfigError, match="disagree"):
        from_module(ComplexLayout(4, 4, 6, delay=True))
    with pytest.raises(ConfigError, match="not an LRU layer"):
        from_module(nn.Linear(3, 3))


def test_swap_inside_a_model():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 6), ComplexLayout(6, 6, 10), nn.Tanh(), nn.ModuleList([SplitLayout(6, 4)]))

    def run(n, x):
        return n[3][0](n[2](n[1](n[0](x))))

    x = torch.randn(2, 9, 3)
    before = run(net, x).detach()
    assert swap(net) == ["1", "3.0"]
    assert isinstance(net[1], LRU) and isinstance(net[3][0], LRU)
    np.testing.assert_allclose(run(net, x).detach(), before, rtol=1e-4, atol=1e-5)


def test_gothos_lru_pytorch_itself():
    LRU_pytorch = pytest.importorskip("LRU_pytorch", reason="Gothos LRU-pytorch (pip install lru-pytorch) absent")
    torch.manual_seed(6)
    src = LRU_pytorch.LRU(8, 6, 16)
    m = from_module(src)
    x = torch.randn(2, 7, 8)
    np.testing.assert_allclose(m(x).detach(), src(x).detach(), rtol=1e-4, atol=1e-5)


def test_swapped_model_exports(tmp_path):
    from lru_deploy import export_module
    from lru_deploy.manifest import ExportManifest
    torch.manual_seed(7)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 6)
            self.rnn = ComplexLayout(6, 4, 10)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.rnn(self.inp(x))))

    net = Net().eval()
    with pytest.raises(Exception, match="swap"):
        export_module(net, (torch.randn(2, 8, 3),), tmp_path / "a")
    before = copy.deepcopy(net)
    swap(net)
    folder = export_module(net, (torch.randn(2, 8, 3),), tmp_path / "b", precision=("fp32",), long_seq=128)
    assert ExportManifest.read(folder).spec("prefill").input_names == ["inputs", "state.rnn"]
    x = torch.randn(1, 20, 3)
    np.testing.assert_allclose(net(x).detach(), before(x).detach(), rtol=1e-4, atol=1e-5)
