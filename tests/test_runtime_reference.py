"""The reference session (runtime.ReferenceSession), sampling, and the byte tokenizer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lru_deploy.errors import InputError
from lru_deploy.model import gold
from lru_deploy.runtime import ReferenceSession, decode, encode, open_session, sample

RTOL, ATOL = 1e-6, 1e-6  # the session computes in float64 and returns float32


def _gold_run(model, x, st=None, step=False):
    g = gold(model)
    t = {k: torch.from_numpy(v).double() for k, v in (st or {}).items()}
    with torch.no_grad():
        fn = g.step if step else g.forward
        res = fn(torch.from_numpy(x), t.get("state"), t.get("pool_sum"), t.get("pool_count"))
    out = {"state": res.state.numpy()}
    if res.pool_sum is not None:
        out.update(pool_sum=res.pool_sum.numpy(), pool_count=res.pool_count.numpy())
    return res.outputs.numpy(), out


def _assert_state(got: dict, want: dict, rtol=RTOL, atol=ATOL):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32, k
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


VARIANTS = [dict(), dict(pooling="last"), dict(pooling="mean"), dict(d_input=3), dict(d_input=3, pooling="mean")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_and_step_match_the_model(lru, variant):
    cfg = lru.small_config(**variant)
    model = lru.make_model(cfg, seed=5)
    sess = ReferenceSession(model)
    assert sess.model.dtype == torch.float64 and model.dtype == torch.float32  # gold copy, caller's model kept
    x = lru.random_inputs(cfg, 2, 7, seed=1)
    st0 = lru.random_state(cfg, 2, seed=2)
    for st in (None, st0):
        out, st_out = sess.prefill(x, st)
        want, want_st = _gold_run(model, x, st)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
        # float64 rounded once to float32: within one float32 ulp of the gold value
        np.testing.assert_allclose(out, want, rtol=6e-8, atol=1e-12)
        _assert_state(st_out, want_st)
    out, st_out = sess.step(x[:, 0], st0)
    want, want_st = _gold_run(model, x[:, 0], st0, step=True)
    assert out.shape == (2, cfg.d_output)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    _assert_state(st_out, want_st)
    # steps through the whole sequence end where prefill ends (pooled outputs equal too)
    st = st0
    for t in range(x.shape[1]):
        step_out, st = sess.step(x[:, t], st)
        full_out, full_st = sess.prefill(x[:, :t + 1], st0)
        np.testing.assert_allclose(step_out, full_out[:, -1] if full_out.ndim == 3 else full_out,
                                   rtol=1e-5, atol=1e-6)
    _assert_state(st, full_st, rtol=1e-5, atol=1e-6)


def test_zero_state_is_start_of_sequence(lru):
    cfg = lru.small_config(pooling="mean")
    sess = ReferenceSession(lru.make_model(cfg))
    z = sess.zero_state(3)
    assert {k: (v.shape, v.dtype) for k, v in z.items()} == {
        "state": ((3, 2, 2, 5), np.float32), "pool_sum": ((3, 6), np.float32), "pool_count": ((3, 1), np.float32)}
    x = lru.random_inputs(cfg, 3, 4)
    a, sa = sess.prefill(x)
    b, sb = sess.prefill(x, z)
    np.testing.assert_array_equal(a, b)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_float32_session(lru):
    cfg = lru.small_config()
    model = lru.make_model(cfg)
    x = lru.random_inputs(cfg, 2, 6)
    want, want_st = _gold_run(model, x)
    out, st = ReferenceSession(model, dtype=torch.float32).prefill(x)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    _assert_state(st, want_st, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", [dict(), dict(pooling="last"), dict(pooling="mean", d_input=2)])
@pytest.mark.parametrize("max_seq", [1, 3, 4])
def test_long_prompt_splitting_is_exact(lru, variant, max_seq):
    cfg = lru.small_config(**variant)
    model = lru.make_model(cfg, seed=6)
    x = lru.random_inputs(cfg, 2, 10, seed=3)
    st0 = lru.random_state(cfg, 2, seed=4)
    whole = ReferenceSession(model)
    split = ReferenceSession(model)
    split.max_seq = max_seq
    calls = []
    run = split._run

    def counting(graph, feeds):
        calls.append(feeds[next(iter(feeds))].shape[1])
        return run(graph, feeds)

    split._run = counting
    a, sa = whole.prefill(x, st0)
    b, sb = split.prefill(x, st0)
    assert calls == [min(max_seq, 10 - s) for s in range(0, 10, max_seq)]
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    _assert_state(sb, sa, rtol=1e-5, atol=1e-6)


def test_session_rejects_bad_inputs(lru):
    cfg = lru.small_config()
    sess = ReferenceSession(lru.make_model(cfg))
    with pytest.raises(InputError) as ei:
        sess.prefill(np.zeros((1, 3), np.float32))
    assert "input_ids: dtype float32, want int64" in ei.value.problems
    with pytest.raises(InputError) as ei:
        sess.prefill(np.array([[1, 13]]), {"state": np.zeros((2, 2, 2, 5), np.float32)})
    assert len(ei.value.problems) == 2
    with pytest.raises(InputError):
        sess.step(np.zeros((1, 2), np.int64))
    ids = np.array([[1, 2, 3]], dtype=np.uint8)  # unsigned ids are widened
    np.testing.assert_array_equal(sess.prefill(ids)[0], sess.prefill(ids.astype(np.int64))[0])


def test_open_session(model_dir, token_model, tmp_path):
    sess = open_session(model_dir)
    assert isinstance(sess, ReferenceSession) and sess.backend == "reference"
    x = np.array([[1, 2, 3, 4]], np.int64)
    np.testing.assert_allclose(sess.prefill(x)[0], _gold_run(token_model, x)[0], rtol=RTOL, atol=ATOL)
    with pytest.raises(InputError) as ei:
        open_session(tmp_path / "nothing")
    assert ei.value.hint


# ----------------------------------------------------------------------------- generate
def test_generate_is_deterministic_and_greedy_is_argmax(lru):
    cfg = lru.small_config(vocab_size=11, d_output=11)
    model = lru.make_model(cfg, seed=8)
    sess = ReferenceSession(model)
    prompt = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    a = np.stack(list(sess.generate(prompt, max_new_tokens=12, temperature=1.0, top_k=5, seed=3)), axis=1)
    b = np.stack(list(sess.generate(prompt, max_new_tokens=12, temperature=1.0, top_k=5, seed=3)), axis=1)
    assert a.shape == (2, 12) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 11
    greedy = np.stack(list(sess.generate(prompt, max_new_tokens=8, temperature=0, seed=0)), axis=1)
    g = gold(model)
    ids = torch.from_numpy(prompt)
    want = []
    with torch.no_grad():
        for _ in range(8):
            nxt = g(ids).outputs[:, -1].argmax(-1)
            want.append(nxt.numpy())
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    np.testing.assert_array_equal(greedy, np.stack(want, axis=1))
    one = list(sess.generate(np.array([1, 2, 3]), max_new_tokens=3, temperature=0))  # [seq] prompt
    np.testing.assert_array_equal(np.concatenate(one), greedy[0, :3])


def test_generate_refuses_what_it_cannot_do(lru):
    with pytest.raises(InputError, match="token model"):
        next(ReferenceSession(lru.make_model(lru.small_config(d_input=3))).generate(np.zeros((1, 2, 3))))
    with pytest.raises(InputError, match="pooling"):
        next(ReferenceSession(lru.make_model(lru.small_config(pooling="mean"))).generate(np.zeros((1, 2))))
    with pytest.raises(InputError, match="seq >= 1"):
        next(ReferenceSession(lru.make_model(lru.small_config())).generate(np.zeros((1, 0))))


# ----------------------------------------------------------------------------- sample
def test_sample_greedy_is_argmax():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 9)).astype(np.float32)
    np.testing.assert_array_equal(sample(logits, 0.0, 0, rng), logits.argmax(-1))
    np.testing.assert_array_equal(sample(logits, 0.0, 3, rng), logits.argmax(-1))


@pytest.mark.parametrize("temperature, top_k", [(1.0, 3), (0.7, 1), (2.0, 5), (1.0, 0), (1.0, 8)])
def test_sample_distribution_and_top_k(temperature, top_k):
    """Frequencies over many rows match softmax(logits / T) restricted to the top k."""
    logits = np.array([0.3, 2.0, -1.0, 1.2, 0.9, -0.5, 1.9, 0.0])
    n = 40000
    rows = np.tile(logits, (n, 1))
    got = sample(rows, temperature, top_k, np.random.default_rng(1))
    k = top_k if 0 < top_k < len(logits) else len(logits)
    keep = np.argsort(-logits)[:k]
    assert set(np.unique(got)) <= set(keep.tolist())
    p = np.zeros_like(logits)
    p[keep] = np.exp(logits[keep] / temperature)
    p /= p.sum()
    freq = np.bincount(got, minlength=len(logits)) / n
    np.testing.assert_allclose(freq, p, atol=0.01, rtol=0)  # 5 sigma of a 40000-draw binomial is < 0.0125


def test_sample_is_reproducible():
    logits = np.random.default_rng(2).standard_normal((4, 30))
    a = sample(logits, 0.9, 10, np.random.default_rng(7))
    b = sample(logits, 0.9, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


class _ZeroRng:
    """A generator stub whose uniform draw is exactly 0.0 (a value rng.random() can return)."""

    def random(self, n):
        return np.zeros(n)


def test_sample_never_picks_a_token_outside_top_k_even_for_u_zero():
    logits = np.array([[0.0, 5.0, 1.0, 4.0]])
    assert sample(logits, 1.0, 2, _ZeroRng())[0] in (1, 3)


# ----------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("text", ["", "def f(x):\n    return x", "naïve café ✓ 日本", "\x00\xff"])
def test_encode_decode_round_trip(text):
    ids = encode(text)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(ids[None]) == text  # any shape


def test_decode_replaces_invalid_utf8():
    assert decode(np.array([104, 105, 0xff])) == "hi\ufffd"
    assert decode(encode("é")[:1]) == "\ufffd"
