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

The PyTorch layouts of issue 12 come from each upstream's REAL code, run in a throwaway venv (none of that code
is copied into this repository). Offline, as this project's machines are, the pieces are local files:

    python3 -m venv /tmp/lruenv
    /tmp/lruenv/bin/pip install torch==2.13.0 numpy einops opt_einsum triton LRU-pytorch==0.1.3
    /tmp/lruenv/bin/pip download --no-deps -d /tmp/pkgs lrnnx==1.0.0.post1      # an sdist that builds CUDA
    CUDA_HOME= /tmp/lruenv/bin/pip install --no-build-isolation --no-deps /tmp/pkgs/lrnnx-1.0.0.post1.tar.gz
    git clone https://github.com/yueqirex/LRURec /tmp/upstream/LRURec                   # at e02a559
    git clone https://github.com/forgi86/sysid-pytorch-lru /tmp/upstream/sysid-pytorch-lru  # at 81e6af8
    /tmp/lruenv/bin/python scripts/make_import_fixtures.py torch-layouts \
        --lrurec /tmp/upstream/LRURec --sysid /tmp/upstream/sysid-pytorch-lru

(a git clone of a local mirror or `git archive` of a copy works as well as the GitHub URL). lrnnx imports its
CUDA extensions `selective_scan_cuda` and `simplified_scan_cuda` at import time even on a CPU; the script puts
empty modules of those names in sys.modules first (the LRU path never calls it; its Triton kernels are only used when CUDA is available, and
`triton` only has to import). Each of those fixture folders holds the checkpoint as the upstream's code saves
it, `io.npz` (`inputs`, and `expected`: the upstream model's own outputs on them) and meta.json (the upstream,
its version or commit, the sizes, the import flags).

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


# ------------------------------------------------------------------------- issue 12: upstream code, run as is

def _perturb(model, names, scale: float = 0.2, seed: int = 0) -> None:
    """Move parameters off their initial values (norm scales of 1, biases of 0 would hide mapping mistakes)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                if p.is_complex():
                    noise = torch.complex(noise, torch.randn(p.shape, generator=g, dtype=torch.float32))
                p.add_(scale * noise.to(p.dtype))


def _write(out: Path, name: str, files: dict, inputs, expected, meta: dict) -> None:
    import torch
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, obj in files.items():
        torch.save(obj, folder / fname)
    np.savez(folder / "io.npz", inputs=np.asarray(inputs), expected=np.asarray(expected, dtype=np.float32))
    meta = {**meta, "versions": {**meta.get("versions", {}), "torch": torch.__version__, "numpy": np.__version__}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {folder}: outputs {list(np.shape(expected))}")


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def _git_head(src: Path) -> str:
    import subprocess
    return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def make_gothos(out: Path) -> None:
    """Gothos/LRU-pytorch: a bare layer, in_features 3 != out_features 4, complex B and C, full D."""
    import torch
    from LRU_pytorch import LRU

    torch.manual_seed(10)
    layer = LRU(in_features=3, out_features=4, state_features=12, rmin=0.5, rmax=0.99)
    x = torch.randn(BATCH, SEQ, 3)
    with torch.no_grad():
        y = layer(x)  # its README's use: a [batch, seq, in] tensor, the state reset per sequence
    _write(out, "gothos_lru_pytorch", {"state.pt": layer.state_dict()}, x.numpy(), y.numpy(),
           {"source": "Gothos/LRU-pytorch (PyPI LRU-pytorch), LRU_pytorch.LRU", "format": "gothos",
            "flags": [], "d_input": 3, "d_output": 4, "d_hidden": 12,
            "versions": {"LRU-pytorch": _version("LRU-pytorch")}})


def _import_lrnnx():
    import sys
    import types
    for ext in ("selective_scan_cuda", "simplified_scan_cuda"):
        sys.modules.setdefault(ext, types.ModuleType(ext))
    from lrnnx.architectures.classifier import Classifier
    from lrnnx.architectures.language_model import LRNNLMHeadModel
    return Classifier, LRNNLMHeadModel


def make_lrnnx(out: Path) -> None:
    """SforAiDl/lrnnx: the LRU Classifier (post-norm blocks, final_block, last pooling) and the language model
    (RMSNorm pre-norm, norm_f, tied lm_head, vocabulary 50 padded to 56)."""
    import torch
    Classifier, LRNNLMHeadModel = _import_lrnnx()

    from functools import partial

    from lrnnx.models.lti.lru import LRU
    torch.manual_seed(11)
    # ClassifierBlock passes its own d_model/d_state and then **lrnn_params, so lrnn_params={"d_model": ...}
    # (what its docstring suggests) raises "multiple values"; a partial of the class is the way that works
    lru = partial(LRU, d_model=8, d_state=12, r_min=0.5, r_max=0.99)
    clf = Classifier(input_dim=3, num_classes=5, d_model=8, d_state=12, n_layers=3, lrnn_cls=lru, pooling="last",
                     dropout=0.0).eval()
    _perturb(clf, ["norm", "bias"], seed=1)
    x = torch.randn(BATCH, SEQ, 3)
    with torch.no_grad():
        y = clf(x)
    _write(out, "lrnnx_classifier", {"model.pt": clf.state_dict()}, x.numpy(), y.numpy(),
           {"source": "SforAiDl/lrnnx (PyPI lrnnx) lrnnx.architectures.classifier.Classifier, lrnn_cls LRU",
            "format": "lrnnx-classifier", "flags": [], "pooling": "last", "d_input": 3, "d_output": 5,
            "versions": {"lrnnx": _version("lrnnx")}})

    torch.manual_seed(12)
    lm = LRNNLMHeadModel(d_model=8, d_state=12, n_layer=2, vocab_size=50, mixer_types=["LRU", "LRU"],
                         mixer_kwargs={"LRU": {"r_min": 0.5, "r_max": 0.99}}, rms_norm=True,
                         fused_add_norm=False).eval()  # fused_add_norm needs Triton kernels on a GPU
    _perturb(lm, ["norm"], seed=2)
    with torch.no_grad():
        lm.backbone.embedding.weight.mul_(20.0)  # std 0.02 at init: scale it so the LRU sees O(1) inputs
    ids = torch.randint(0, 50, (BATCH, SEQ))
    with torch.no_grad():
        logits = lm(ids).logits
    folder = out / "lrnnx_lm"
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(folder))  # its own writer: pytorch_model.bin (state dict) and config.json
    np.savez(folder / "io.npz", inputs=ids.numpy(), expected=logits.numpy().astype(np.float32))
    meta = {"source": "SforAiDl/lrnnx (PyPI lrnnx) LRNNLMHeadModel, mixer LRU, save_pretrained",
            "format": "lrnnx-lm", "flags": [], "vocab_size": 50, "padded_vocab_size": 56,
            "versions": {"lrnnx": _version("lrnnx"), "torch": torch.__version__, "numpy": np.__version__}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {folder}: outputs {list(logits.shape)}")


def make_lrurec(out: Path, src: Path) -> None:
    """yueqirex/LRURec: model.lru.LRU with its trainer's checkpoint layout {'model_state_dict', ...}."""
    import sys
    from argparse import Namespace

    import torch
    sys.path.insert(0, str(src))
    from model.lru import LRU

    torch.manual_seed(13)
    args = Namespace(num_items=30, bert_hidden_units=8, bert_num_blocks=2, bert_dropout=0.0,
                     bert_attn_dropout=0.0, dataset_code="ml-1m")
    model = LRU(args)
    _perturb(model, ["layer_norm", "bias", "proj", "w_1", "w_2", "token"], scale=0.3, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # one step, so the optimizer state is not empty
    ids = torch.randint(1, args.num_items + 1, (BATCH, SEQ))  # items 1..num_items; 0 is LRURec's padding
    scores, _ = model(ids)
    scores.logsumexp(-1).mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        scores, _ = model(ids)
    _write(out, "lrurec", {"best_acc_model.pth": {"model_state_dict": model.state_dict(),
                                                  "optimizer_state_dict": opt.state_dict(), "epoch": 1}},
           ids.numpy(), scores.numpy(),
           {"source": "yueqirex/LRURec model/lru.py LRU (trainer checkpoint layout)", "format": "lrurec",
            "flags": [], "num_items": args.num_items, "d_model": 8, "d_hidden": 16,
            "versions": {"LRURec": _git_head(src)}})


def make_sysid_mlp(out: Path, src: Path) -> None:
    """forgi86/sysid-pytorch-lru: DWN with ff='MLP' (Linear(H, 4H), GELU, Linear(4H, H))."""
    import dataclasses
    import sys

    import torch
    sys.path.insert(0, str(src))
    from lru.architectures import DWN, DWNConfig

    torch.manual_seed(14)
    config = DWNConfig(d_model=8, d_state=12, n_layers=2, ff="MLP", rmin=0.5, rmax=0.99, max_phase=math.pi)
    model = DWN(3, 2, config).eval()
    _perturb(model, ["ln", "bias"], seed=4)
    x = torch.randn(BATCH, SEQ, 3)
    with torch.no_grad():
        y = model(x)  # mode 'scan': its parallel associative scan
    # train.py saves scalers and an argparse Namespace beside the weights, which weights-only loading refuses;
    # this is the checkpoint with those left out and the config as a dict
    _write(out, "sysid_dwn_mlp", {"ckpt.pt": {"model": model.state_dict(), "cfg": dataclasses.asdict(config)}},
           x.numpy(), y.numpy(),
           {"source": "forgi86/sysid-pytorch-lru lru/architectures.py DWN, ff='MLP'", "format": "lru-reduction",
            "flags": [], "d_input": 3, "d_output": 2, "versions": {"sysid-pytorch-lru": _git_head(src)}})


def make_torch_layouts(out: Path, lrurec: Path, sysid: Path) -> None:
    make_gothos(out)
    make_lrnnx(out)
    make_lrurec(out, lrurec)
    make_sysid_mlp(out, sysid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["minimal-lru", "lru-reduction", "torch-layouts"])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--lrurec", type=Path, help="a checkout of yueqirex/LRURec (torch-layouts)")
    p.add_argument("--sysid", type=Path, help="a checkout of forgi86/sysid-pytorch-lru (torch-layouts)")
    args = p.parse_args()
    if args.which == "minimal-lru":
        make_minimal_lru(args.out)
    elif args.which == "lru-reduction":
        make_lru_reduction(args.out)
    else:
        if not (args.lrurec and args.sysid):
            p.error("torch-layouts needs --lrurec and --sysid (checkouts of those repositories)")
        make_torch_layouts(args.out, args.lrurec, args.sysid)


if __name__ == "__main__":
    main()
