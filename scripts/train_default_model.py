"""Train the bundled default model: a small byte-level LRU language model on Python's own standard library.

    .venv/bin/python scripts/train_default_model.py              # about 7 minutes on 2 CPU cores
    .venv/bin/python scripts/train_default_model.py --minutes 1 --out /tmp/lru-try

The text is a fixed, sorted list of standard-library modules (Lib/*.py, found through sysconfig), so it is
available offline wherever Python is. The last 5% of every file is held out for validation. Training uses the
parallel (Hillis-Steele) form in float32, AdamW and next-byte cross-entropy. The LRU eigenvalues are initialised
on the ring 0.9 <= |lambda| <= 0.999: long memory, lambdas near 1, the hard case for the export numerics, which is
what this model is for. The run is budgeted by wall time (--minutes) unless --steps fixes the step count.

Writes config.json and model.safetensors (lru_deploy.checkpoints.save_model) and TRAINING.md beside them.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lru_deploy.checkpoints import default_model_dir, save_model, summary
from lru_deploy.model import LRUConfig, LRUModel, init_parameters
from lru_deploy.runtime import ReferenceSession, decode, encode

log = logging.getLogger("train_default_model")

# Top-level Lib/*.py modules present in CPython 3.10 to 3.13 (none removed by PEP 594), sorted.
CORPUS_FILES = (
    "argparse.py", "ast.py", "calendar.py", "codecs.py", "configparser.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "dis.py", "enum.py", "fileinput.py",
    "fractions.py", "ftplib.py", "functools.py", "gettext.py", "glob.py", "gzip.py", "heapq.py", "inspect.py",
    "ipaddress.py", "locale.py", "mailbox.py", "numbers.py", "optparse.py", "os.py", "pathlib.py", "pdb.py",
    "pickle.py", "platform.py", "plistlib.py", "posixpath.py", "pprint.py", "queue.py", "random.py",
    "sched.py", "selectors.py", "shlex.py", "shutil.py", "socket.py", "socketserver.py", "statistics.py",
    "string.py", "subprocess.py", "tarfile.py", "tempfile.py", "textwrap.py", "threading.py", "timeit.py",
    "tokenize.py", "trace.py", "traceback.py", "types.py", "typing.py", "uuid.py", "warnings.py",
    "weakref.py", "zipfile.py",
)
VAL_FRACTION = 0.05
PROMPT = "def "
LRU_PARAMS = ("nu_log", "theta_log", "gamma_log")


def model_config() -> LRUConfig:
    return LRUConfig(vocab_size=256, d_model=128, d_hidden=128, n_layers=4, d_output=256, norm="layer",
                     prenorm=True, pooling="none", gelu="exact", r_min=0.9, r_max=0.999,
                     max_phase=math.pi / 10)


def load_corpus() -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Train and validation bytes (uint8) and the (file, size) list. Each file's last 5% goes to validation."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    train, val, used = [], [], []
    for name in CORPUS_FILES:
        path = lib / name
        if not path.is_file():
            log.warning("corpus file missing, skipped: %s", path)
            continue
        data = path.read_bytes()
        cut = int(len(data) * (1 - VAL_FRACTION))
        train.append(data[:cut])
        val.append(data[cut:])
        used.append((name, len(data)))
    total = sum(n for _, n in used)
    if total < 1_000_000:
        raise SystemExit(f"only {total} bytes of standard-library source found under {lib}; need at least 1 MB")
    as_arr = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8).copy()  # noqa: E731
    return as_arr(train), as_arr(val), used


def param_groups(model: LRUModel, lr: float, weight_decay: float, lru_lr_scale: float) -> list[dict]:
    """Weight decay on matrices only (not the embedding); nu/theta/gamma logs at a lower lr, no weight decay."""
    decay, plain, lru = [], [], []
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in LRU_PARAMS:
            lru.append(p)
        elif p.dim() >= 2 and not name.startswith("embedding"):
            decay.append(p)
        else:
            plain.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr, "base_lr": lr},
        {"params": plain, "weight_decay": 0.0, "lr": lr, "base_lr": lr},
        {"params": lru, "weight_decay": 0.0, "lr": lr * lru_lr_scale, "base_lr": lr * lru_lr_scale},
    ]


def lr_factor(step: int, progress: float, warmup: int, final: float) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `final` over progress 0..1 (time or steps)."""
    if step < warmup:
        return (step + 1) / warmup
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch(data: torch.Tensor, size: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq - 1, (size,), generator=gen)
    return torch.stack([data[s:s + seq + 1] for s in starts.tolist()]).long()


@torch.no_grad()
def evaluate(model: LRUModel, data: torch.Tensor, seq: int, batch_size: int) -> float:
    """Mean next-byte cross-entropy (nats) over every non-overlapping window of the data."""
    model.eval()
    n = (len(data) - 1) // seq
    x = data[:n * seq + 1]
    windows = torch.stack([x[i * seq:(i + 1) * seq + 1] for i in range(n)]).long()
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        w = windows[i:i + batch_size]
        logits = model(w[:, :-1], mode="parallel").outputs
        total += F.cross_entropy(logits.reshape(-1, 256), w[:, 1:].reshape(-1), reduction="sum").item()
        count += w[:, 1:].numel()
    return total / count


def generate_sample(model: LRUModel, n: int, temperature: float, seed: int) -> str:
    sess = ReferenceSession(model)
    ids = list(encode(PROMPT))
    ids += [int(t[0]) for t in sess.generate(encode(PROMPT), max_new_tokens=n, temperature=temperature, seed=seed)]
    return decode(np.array(ids))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_np, val_np, used = load_corpus()
    train_data, val_data = torch.from_numpy(train_np), torch.from_numpy(val_np)
    log.info("corpus: %d files, %d bytes (train %d, validation %d)", len(used), sum(n for _, n in used),
             len(train_np), len(val_np))
    model = init_parameters(LRUModel(model_config()), seed=args.seed)
    log.info("model: %d parameters", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.weight_decay, args.lru_lr_scale),
                            betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    start = time.perf_counter()
    step, ema, seen, last_log = 0, None, 0, start
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1.0:
            break
        factor = lr_factor(step, progress, args.warmup, args.final_lr_fraction)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        xy = batch(train_data, args.batch, args.seq, gen)
        logits = model(xy[:, :-1], mode="parallel").outputs
        loss = F.cross_entropy(logits.reshape(-1, 256), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        seen += args.batch * args.seq
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        now = time.perf_counter()
        if step % args.log_every == 0:
            log.info("step %5d  loss %.4f (ema %.4f)  lr %.2e  %6.0f bytes/s  %5.0fs", step, loss.item(), ema,
                     args.lr * factor, args.batch * args.seq * args.log_every / (now - last_log), now - start)
            last_log = now
    wall = time.perf_counter() - start
    model.eval()
    log.info("trained %d steps in %.0f s; evaluating", step, wall)
    train_loss = evaluate(model, train_data[:len(val_data)], args.seq, args.batch)
    val_loss = evaluate(model, val_data, args.seq, args.batch)
    log.info("loss (nats/byte): train %.4f, validation %.4f (%.4f bits/byte)", train_loss, val_loss,
             val_loss / math.log(2))
    text = generate_sample(model, args.sample_bytes, args.temperature, args.seed)
    log.info("sample from %r at temperature %s:\n%s", PROMPT, args.temperature, text)
    return {"model": model, "used": used, "steps": step, "wall": wall, "train_loss": train_loss,
            "val_loss": val_loss, "ema_loss": ema, "sample": text, "bytes_seen": seen,
            "train_bytes": len(train_np), "val_bytes": len(val_np)}


def training_md(args: argparse.Namespace, r: dict, command: str) -> str:
    s = summary(r["model"])
    files = _pack([f"{n} ({size:,} B)" for n, size in r["used"]], 110)
    ln2 = math.log(2)
    fence = "~~~~" if "```" in r["sample"] else "```"
    return f"""# The bundled default model

A byte-level LRU language model (vocab 256, d_model 128, d_hidden 128, 4 layers, {s['parameters']:,} parameters)
trained by `scripts/train_default_model.py` on Python standard-library source. Its eigenvalues were initialised on
the ring 0.9 <= |lambda| <= 0.999 (max_phase pi/10): long memory, lambdas near 1, the stress case for the export
numerics. It is a demonstration model, not a useful code model.

## Data

Python {sys.version.split()[0]}, `sysconfig.get_paths()['stdlib']`, {len(r['used'])} files,
{sum(n for _, n in r['used']):,} bytes in all (train {r['train_bytes']:,} B; validation {r['val_bytes']:,} B,
the last {VAL_FRACTION:.0%} of every file):

{files}

## Training

- Parallel (Hillis-Steele) form in float32, AdamW (betas 0.9, 0.99), next-byte cross-entropy.
- Batch {args.batch} x seq {args.seq}, peak lr {args.lr:g} ({args.warmup}-step warmup, cosine decay to
  {args.final_lr_fraction:g}x), nu/theta/gamma logs at {args.lru_lr_scale:g}x lr without weight decay, weight decay
  {args.weight_decay:g} on matrices (not the embedding), gradient clipping {args.clip:g}, seed {args.seed},
  torch {torch.__version__}, {torch.get_num_threads()} threads.
- {r['steps']:,} steps, {r['bytes_seen']:,} bytes seen, {r['wall']:.0f} s wall time.

## Result

| | nats/byte | bits/byte |
|---|---|---|
| train (first {r['val_bytes']:,} B of the training split) | {r['train_loss']:.4f} | {r['train_loss'] / ln2:.4f} |
| validation | {r['val_loss']:.4f} | {r['val_loss'] / ln2:.4f} |

Final training-loss moving average: {r['ema_loss']:.4f} nats/byte.
|lambda| after training: {s['lambda_abs_min']:.6f} to {s['lambda_abs_max']:.6f} (longest half-life
{s['half_life_max_steps']:.0f} steps).

Sample, {args.sample_bytes} bytes from the prompt `{PROMPT}` at temperature {args.temperature}
(`ReferenceSession`, float64, seed {args.seed}):

{fence}
{r['sample']}
{fence}

## Reproduce

```
{command}
```

{"With --steps the run repeats bit for bit on the same torch build and thread count." if args.steps else
"This run was budgeted by wall time (--minutes), so its step count and weights depend on the machine's speed and load;"
" --steps N trains exactly N steps and repeats bit for bit on the same torch build and thread count."}
This run: {r['steps']:,} steps.
"""


def _pack(items: list[str], width: int) -> str:
    """Comma-separated items on lines of at most `width` characters, never splitting an item."""
    lines, cur = [], ""
    for item in items:
        if cur and len(cur) + 2 + len(item) > width:
            lines.append(cur + ",")
            cur = item
        else:
            cur = f"{cur}, {item}" if cur else item
    return "\n".join(lines + [cur]) + "."


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=7.0, help="wall-time budget for training (default 7)")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of --minutes")
    p.add_argument("--out", default=str(default_model_dir()), help="model folder to write (default: the bundle)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lru-lr-scale", type=float, default=0.5, help="lr multiplier for nu/theta/gamma logs")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--final-lr-fraction", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--sample-bytes", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train(args)
    out = save_model(result["model"], args.out, overwrite=True)
    raw = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python", "scripts/train_default_model.py", *map(shlex.quote, raw)])
    write_text_atomic(out / "TRAINING.md", training_md(args, result, command))
    s = summary(result["model"])
    log.info("saved %s; |lambda| %.6f to %.6f", out, s["lambda_abs_min"], s["lambda_abs_max"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
