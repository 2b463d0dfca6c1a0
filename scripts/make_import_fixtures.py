"""Write the importer test fixtures in tests/fixtures/import/ with the original libraries.

Each fixture folder holds the checkpoint file as its training code saves it, `inputs.npy` (float32
[batch, seq, d_input]), `expected.npy` (the outputs the original code computes on those inputs, in float32) and
`meta.json` (the options the importer needs and the library versions that made the files).

minimal-LRU fixtures need JAX and Flax, which never go into the project's .venv. Make a throwaway venv:

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax flax numpy msgpack
    /tmp/jaxenv/bin/python scripts/make_import_fixtures.py minimal-lru

The lru-reduction fixture needs only torch (the project venv has it):

    .venv/bin/python scripts/make_import_fixtures.py lru-reduction

The models below restate the formulations of NicolasZucchet/minimal-LRU (lru/model.py: LRU, SequenceLayer,
StackedEncoderModel, ClassificationModel vmapped over the batch) and of forgi86/lru-reduction
(lru/architectures.py DLRU with DWNBlock, lru/linear.py LRU) with the same parameter and module names, so the
saved files have exactly the keys and layouts those repositories produce. Dropout is off (inference). Every
parameter is perturbed after initialisation (Flax initialises biases to 0 and norm scales to 1, which would hide
mapping mistakes), and batch-norm running statistics are set to non-trivial values.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "import"
BATCH, SEQ, D_INPUT = 2, 20, 3

# name: (norm, prenorm, pooling, d_model, d_hidden, d_output, seed)
MINIMAL_LRU = {
    "minimal_lru_layer_prenorm_none": ("layer", True, "none", 8, 12, 5, 0),
    "minimal_lru_layer_postnorm_mean": ("layer", False, "mean", 12, 8, 4, 1),
    "minimal_lru_batch_prenorm_last": ("batch", True, "last", 16, 16, 6, 2),
}


def flax_model_classes():
    """minimal-LRU's modules, restated (same names, same computation)."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    def normal_init(key, shape, dtype=jnp.float32, scale=1.0):
        return jax.random.normal(key, shape, dtype) / scale

    def nu_init(key, shape, r_min, r_max, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, dtype)
        return jnp.log(-0.5 * jnp.log(u * (r_max ** 2 - r_min ** 2) + r_min ** 2))

    def theta_init(key, shape, max_phase, dtype=jnp.float32):
        return jnp.log(max_phase * jax.random.uniform(key, shape, dtype))

    def gamma_init(key, nu_theta):
        nu_log, _ = nu_theta
        return jnp.log(jnp.sqrt(1 - jnp.exp(-jnp.exp(nu_log)) ** 2))

    @jax.vmap
    def combine(left, right):  # the associative operator of x_k = a_k x_{k-1} + b_k
        a_l, b_l = left
        a_r, b_r = right
        return a_r * a_l, a_r * b_l + b_r

    class LRU(nn.Module):
        d_hidden: int
        d_model: int
        r_min: float = 0.0
        r_max: float = 1.0
        max_phase: float = 6.28

        def setup(self):
            N, H = self.d_hidden, self.d_model
            self.theta_log = self.param("theta_log", partial(theta_init, max_phase=self.max_phase), (N,))
            self.nu_log = self.param("nu_log", partial(nu_init, r_min=self.r_min, r_max=self.r_max), (N,))
            self.gamma_log = self.param("gamma_log", gamma_init, (self.nu_log, self.theta_log))
            self.B_re = self.param("B_re", partial(normal_init, scale=math.sqrt(2 * H)), (N, H))
            self.B_im = self.param("B_im", partial(normal_init, scale=math.sqrt(2 * H)), (N, H))
            self.C_re = self.param("C_re", partial(normal_init, scale=math.sqrt(N)), (H, N))
            self.C_im = self.param("C_im", partial(normal_init, scale=math.sqrt(N)), (H, N))
            self.D = self.param("D", normal_init, (H,))

        def __call__(self, u):  # u: [T, H] (one sequence; the batch is vmapped outside)
            lam = jnp.exp(-jnp.exp(self.nu_log) + 1j * jnp.exp(self.theta_log))
            b_norm = (self.B_re + 1j * self.B_im) * jnp.exp(self.gamma_log)[:, None]
            c = self.C_re + 1j * self.C_im
            lams = jnp.broadcast_to(lam, (u.shape[0], lam.shape[0]))
            bu = jax.vmap(lambda v: b_norm @ v)(u)
            _, xs = jax.lax.associative_scan(combine, (lams, bu))
            return jax.vmap(lambda x, v: (c @ x).real + self.D * v)(xs, u)

    class SequenceLayer(nn.Module):
        lru: object
        d_model: int
        dropout: float = 0.0
        norm: str = "layer"
        prenorm: bool = False
        training: bool = True

        def setup(self):
            self.seq = self.lru()
            self.out1 = nn.Dense(self.d_model)
            self.out2 = nn.Dense(self.d_model)
            if self.norm == "layer":
                self.normalization = nn.LayerNorm()
            else:
                self.normalization = nn.BatchNorm(use_running_average=not self.training, axis_name="batch")
            self.drop = nn.Dropout(self.dropout, broadcast_dims=[0], deterministic=not self.training)

        def __call__(self, inputs):
            x = self.normalization(inputs) if self.prenorm else inputs
            x = self.drop(nn.gelu(self.seq(x)))
            x = self.drop(self.out1(x) * jax.nn.sigmoid(self.out2(x)))
            x = inputs + x
            return x if self.prenorm else self.normalization(x)

    class StackedEncoderModel(nn.Module):
        lru: object
        d_model: int
        n_layers: int
        dropout: float = 0.0
        training: bool = True
        norm: str = "batch"
        prenorm: bool = False

        def setup(self):
            self.encoder = nn.Dense(self.d_model)
            self.layers = [SequenceLayer(lru=self.lru, d_model=self.d_model, dropout=self.dropout,
                                         training=self.training, norm=self.norm, prenorm=self.prenorm)
                           for _ in range(self.n_layers)]

        def __call__(self, x):
            x = self.encoder(x)
            for layer in self.layers:
                x = layer(x)
            return x

    class ClassificationModel(nn.Module):
        lru: object
        d_output: int
        d_model: int
        n_layers: int
        dropout: float = 0.0
        training: bool = True
        pooling: str = "mean"
        norm: str = "batch"
        prenorm: bool = False

        def setup(self):
            self.encoder = StackedEncoderModel(lru=self.lru, d_model=self.d_model, n_layers=self.n_layers,
                                               dropout=self.dropout, training=self.training, norm=self.norm,
                                               prenorm=self.prenorm)
            self.decoder = nn.Dense(self.d_output)

        def __call__(self, x):
            x = self.encoder(x)
            if self.pooling == "mean":
                x = jnp.mean(x, axis=0)
            elif self.pooling == "last":
                x = x[-1]
            return nn.log_softmax(self.decoder(x), axis=-1)

    batched = nn.vmap(ClassificationModel, in_axes=0, out_axes=0,
                      variable_axes={"params": None, "dropout": None, "batch_stats": None, "cache": 0,
                                     "prime": None},
                      split_rngs={"params": False, "dropout": True}, axis_name="batch")
    return LRU, batched


def make_minimal_lru(out: Path) -> None:
    from functools import partial

    import flax
    import jax
    from flax import serialization

    LRU, BatchClassificationModel = flax_model_classes()
    for name, (norm, prenorm, pooling, d_model, d_hidden, d_output, seed) in MINIMAL_LRU.items():
        rng = np.random.default_rng(seed)
        lru = partial(LRU, d_hidden=d_hidden, d_model=d_model, r_min=0.5, r_max=0.99)
        model = BatchClassificationModel(lru=lru, d_output=d_output, d_model=d_model, n_layers=2, training=False,
                                         pooling=pooling, norm=norm, prenorm=prenorm)
        x = rng.standard_normal((BATCH, SEQ, D_INPUT)).astype(np.float32)
        variables = model.init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 100)}, x)
        variables = jax.tree_util.tree_map(np.asarray, dict(variables))
        params = jax.tree_util.tree_map(lambda a: (a + 0.1 * rng.standard_normal(a.shape)).astype(a.dtype),
                                        variables["params"])
        saved = {"params": params}
        if norm == "batch":
            stats = variables["batch_stats"]
            for layer in stats["encoder"].values():
                h = layer["normalization"]["mean"].shape
                layer["normalization"]["mean"] = (0.5 * rng.standard_normal(h)).astype(np.float32)
                layer["normalization"]["var"] = (0.5 + 1.5 * rng.random(h)).astype(np.float32)
            saved["batch_stats"] = stats
        y = np.asarray(model.apply(saved, x), dtype=np.float32)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.msgpack").write_bytes(serialization.to_bytes(saved))
        np.save(folder / "inputs.npy", x)
        np.save(folder / "expected.npy", y)
        meta = {"source": "minimal-LRU (NicolasZucchet/minimal-LRU lru/model.py), restated in this script",
                "norm": norm, "prenorm": prenorm, "pooling": pooling, "d_input": D_INPUT, "d_model": d_model,
                "d_hidden": d_hidden, "d_output": d_output, "n_layers": 2,
                "versions": {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__}}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {folder}: outputs {list(y.shape)}")


def make_lru_reduction(out: Path) -> None:
    import torch
    from torch import nn

    class LRU(nn.Module):  # lru-reduction lru/linear.py: complex B (N, U), C (H, N), full D (H, U)
        def __init__(self, d_in, d_out, n, rmin, rmax, max_phase):
            super().__init__()
            self.D = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
            u1, u2 = torch.rand(n), torch.rand(n)
            self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (rmax + rmin) * (rmax - rmin) + rmin ** 2)))
            self.theta_log = nn.Parameter(torch.log(max_phase * u2))
            mod = torch.exp(-torch.exp(self.nu_log.detach()))
            self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - mod ** 2)))
            self.B = nn.Parameter(torch.complex(torch.randn(n, d_in), torch.randn(n, d_in)) / math.sqrt(2 * d_in))
            self.C = nn.Parameter(torch.complex(torch.randn(d_out, n), torch.randn(d_out, n)) / math.sqrt(n))

        def forward(self, u):  # u: [batch, T, U]; the state starts at zero; y_k reads x_k (no delay)
            lam = torch.polar(torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log))
            b = torch.exp(self.gamma_log)[:, None] * self.B
            x = torch.zeros(u.shape[0], lam.shape[0], dtype=lam.dtype)
            xs = []
            for k in range(u.shape[1]):
                x = lam * x + u[:, k].to(b.dtype) @ b.T
                xs.append(x)
            return (torch.stack(xs, 1) @ self.C.T).real + u @ self.D.T

    class GLU(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.activation = nn.GELU()
            self.output_linear = nn.Sequential(nn.Linear(d, 2 * d), nn.GLU(dim=-1))

        def forward(self, x):
            return self.output_linear(self.activation(x))

    class DWNBlock(nn.Module):
        def __init__(self, d, n, rmin, rmax, max_phase):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.lru = LRU(d, d, n, rmin, rmax, max_phase)
            self.ff = GLU(d)

        def forward(self, x):
            return self.ff(self.lru(self.ln(x))) + x

    class DLRU(nn.Module):
        def __init__(self, n_u, n_y, d, n, n_layers, rmin, rmax, max_phase):
            super().__init__()
            self.encoder = nn.Linear(n_u, d)
            self.blocks = nn.ModuleList(DWNBlock(d, n, rmin, rmax, max_phase) for _ in range(n_layers))
            self.decoder = nn.Linear(d, n_y)

        def forward(self, u):
            x = self.encoder(u)
            for block in self.blocks:
                x = block(x)
            return self.decoder(x)

    torch.manual_seed(3)
    cfg = {"d_model": 8, "d_state": 12, "n_layers": 2, "dropout": 0.0, "bias": True, "rmin": 0.5, "rmax": 0.99,
           "max_phase": math.pi, "ff": "GLU"}
    n_u, n_y = D_INPUT, 2
    model = DLRU(n_u, n_y, cfg["d_model"], cfg["d_state"], cfg["n_layers"], cfg["rmin"], cfg["rmax"],
                 cfg["max_phase"]).eval()
    with torch.no_grad():
        for block in model.blocks:  # LayerNorm initialises to (1, 0): move it so the mapping is exercised
            block.ln.weight.add_(0.2 * torch.randn_like(block.ln.weight))
            block.ln.bias.add_(0.2 * torch.randn_like(block.ln.bias))
        x = torch.randn(BATCH, SEQ, n_u)
        y = model(x)
    folder = out / "lru_reduction_dlru"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "cfg": cfg}, folder / "state.pt")
    np.save(folder / "inputs.npy", x.numpy().astype(np.float32))
    np.save(folder / "expected.npy", y.numpy().astype(np.float32))
    meta = {"source": "lru-reduction DLRU (forgi86/lru-reduction lru/architectures.py), restated in this script",
            "format": "lru-reduction", "d_input": n_u, "d_output": n_y, **cfg,
            "versions": {"torch": torch.__version__, "numpy": np.__version__}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {folder}: outputs {list(y.shape)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["minimal-lru", "lru-reduction"])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.which == "minimal-lru":
        make_minimal_lru(args.out)
    else:
        make_lru_reduction(args.out)


if __name__ == "__main__":
    main()
