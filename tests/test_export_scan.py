"""The LRU layer's pieces: lambda powers, the Toeplitz matrices, and the step recurrence against plain numpy."""
import numpy as np
from onnx import TensorProto, helper

from lru_deploy.export.builder import GraphBuilder
from lru_deploy.export.scan import LRUWeights, lam_pow, lru_step, scan_reach, scan_steps, toeplitz_mats
from lru_deploy.runtime.onnxruntime import ort_session


def test_toeplitz_matrices_apply_the_recurrence():
    """Laug @ [local inputs; carry] equals a plain complex recurrence started from the carry."""
    rng = np.random.default_rng(4)
    N, T = 5, 7
    lam = 0.999 * np.exp(1j * rng.uniform(0, np.pi, N)) * rng.uniform(0.5, 1.0, N)
    b = rng.normal(size=(N, T)) + 1j * rng.normal(size=(N, T))
    h0 = rng.normal(size=N) + 1j * rng.normal(size=N)
    want = np.zeros((N, T), complex)
    x = h0
    for t in range(T):
        x = lam * x + b[:, t]
        want[:, t] = x
    Laug, Lend = toeplitz_mats(lam, T)
    v = np.concatenate([b.real, b.imag, h0.real[:, None], h0.imag[:, None]], axis=1)  # (N, 2T+2)
    out = np.einsum("nij,nj->ni", Laug, v)
    np.testing.assert_allclose(out[:, :T] + 1j * out[:, T:], want, rtol=1e-12, atol=1e-12)
    end = np.einsum("nij,nj->ni", Lend, v[:, :2 * T])  # chunk end with zero carry-in
    x = np.zeros(N, complex)
    for t in range(T):
        x = lam * x + b[:, t]
    np.testing.assert_allclose(end[:, 0] + 1j * end[:, 1], x, rtol=1e-12, atol=1e-12)


def test_lam_pow_is_exact_for_large_powers():
    lam = np.array([0.99999 * np.exp(0.3j), 0.5 * np.exp(-2j)])
    k = 65536
    want = np.array([complex(x) ** k for x in lam])  # repeated squaring in Python complex, float64
    np.testing.assert_allclose(lam_pow(lam, k), want, rtol=1e-9, atol=1e-300)


def test_scan_steps_reach_max_seq():
    for max_seq, chunk in [(1, 32), (32, 32), (33, 32), (65536, 32), (65536, 64), (100, 3)]:
        n = scan_steps(max_seq, chunk)
        assert scan_reach(max_seq, chunk) == chunk * (2 ** n - 1) >= max_seq
        assert n == 1 or chunk * (2 ** (n - 1) - 1) < max_seq  # no step more than needed


def test_step_recurrence_against_numpy():
    """lru_step in float32 against x = lambda h + B~ u and y = Re(C x) in float64."""
    rng = np.random.default_rng(3)
    N, H, batch = 5, 4, 3
    lam = 0.99999 * np.exp(1j * rng.uniform(0, np.pi, N))
    Bt = rng.normal(size=(N, H)) + 1j * rng.normal(size=(N, H))
    C = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
    w = LRUWeights(lam, np.concatenate([Bt.real.T, Bt.imag.T], 1), np.concatenate([C.real.T, -C.imag.T], 0),
                   np.zeros(H))
    u = rng.normal(size=(batch, H)).astype(np.float32)
    h = rng.normal(size=(batch, 2, N)).astype(np.float32)
    g = GraphBuilder("t")
    y, x = lru_step(g, w, "u", "h")
    g.op("Identity", y, out="y")
    g.op("Identity", x, out="x")
    f32 = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    m = helper.make_model(helper.make_graph(g.nodes, "t", [f32("u", [batch, H]), f32("h", [batch, 2, N])],
                                            [f32("y", None), f32("x", None)], initializer=g.inits),
                          opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    sess, _ = ort_session(m, "fp32")
    got_y, got_x = sess.run(None, {"u": u, "h": h})
    want_x = lam * (h[:, 0] + 1j * h[:, 1]) + u.astype(np.float64) @ Bt.T
    np.testing.assert_allclose(got_x[:, 0] + 1j * got_x[:, 1], want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_y, (want_x @ C.T).real, rtol=1e-5, atol=1e-5)
