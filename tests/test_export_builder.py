"""The graph builder: hierarchical names, bfloat16 rounding, and the complex multiply on (re, im) planes."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from lru_deploy.export.builder import GraphBuilder, bf16_bits, complex_mul, planes
from lru_deploy.runtime.onnxruntime import ort_session


def test_bf16_bits_round_to_nearest_even():
    ml_dtypes = pytest.importorskip("ml_dtypes")  # ships with onnx; an independent bf16 conversion
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=1000) * 10.0 ** rng.integers(-30, 30, 1000),
                        [1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.0e38]]).astype(np.float32)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want)
    assert bf16_bits(np.array([1.0 + 2 ** -8], np.float32))[0] == bf16_bits(np.array([1.0], np.float32))[0]


def test_names_follow_the_scopes_and_stay_unique():
    g = GraphBuilder("t")
    with g.scope("layers.2"), g.scope("lru"):
        a = g.op("Mul", "x", "x")
        b = g.op("Mul", a, "x")
        c = g.const(np.zeros(2), name="Lend")
    assert [n.name for n in g.nodes] == ["/layers.2/lru/Mul", "/layers.2/lru/Mul_1"]
    assert (a, b, c) == ("/layers.2/lru/Mul/output_0", "/layers.2/lru/Mul_1/output_0", "/layers.2/lru/Lend")
    assert g.op("Relu", b, out="y") == "y" and g.nodes[-1].name == "/Relu"


def _run(g: GraphBuilder, out: str, feeds: dict) -> np.ndarray:
    vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    g.op("Identity", out, out="y")
    m = helper.make_model(helper.make_graph(g.nodes, "t", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                          None)],
                                            initializer=g.inits), opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    sess, _ = ort_session(m, "fp32")
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("plane_axis, lead", [(0, ()), (1, (3,))])
def test_complex_mul_is_a_complex_product(plane_axis, lead):
    """lk * z by planes against numpy's complex product, for both plane layouts the graphs use."""
    rng = np.random.default_rng(0)
    N = 6
    lk = rng.normal(size=N) + 1j * rng.normal(size=N)
    z = rng.normal(size=lead + (N,)) + 1j * rng.normal(size=lead + (N,))
    zp = np.stack([z.real, z.imag], axis=plane_axis).astype(np.float32)  # [(3,) 2, N]
    A, Bm = planes(lk, 0, (2, N))
    g = GraphBuilder("t")
    got = _run(g, complex_mul(g, "z", A, Bm, plane_axis), {"z": zp})
    want = lk * zp.take(0, plane_axis).astype(np.float64) + 1j * lk * zp.take(1, plane_axis)
    np.testing.assert_allclose(got.take(0, plane_axis), want.real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.take(1, plane_axis), want.imag, rtol=1e-5, atol=1e-5)
