"""The LRU layer in ONNX: the chunked parallel scan of the prefill graph and the recurrence of the step graph.

Both take the layer's input in the graph's reduced type and return `(y, final_state)`: y = Re(C x) in the
reduced type (the skip D u is the caller's), the state float32 [batch, 2, N] with planes (re, im).

Prefill, real arithmetic, T = chunk, C = number of chunks, positions in (t, b, c) order (see PrefillLayout):
    bu  = Wb' x^T                        [N, 2T, B*C]  one Gemm; Wb' rows (n, p); per channel rows (p, t)
    E   = local state at each chunk's end, zero carry-in     [N, 2, B*C]   (the intra-chunk strategy)
    S   = scan over [h0, E_0..E_{C-1}]   [N, 2, B, C+1] Hillis-Steele, multipliers lambda^(T*2^j), fixed steps
    x   = local states plus lambda^(t+1) * carry_in          [N, 2T, B*C]  (the intra-chunk strategy)
    y   = x^T Wc'                        [T*B*C, H]    one Gemm (transA)
Every lambda power is computed in float64 from lambda's modulus and angle at export and rounded once.

Step: x = lambda * h + B u with lambda held as a two-term float32 sum (hi + lo).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .builder import GraphBuilder, complex_mul, planes, swap_planes

INTRA = ("toeplitz", "shift")


@dataclass
class LRUWeights:
    """One LRU layer's weights in float64, in the layouts the graphs use."""
    lam: np.ndarray  # (N,) complex128
    Wb: np.ndarray  # (H_in, 2N): [Re(B~)^T | Im(B~)^T], B~ = B * exp(gamma_log) per channel
    Wc: np.ndarray  # (2N, H_out): [Re(C)^T ; -Im(C)^T], so that [Re x | Im x] @ Wc = Re(C x)
    D: np.ndarray  # (H,) diagonal or (H_out, H_in) full skip, as stored

    @staticmethod
    def from_lru(lru) -> "LRUWeights":
        """From a module with the native parameters (nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D)."""
        f = lambda t: t.detach().double().numpy()  # noqa: E731
        lam = np.exp(-np.exp(f(lru.nu_log)) + 1j * np.exp(f(lru.theta_log)))
        Bn = (f(lru.B_re) + 1j * f(lru.B_im)) * np.exp(f(lru.gamma_log))[:, None]
        Wb = np.concatenate([Bn.real.T, Bn.imag.T], axis=1)
        Wc = np.concatenate([f(lru.C_re).T, -f(lru.C_im).T], axis=0)
        return LRUWeights(lam, Wb, Wc, f(lru.D))

    @property
    def N(self) -> int:
        return self.lam.shape[0]


def lam_pow(lam: np.ndarray, k) -> np.ndarray:
    """lambda**k in float64 from modulus and angle (exact to rounding, never lambda**-k)."""
    k = np.asarray(k, dtype=np.float64)
    return np.abs(lam) ** k * np.exp(1j * np.angle(lam) * k)


def toeplitz_mats(lam: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Laug (N, 2T, 2T+2): lambda^(t-s) blocks plus lambda^(t+1) carry columns; Lend (N, 2, 2T): its chunk-end rows."""
    N = lam.shape[0]
    t = np.arange(T)
    diff = t[:, None] - t[None, :]
    P = lam_pow(lam[:, None, None], np.maximum(diff, 0)[None]) * (diff >= 0)[None]  # (N, T, T)
    c = lam_pow(lam[:, None], (t + 1)[None])  # (N, T)
    L = np.zeros((N, 2 * T, 2 * T + 2))
    L[:, :T, :T], L[:, :T, T:2 * T], L[:, T:, :T], L[:, T:, T:2 * T] = P.real, -P.imag, P.imag, P.real
    L[:, :T, 2 * T], L[:, :T, 2 * T + 1], L[:, T:, 2 * T], L[:, T:, 2 * T + 1] = c.real, -c.imag, c.imag, c.real
    Lend = L[:, [T - 1, 2 * T - 1], :2 * T]
    return L, Lend


def scan_steps(max_seq: int, chunk: int) -> int:
    """Hillis-Steele steps over the chunk ends: enough for ceil(max_seq / chunk) chunks plus the initial state."""
    return max(1, math.ceil(math.log2(math.ceil(max_seq / chunk) + 1)))


def scan_reach(max_seq: int, chunk: int) -> int:
    """The longest sequence the scan's fixed steps carry exactly: T * (2^steps - 1) positions."""
    return chunk * (2 ** scan_steps(max_seq, chunk) - 1)


class PrefillLayout:
    """The prefill graph's shape tensors (int64) and position order, made once per graph.

    Positions run in (t, b, c) order inside the graph: the rows of the residual stream are position t of chunk c
    of sequence b, so every chunk's T positions are columns of one channel's matrix without a transpose. The
    input is padded at the right to a multiple of T once and reordered (b, c, t) -> (t, b, c); outputs go back
    to sequence order at the end. Padded positions come after every real one, so they change nothing that is
    read; the final state sits at position seq-1, that is t = r, c = C-1.
    """

    def __init__(self, g: GraphBuilder, x_name: str, chunk: int, max_seq: int, features: Optional[int]):
        self.g, self.T, self.features = g, chunk, features  # features: the input's last dim, None for token ids
        T = chunk
        with g.scope("layout"):
            shp = g.op("Shape", x_name)
            self.B1 = g.op("Slice", shp, g.i64([0]), g.i64([1]), g.i64([0]), name="batch")  # [1]
            self.S = g.op("Gather", shp, g.i64(1), axis=0, name="seq")
            self.S1 = g.op("Unsqueeze", self.S, g.i64([0]), name="seq_1d")
            self.C = g.op("Div", g.op("Add", self.S, g.i64(T - 1)), g.i64(T), name="chunks")
            Sp = g.op("Mul", self.C, g.i64(T), name="padded_seq")
            self.pad = g.op("Unsqueeze", g.op("Sub", Sp, self.S), g.i64([0]), name="pad")
            self.r = g.op("Sub", g.op("Add", self.S, g.i64(T - 1)), Sp, name="last_t")  # t of position seq-1
            self.c_last = g.op("Sub", self.C, g.i64(1), name="last_c")
            self.shape_tbc = g.op("Concat", g.i64([T]), self.B1, g.i64([-1]), axis=0, name="tbc")  # [T, B, C]
            C1 = g.op("Add", self.C, g.i64(1), name="chunks_1")
            self.C1v = g.op("Unsqueeze", C1, g.i64([0]))
            # Scan step j shifts the C+1 chunk states by k = 2^j: Pad min(k, C+1) zeros in front, keep the first
            # C+1 (padding k would build rows of C+1+k: 17x the data at seq 4096, T 32, k 2048; slicing first
            # would make an empty tensor once k > C).
            self.shift_pads = [
                g.op("Concat", g.i64([0, 0, 0]), g.op("Unsqueeze", g.op("Min", g.i64(2 ** j), C1), g.i64([0])),
                     g.i64([0, 0, 0, 0]), axis=0, name=f"shift_pad{j}")
                for j in range(scan_steps(max_seq, chunk))]

    @property
    def steps(self) -> int:
        return len(self.shift_pads)

    def to_chunks(self, x: str) -> str:
        """Graph input [B, S(, F)] -> padded and reordered [T, B, C(, F)]."""
        g, feat = self.g, [] if self.features is None else [self.features]
        with g.scope("layout/to_chunks"):
            tail = [g.i64([0])] if feat else []
            pads = g.op("Concat", g.i64([0, 0, 0] + [0] * len(feat)), self.pad, *tail, axis=0)
            x = g.op("Pad", x, pads, mode="constant")
            x = g.op("Reshape", x, g.op("Concat", self.B1, g.i64([-1, self.T] + feat), axis=0))
            return g.op("Transpose", x, perm=[2, 0, 1] + ([3] if feat else []))

    def to_sequence(self, v: str, d: int) -> str:
        """[positions, d] in (t, b, c) order -> [B, S, d] in sequence order (padding dropped)."""
        g = self.g
        with g.scope("layout/to_sequence"):
            v = g.op("Reshape", v, g.op("Concat", self.shape_tbc, g.i64([d]), axis=0))
            v = g.op("Reshape", g.op("Transpose", v, perm=[1, 2, 0, 3]), g.op("Concat", self.B1, g.i64([-1, d]),
                                                                              axis=0))
            return g.op("Slice", v, g.i64([0]), self.S1, g.i64([1]))

    def at_last(self, v: str, d: int) -> str:
        """[positions, d] -> [B, d] at position seq-1."""
        g = self.g
        with g.scope("layout/last"):
            v4 = g.op("Reshape", v, g.op("Concat", self.shape_tbc, g.i64([d]), axis=0))
            return g.op("Gather", g.op("Gather", v4, self.r, axis=0), self.c_last, axis=1)


class ToeplitzIntra:
    """Intra-chunk scan as one batched MatMul per channel: (Toeplitz of lambda^(t-s) | lambda^(t+1)) @ [X; carry]."""
    name = "toeplitz"

    def __init__(self, lam: np.ndarray, T: int):
        self.Laug, self.Lend = toeplitz_mats(lam, T)

    def local(self, g: GraphBuilder, X: str) -> tuple[str, str]:
        """X [N, 2T, B*C] -> (X, chunk-end local states [N, 2, B*C]), the Toeplitz rows t = T-1."""
        return X, g.op("MatMul", g.const(self.Lend, name="Lend"), X, name="chunk_ends")

    def with_carry(self, g: GraphBuilder, X: str, carry: str) -> str:
        return g.op("MatMul", g.const(self.Laug, name="Laug"), g.op("Concat", X, carry, axis=1), name="states")


class ShiftIntra:
    """Intra-chunk scan as log2(T) shift-multiply-add steps, then lambda^(t+1) * carry added."""
    name = "shift"

    def __init__(self, lam: np.ndarray, T: int):
        self.lam, self.T = lam, T

    def local(self, g: GraphBuilder, X: str) -> tuple[str, str]:
        N, T = self.lam.shape[0], self.T
        X = g.op("Reshape", X, g.i64([N, 2, T, -1]))  # [N, 2, T, B*C]
        k, step = 1, 0
        while k < T:
            with g.scope(f"step{step}"):
                A, Bm = planes(lam_pow(self.lam, k), 1, (N, 2, 1, 1))
                sh = g.op("Slice", g.op("Pad", X, g.i64([0, 0, k, 0, 0, 0, 0, 0]), mode="constant"),
                          g.i64([0]), g.i64([-k]), g.i64([2]))
                X = g.op("Add", X, complex_mul(g, sh, A, Bm, 1))
            k, step = k * 2, step + 1
        return X, g.op("Gather", X, g.i64(T - 1), axis=2, name="chunk_ends")

    def with_carry(self, g: GraphBuilder, X: str, carry: str) -> str:
        """x[t] = local[t] + lambda^(t+1) * carry_in on X [N, 2, T, B*C]; carry [N, 2, B*C]."""
        N, T = self.lam.shape[0], self.T
        A, Bm = planes(lam_pow(self.lam[:, None], np.arange(1, T + 1)[None]), 1, (N, 2, T, 1))
        cr = g.op("Unsqueeze", carry, g.i64([2]))  # [N, 2, 1, B*C]
        return g.op("Add", X, complex_mul(g, cr, A, Bm, 1), name="states")


INTRA_STRATEGIES = {s.name: s for s in (ToeplitzIntra, ShiftIntra)}
assert tuple(INTRA_STRATEGIES) == INTRA


def _channels_first(W: np.ndarray, N: int) -> np.ndarray:
    """Rows (p, n) -> (n, p): each channel's real and imaginary rows side by side."""
    return W.reshape(2, N, -1).transpose(1, 0, 2).reshape(2 * N, -1)


def chunk_scan(g: GraphBuilder, layout: PrefillLayout, lam: np.ndarray, E: str, h0: str) -> str:
    """Carry into every chunk [N, 2, B*C] from the chunk-end local states E [N, 2, B*C] and h0 [B, 2, N]."""
    N, T = lam.shape[0], layout.T
    with g.scope("scan"):
        h0 = g.op("Unsqueeze", g.op("Transpose", h0, perm=[2, 1, 0]), g.i64([3]))  # [N, 2, B, 1]
        E4 = g.op("Reshape", E, g.op("Concat", g.i64([N, 2]), layout.B1, g.i64([-1]), axis=0))
        Sx = g.op("Concat", h0, E4, axis=3)  # [N, 2, B, C+1]: the state before each chunk, once scanned
        for j in range(layout.steps):  # Hillis-Steele over chunk ends; shifts beyond C+1 add zeros
            with g.scope(f"step{j}"):
                A, Bm = planes(lam_pow(lam, T * 2 ** j), 1, (N, 2, 1, 1))
                sh = g.op("Slice", g.op("Pad", Sx, layout.shift_pads[j], mode="constant"), g.i64([0]),
                          layout.C1v, g.i64([3]))
                Sx = g.op("Add", Sx, complex_mul(g, sh, A, Bm, 1))
        return g.op("Reshape", g.op("Slice", Sx, g.i64([0]), g.i64([-1]), g.i64([3])), g.i64([N, 2, -1]),
                    name="carry")


def lru_prefill(g: GraphBuilder, layout: PrefillLayout, w: LRUWeights, xr: str, h0: str,
                intra: str = "toeplitz") -> tuple[str, str]:
    """x_rt [positions, H_in] in layout order, h0 float32 [B, 2, N] -> (Re(C x) reduced [positions, H_out],
    final state float32 [B, 2, N])."""
    N, T = w.N, layout.T
    strategy = INTRA_STRATEGIES[intra](w.lam, T)
    with g.scope("project_in"):  # B u with channels leading: [2N, T*B*C] = [N, (p, t), (b, c)]
        buT = g.to_f32(g.op("Gemm", g.W(_channels_first(w.Wb.T, N)), xr, transB=1))
    X = g.op("Reshape", buT, g.i64([N, 2 * T, -1]))
    with g.scope("intra"):
        X, E = strategy.local(g, X)
    carry = chunk_scan(g, layout, w.lam, E, h0)
    with g.scope("intra"):
        out = strategy.with_carry(g, X, carry)
    with g.scope("final_state"):
        fin = g.op("Reshape", out, g.op("Concat", g.i64([N, 2, T]), layout.B1, g.i64([-1]), axis=0))
        fin = g.op("Gather", g.op("Gather", fin, layout.r, axis=2), layout.c_last, axis=3)  # [N, 2, B]
        fin = g.op("Transpose", fin, perm=[2, 1, 0])  # [B, 2, N]
    with g.scope("project_out"):
        x2d = g.op("Reshape", out, g.i64([2 * N, -1]))  # rows (n, plane), columns (t, b, c)
        y = g.op("Gemm", g.to_rt(x2d), g.W(_channels_first(w.Wc, N)), transA=1)  # [T*B*C, H_out]
    return y, fin


def lru_step(g: GraphBuilder, w: LRUWeights, xr: str, h: str) -> tuple[str, str]:
    """x_rt [B, H_in], h float32 [B, 2, N] -> (Re(C x) reduced [B, H_out], x float32 [B, 2, N])."""
    N = w.N
    with g.scope("project_in"):
        bu = g.to_f32(g.op("MatMul", xr, g.W(w.Wb)))  # [B, 2N] float32
    with g.scope("recurrence"):
        # lambda as a two-term float32 sum hi + lo: the rounding of lambda itself would otherwise grow into
        # the state like k * 2^-24 over k steps (measured 1.6e-4 relative after 10k steps at 0.99999).
        A, Bm = planes(w.lam, 0, (2, N))
        A_hi, Bm_hi = A.astype(np.float32), Bm.astype(np.float32)
        sw = swap_planes(g, h, 1)
        lo = complex_mul(g, h, A - A_hi, Bm - Bm_hi, 1, swapped=sw)
        x = g.op("Add", complex_mul(g, h, A_hi, Bm_hi, 1, swapped=sw),
                 g.op("Add", g.op("Reshape", bu, g.i64([0, 2, N])), lo))
    with g.scope("project_out"):
        y = g.op("MatMul", g.to_rt(g.op("Reshape", x, g.i64([0, 2 * N]))), g.W(w.Wc))
    return y, x
