#!/usr/bin/env python3
"""Time bnbook against PyTorch on the same LeNet-BN training step.

Both sides follow the d2l batch-norm recipe at batch 256 on 28 x 28
single-channel images, in two pairs:

    bnbook model        PyTorch network
    lenet-bn            LeNet with d2l's from-scratch batch_norm / BatchNorm
    lenet-bn-concise    LeNet with torch.nn.BatchNorm2d / BatchNorm1d

PyTorch: Xavier-uniform weights on every Conv2d and Linear layer (as d2l's
train_ch6 does), SGD with lr 1.0, CrossEntropyLoss. A training step is
forward + loss + backward + SGD step + zero_grad; an evaluation forward is
model.eval() and a forward pass under torch.no_grad(). bnbook: `bnbook bench
--model M --threads T --batch-size 256 --batches N --json FILE`, which times
the same two things (its training step also ends with zero_grad).

The input is a fixed batch of seeded random numbers, uniform in [0, 1), of
Fashion-MNIST's shape (256, 1, 28, 28) with labels i % 10, as `bnbook bench`
uses: the speed of these networks does not depend on the pixel values, so no
data set is needed.

Each run does 5 untimed warm-up steps (bnbook's fixed number), then --steps
timed steps, each followed by one timed evaluation forward pass, and reports
the median step. The runs are interleaved so that noise from other work on
the machine hits both sides alike: for each thread count T and each of
--rounds rounds, every pair runs PyTorch (a fresh process of the venv's
python with torch.set_num_threads(T) and OMP_NUM_THREADS = MKL_NUM_THREADS =
T) and then bnbook (`--threads T`). The summary gives, per pair and thread
count, the median over rounds of the examples per second of both, their
min-max range, and bnbook / PyTorch both as the median of the per-round
ratios and as the ratio of the medians (above 1: bnbook is faster).
Every run also records how many cores other programs used meanwhile (from
/proc/stat, minus the run's own CPU time) and flags runs above 0.25 cores:
PyTorch with more than one thread slows down many times over when a core is
taken (its OpenMP threads spin-wait), bnbook much less.

Then, unless --full-rounds is 0, whole training runs as the reader would run
them, interleaved the same way: d2l's 10-epoch LeNet-BN recipe with its
from-scratch batch norm on the real Fashion-MNIST (PyTorch: this file's own
re-implementation of d2l's train_ch6, data read from the official gz files
with gzip + numpy, test accuracy after every epoch; bnbook: `bnbook train
--model lenet-bn --threads T --quiet`), each a fresh process timed from
start to exit (loading the data, training, evaluating) with its peak
resident memory (from wait4). The data directory is --data-dir (default
/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist).

Writes, into --out-dir (default book/generated):
  speed-vs-pytorch.md    the tables (training and evaluation) and a note
  speed-vs-pytorch.json  every raw measurement, the settings, the summary and
                         a description of the machine (CPU model, cores,
                         torch / numpy / python versions, bnbook version and
                         git commit, date)

Run by hand (not in CI), from anywhere; only the standard library is needed
to start it. PyTorch runs in its own venv, the one scripts/README.md uses for
gen_fixtures.py (default /work/venv-torch, --venv to change): if the venv
does not exist it is created with `python3 -m venv` and
`pip install torch==2.15.0 numpy==2.4.6` (the PyPI default wheel: a few GB
and several minutes). The release binary target/release/bnbook is built
with `cargo build --release -p bnbook-lab` if it is missing.

    python3 scripts/speed_vs_pytorch.py                 # about 7 minutes (40 + 4 runs)
    python3 scripts/speed_vs_pytorch.py --quick         # smoke test, ~1 min
    python3 scripts/speed_vs_pytorch.py --rounds 9 --threads 1 --steps 50

Close other programs first: on a busy machine both sides slow down, and the
ratio, though measured in interleaved rounds, gets noisier.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR = "scripts/speed_vs_pytorch.py"
DEFAULT_OUT_DIR = REPO_ROOT / "book" / "generated"
DEFAULT_VENV = Path("/work/venv-torch")  # as in scripts/README.md (gen_fixtures.py)
PINNED = ["torch==2.15.0", "numpy==2.4.6"]
OUT_MD = "speed-vs-pytorch.md"
OUT_JSON = "speed-vs-pytorch.json"

BATCH_SIZE = 256
WARM_UP_STEPS = 5  # bnbook_lab::bench::WARM_UP_BATCHES; PyTorch uses the same
SEED = 0
BUSY_CORES = 0.25  # other load (in cores) above which a run is flagged
DEFAULT_ROUNDS = 5
DEFAULT_STEPS = 30  # bnbook_lab::bench::DEFAULT_BATCHES
QUICK_ROUNDS = 2
QUICK_STEPS = 5
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = {"train_images": "train-images-idx3-ubyte.gz",
              "train_labels": "train-labels-idx1-ubyte.gz",
              "test_images": "t10k-images-idx3-ubyte.gz",
              "test_labels": "t10k-labels-idx1-ubyte.gz"}
DEFAULT_FULL_ROUNDS = 2
DEFAULT_FULL_EPOCHS = 10  # d2l's
DEFAULT_FULL_THREADS = 2
QUICK_FULL_EPOCHS = 1
INPUT_NOTE = (
    "random inputs of Fashion-MNIST's shape (seeded, uniform in [0, 1), "
    "labels i % 10), not Fashion-MNIST itself: the speed does not depend on "
    "the pixel values"
)

# (key, bnbook model, PyTorch network, label for the tables)
PAIRS = [
    ("scratch", "lenet-bn", "d2l scratch BatchNorm", "`lenet-bn` ↔ d2l scratch `BatchNorm`"),
    ("concise", "lenet-bn-concise", "nn.BatchNorm2d/1d",
     "`lenet-bn-concise` ↔ `nn.BatchNorm2d/1d`"),
]


class Failure(Exception):
    """An expected failure: reported as one `error:` line, no traceback."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def upper_median(values):
    """The median as `bnbook bench` computes it (the upper middle value for
    an even count), so the per-step medians of both sides agree in kind."""
    s = sorted(values)
    return s[len(s) // 2]


# ==========================================================================
# PyTorch side: runs inside the venv, as `python THIS_FILE --pytorch-worker
# SPEC` (SPEC is JSON); prints one JSON line with the timings.
# ==========================================================================


def torch_lenet_bn(variant: str):
    """d2l's LeNet-BN in PyTorch, Xavier-uniform weights on every Conv2d and
    Linear layer (as d2l's train_ch6 does): `scratch` with d2l's
    from-scratch batch_norm / BatchNorm, `concise` with nn.BatchNorm2d/1d."""
    import torch
    from torch import nn

    # --- d2l's from-scratch batch norm (PyTorch edition), same semantics ---
    def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
        # d2l tells training from prediction by whether autograd records.
        if not torch.is_grad_enabled():
            X_hat = (X - moving_mean) / torch.sqrt(moving_var + eps)
        else:
            assert X.dim() in (2, 4)
            if X.dim() == 2:  # fully connected: statistics per feature
                mean = X.mean(dim=0)
                var = ((X - mean) ** 2).mean(dim=0)
            else:  # convolution: per channel, over batch and both spatial axes
                mean = X.mean(dim=(0, 2, 3), keepdim=True)
                var = ((X - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
            X_hat = (X - mean) / torch.sqrt(var + eps)
            # momentum is the weight of the OLD value; the variance is biased
            moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
            moving_var = momentum * moving_var + (1.0 - momentum) * var
        return gamma * X_hat + beta, moving_mean.data, moving_var.data

    class BatchNorm(nn.Module):
        def __init__(self, num_features, num_dims):
            super().__init__()
            shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
            self.gamma = nn.Parameter(torch.ones(shape))
            self.beta = nn.Parameter(torch.zeros(shape))
            self.moving_mean = torch.zeros(shape)  # plain attributes, as in d2l
            self.moving_var = torch.ones(shape)

        def forward(self, X):
            Y, self.moving_mean, self.moving_var = batch_norm(
                X, self.gamma, self.beta, self.moving_mean, self.moving_var,
                eps=1e-5, momentum=0.9)
            return Y

    def lenet(bn2d, bn1d):
        return nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5), bn2d(6), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), bn2d(16), nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
            nn.Linear(16 * 4 * 4, 120), bn1d(120), nn.Sigmoid(),
            nn.Linear(120, 84), bn1d(84), nn.Sigmoid(),
            nn.Linear(84, 10))

    if variant == "scratch":
        net = lenet(lambda c: BatchNorm(c, 4), lambda c: BatchNorm(c, 2))
    elif variant == "concise":
        net = lenet(nn.BatchNorm2d, nn.BatchNorm1d)
    else:
        raise ValueError(f"unknown variant {variant!r}")

    def init_weights(m):
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    return net


def pytorch_worker(spec: dict) -> dict:
    import numpy as np
    import torch
    from torch import nn

    threads = spec["threads"]
    torch.set_num_threads(threads)
    torch.manual_seed(spec["seed"])
    net = torch_lenet_bn(spec["variant"])
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    loss_fn = nn.CrossEntropyLoss()

    n = spec["batch_size"]
    rng = np.random.default_rng(spec["seed"])
    X = torch.from_numpy(rng.random((n, 1, 28, 28), dtype=np.float32))
    y = torch.arange(n, dtype=torch.int64) % 10

    train_ms, eval_ms = [], []
    last_loss = float("nan")
    warm_up = spec["warm_up"]
    for i in range(warm_up + spec["steps"]):
        net.train()
        t0 = time.perf_counter()
        loss = loss_fn(net(X), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        t1 = time.perf_counter()
        last_loss = loss.item()
        del loss
        net.eval()
        t2 = time.perf_counter()
        with torch.no_grad():
            logits = net(X)
        t3 = time.perf_counter()
        del logits
        if i >= warm_up:
            train_ms.append((t1 - t0) * 1e3)
            eval_ms.append((t3 - t2) * 1e3)

    train_med, eval_med = upper_median(train_ms), upper_median(eval_ms)
    return {
        "network": spec["variant"],
        "batch_size": n,
        "warm_up": warm_up,
        "steps": spec["steps"],
        "threads": torch.get_num_threads(),
        "train_step_ms": train_med,
        "eval_forward_ms": eval_med,
        "train_examples_per_sec": n / train_med * 1e3,
        "eval_examples_per_sec": n / eval_med * 1e3,
        "train_step_ms_all": train_ms,
        "eval_forward_ms_all": eval_ms,
        "last_loss": last_loss,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def read_idx_gz(path: str):
    """An IDX file of unsigned bytes (Fashion-MNIST's format), gzip-compressed,
    as a numpy array of its dimensions."""
    import gzip
    import struct

    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pytorch_full_worker(spec: dict) -> dict:
    """d2l's train_ch6 on Fashion-MNIST with the from-scratch LeNet-BN: shuffled
    batches of 256 (the last one short), SGD lr 1.0, training loss and accuracy
    summed over the epoch's batches, test accuracy in eval mode after every
    epoch."""
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    files = {k: os.path.join(spec["data_dir"], v) for k, v in DATA_FILES.items()}

    def images(key):
        a = read_idx_gz(files[key]).astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(a).reshape(-1, 1, 28, 28)

    def labels(key):
        return torch.from_numpy(read_idx_gz(files[key]).astype(np.int64))

    x_train, y_train = images("train_images"), labels("train_labels")
    x_test, y_test = images("test_images"), labels("test_labels")
    net = torch_lenet_bn("scratch")
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(spec["seed"])
    n, b = x_train.shape[0], spec["batch_size"]
    epochs = []
    for epoch in range(spec["epochs"]):
        net.train()
        total_loss, correct = 0.0, 0
        order = torch.randperm(n, generator=shuffle)
        for start in range(0, n, b):
            idx = order[start:start + b]
            x, y = x_train[idx], y_train[idx]
            optimizer.zero_grad()
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                total_loss += float(loss) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
        net.eval()
        right = 0
        with torch.no_grad():
            for start in range(0, x_test.shape[0], b):
                logits = net(x_test[start:start + b])
                right += int((logits.argmax(dim=1) == y_test[start:start + b]).sum())
        epochs.append({"epoch": epoch + 1, "loss": total_loss / n, "train_acc": correct / n,
                       "test_acc": right / x_test.shape[0]})
    return {"epochs": epochs, "threads": torch.get_num_threads(), "torch": torch.__version__}


# ==========================================================================
# Driver: standard library only.
# ==========================================================================


def run_quiet(cmd, **kw):
    """Runs a command for a short answer; None if it cannot run or fails."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_venv(venv: Path) -> Path:
    """The venv's python, with torch and numpy importable; creates the venv
    and installs the pinned versions when needed."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import torch, numpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not python.exists():
        log(f"Creating the PyTorch venv {venv} (python3 -m venv) ...")
        try:
            r = subprocess.run([sys.executable, "-m", "venv", str(venv)],
                               capture_output=True, text=True)
        except OSError as e:
            raise Failure(f"cannot create the venv {venv}: {e}")
        if r.returncode != 0 or not python.exists():
            raise Failure(
                f"cannot create the venv {venv} with `{sys.executable} -m venv`:\n"
                f"{tail(r.stderr or r.stdout)}\n"
                "(on Debian/Ubuntu: apt-get install python3-venv; or pass --venv DIR "
                "for a writable place)")
    cmd = [str(python), "-m", "pip", "install", *PINNED]
    log(f"Installing {' '.join(PINNED)} into {venv} (from PyPI; a few GB, "
        "several minutes) ...")
    try:
        r = subprocess.run(cmd)
    except OSError as e:
        raise Failure(f"cannot run pip in {venv}: {e}")
    if r.returncode != 0:
        raise Failure(
            f"`{' '.join(cmd)}` failed (exit {r.returncode}); see pip's output above "
            "(no network? no disk space?)")
    r = subprocess.run(check, capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"torch and numpy were installed into {venv} but do not import:\n"
                      f"{tail(r.stderr)}")
    return python


def target_dir() -> Path:
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        p = Path(env)
        return p if p.is_absolute() else REPO_ROOT / p
    return REPO_ROOT / "target"


def newest_source_mtime() -> float:
    newest = 0.0
    for crate in ("bnbook", "bnbook-lab"):
        root = REPO_ROOT / "crates" / crate
        for p in [root / "Cargo.toml", *root.glob("src/**/*.rs")]:
            try:
                newest = max(newest, p.stat().st_mtime)
            except OSError:
                pass
    return newest


def ensure_binary(path_arg) -> tuple[Path, bool]:
    """The bnbook binary, built when missing; and whether it is older than
    the Rust sources (then it may not be the code in the work tree)."""
    if path_arg is not None:
        binary = Path(path_arg).resolve()
        if not binary.is_file():
            raise Failure(f"--bnbook {path_arg}: no such file")
    else:
        binary = target_dir() / "release" / "bnbook"
        if not binary.is_file():
            cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
            cmd = [cargo, "build", "--release", "-p", "bnbook-lab"]
            log(f"{binary} is missing; building it: {' '.join(cmd)}")
            try:
                r = subprocess.run(cmd, cwd=REPO_ROOT)
            except OSError as e:
                raise Failure(f"cannot run cargo ({e}); install Rust (https://rustup.rs) "
                              "or pass --bnbook PATH")
            if r.returncode != 0:
                raise Failure(f"`{' '.join(cmd)}` failed (exit {r.returncode}); "
                              "see cargo's output above")
            if not binary.is_file():
                raise Failure(f"cargo built the workspace but {binary} is still missing")
    stale = binary.stat().st_mtime < newest_source_mtime()
    if stale:
        log(f"note: {binary} is older than some Rust sources under crates/; run "
            "`cargo build --release -p bnbook-lab` to time the current code")
    return binary, stale


_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot():
    """(wall seconds, CPU seconds of finished children, machine-wide busy CPU
    seconds from /proc/stat or NaN). /proc/stat is not namespaced: its busy
    time includes other containers' work on the same kernel."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK  # all but idle, iowait
    except (OSError, IndexError, ValueError):
        pass
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), ru.ru_utime + ru.ru_stime, busy


def other_load(before, after) -> dict:
    """CPU used by everything except the child that ran between the two
    snapshots, in cores (busy CPU seconds / wall seconds)."""
    wall = after[0] - before[0]
    own = after[1] - before[1]
    others = max(0.0, (after[2] - before[2]) - own)
    return {"wall_s": wall, "own_cpu_s": own,
            "other_load_cores": others / wall if wall > 0 and others == others else None}


def timed(fn, *args):
    before = cpu_snapshot()
    result = fn(*args)
    result["contention"] = other_load(before, cpu_snapshot())
    return result


def run_pytorch(python: Path, variant: str, threads: int, steps: int) -> dict:
    spec = {"variant": variant, "threads": threads, "steps": steps,
            "warm_up": WARM_UP_STEPS, "batch_size": BATCH_SIZE, "seed": SEED}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(python), str(Path(__file__).resolve()), "--pytorch-worker", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise Failure(f"the PyTorch run ({variant}, {threads} thread(s)) failed "
                      f"(exit {r.returncode}):\n{tail(r.stderr or r.stdout)}")
    return json.loads(lines[-1])


def run_bnbook(binary: Path, model: str, threads: int, steps: int, tmp: Path) -> dict:
    out = tmp / f"bench-{model}-{threads}.json"
    out.unlink(missing_ok=True)
    cmd = [str(binary), "bench", "--model", model, "--threads", str(threads),
           "--batch-size", str(BATCH_SIZE), "--batches", str(steps), "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file():
        raise Failure(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n"
                      f"{tail(r.stderr or r.stdout)}")
    report = json.loads(out.read_text())
    report["threads"] = threads
    return report


def run_measured(cmd, env, log_path: Path) -> tuple[int, float, float]:
    """Runs `cmd` with its output going to `log_path`; returns (exit code, wall
    seconds from start to exit, peak resident memory in MB from wait4)."""
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        except OSError as e:
            raise Failure(f"cannot start `{' '.join(map(str, cmd))}`: {e}")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, wall, usage.ru_maxrss / 1024  # ru_maxrss is in KB on Linux


def run_pytorch_full(python: Path, data_dir: Path, threads: int, epochs: int,
                     tmp: Path) -> dict:
    spec = {"threads": threads, "epochs": epochs, "batch_size": BATCH_SIZE, "seed": SEED,
            "data_dir": str(data_dir)}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path = tmp / "pytorch-full.log"
    cmd = [str(python), str(Path(__file__).resolve()), "--pytorch-full-worker", json.dumps(spec)]
    code, wall, rss = run_measured(cmd, env, log_path)
    text = log_path.read_text(errors="replace")
    lines = [l for l in text.splitlines() if l.startswith("{")]
    if code != 0 or not lines:
        raise Failure(f"the PyTorch training run failed (exit {code}):\n{tail(text)}")
    result = json.loads(lines[-1])
    return {"wall_s": wall, "peak_rss_mb": rss, "final": result["epochs"][-1],
            "epochs": result["epochs"], "threads": result["threads"]}


def run_bnbook_full(binary: Path, data_dir: Path, threads: int, epochs: int,
                    tmp: Path) -> dict:
    history = tmp / "bnbook-full.json"
    history.unlink(missing_ok=True)
    log_path = tmp / "bnbook-full.log"
    cmd = [str(binary), "train", "--model", "lenet-bn", "--threads", str(threads),
           "--epochs", str(epochs), "--batch-size", str(BATCH_SIZE), "--seed", str(SEED),
           "--data-dir", str(data_dir), "--offline", "--quiet", "--json", str(history)]
    code, wall, rss = run_measured(cmd, dict(os.environ), log_path)
    if code != 0 or not history.is_file():
        raise Failure(f"`{' '.join(cmd)}` failed (exit {code}):\n"
                      f"{tail(log_path.read_text(errors='replace'))}")
    records = json.loads(history.read_text())["history"]
    final = {k: records[-1][k] for k in ("epoch", "loss", "train_acc", "test_acc")}
    return {"wall_s": wall, "peak_rss_mb": rss, "final": final, "threads": threads}


def check_data_dir(data_dir: Path) -> None:
    missing = [f for f in DATA_FILES.values() if not (data_dir / f).is_file()]
    if missing:
        raise Failure(
            f"the whole training runs need Fashion-MNIST in {data_dir}, which lacks "
            f"{', '.join(missing)}; install Debian's dataset-fashion-mnist, pass --data-dir "
            "DIR with the four official .gz files, or skip these runs with --full-rounds 0")


def summarize_full(runs) -> dict:
    pt = [r["pytorch"] for r in runs]
    bn = [r["bnbook"] for r in runs]
    ratios = [p["wall_s"] / b["wall_s"] for p, b in zip(pt, bn)]
    return {
        "rounds": len(runs),
        "pytorch_wall_s_median": statistics.median(p["wall_s"] for p in pt),
        "pytorch_wall_s_min": min(p["wall_s"] for p in pt),
        "pytorch_wall_s_max": max(p["wall_s"] for p in pt),
        "bnbook_wall_s_median": statistics.median(b["wall_s"] for b in bn),
        "bnbook_wall_s_min": min(b["wall_s"] for b in bn),
        "bnbook_wall_s_max": max(b["wall_s"] for b in bn),
        "speedup_median_of_rounds": statistics.median(ratios),
        "speedup_min": min(ratios), "speedup_max": max(ratios),
        "pytorch_peak_rss_mb_median": statistics.median(p["peak_rss_mb"] for p in pt),
        "bnbook_peak_rss_mb_median": statistics.median(b["peak_rss_mb"] for b in bn),
        "pytorch_final": pt[-1]["final"],
        "bnbook_final": bn[-1]["final"],
        "other_load_cores_max": max(
            (x["contention"]["other_load_cores"] for x in pt + bn
             if x["contention"]["other_load_cores"] is not None), default=None),
    }


def full_markdown(full: dict, settings: dict) -> list[str]:
    def metrics(f):
        return f"{f['loss']:.3f} / {f['train_acc']:.3f} / {f['test_acc']:.3f}"

    f = full
    return [
        f"**Whole training run: {settings['full_epochs']} "
        f"epoch{'' if settings['full_epochs'] == 1 else 's'} of `lenet-bn` ↔ d2l's scratch "
        f"LeNet-BN on Fashion-MNIST, {settings['full_threads']} "
        f"thread{'' if settings['full_threads'] == 1 else 's'}, from start to exit "
        "(loading, training, evaluating after every epoch)**",
        "",
        "| | PyTorch | bnbook | PyTorch / bnbook |",
        "|---|---|---|---|",
        f"| wall time (s) | {f['pytorch_wall_s_median']:.1f} "
        f"({f['pytorch_wall_s_min']:.1f}–{f['pytorch_wall_s_max']:.1f}) "
        f"| {f['bnbook_wall_s_median']:.1f} ({f['bnbook_wall_s_min']:.1f}–{f['bnbook_wall_s_max']:.1f}) "
        f"| {f['speedup_median_of_rounds']:.2f} ({f['speedup_min']:.2f}–{f['speedup_max']:.2f}) |",
        f"| peak resident memory (MB) | {f['pytorch_peak_rss_mb_median']:.0f} "
        f"| {f['bnbook_peak_rss_mb_median']:.0f} "
        f"| {f['pytorch_peak_rss_mb_median'] / f['bnbook_peak_rss_mb_median']:.1f} |",
        f"| final training loss / training accuracy / test accuracy | {metrics(f['pytorch_final'])} "
        f"| {metrics(f['bnbook_final'])} | |",
        "",
        f"Medians of {f['rounds']} interleaved round{'' if f['rounds'] == 1 else 's'} "
        "(PyTorch, then bnbook; min–max in parentheses; PyTorch / bnbook is the median of the "
        "per-round ratios of wall time, above 1 when bnbook is faster). Same recipe on both "
        f"sides: batch {settings['batch_size']}, lr 1.0, seed {settings['seed']}, shuffled "
        "batches, test accuracy after every epoch; the two sides draw different initial "
        "weights and batch orders, so their final numbers differ as two seeds do"
        + busy_note(f["other_load_cores_max"]) + ".",
    ]


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_description(binary: Path, stale: bool, torch_info: dict) -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lscpu = {}
    out = run_quiet(["lscpu"])
    if out:
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                lscpu[k.strip()] = v.strip()
    if cpu_model is None:
        cpu_model = lscpu.get("Model name") or platform.processor() or "unknown"
    flags = lscpu.get("Flags", "").split()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()

    bnbook_version = None
    try:
        text = (REPO_ROOT / "crates" / "bnbook" / "Cargo.toml").read_text()
        m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
        bnbook_version = m.group(1) if m else None
    except OSError:
        pass
    commit = run_quiet(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    status = run_quiet(["git", "--no-optional-locks", "status", "--porcelain",
                        "--untracked-files=no"], cwd=REPO_ROOT)
    return {
        "cpu_model": cpu_model,
        "cpu_family_model_stepping": [lscpu.get("CPU family"), lscpu.get("Model"),
                                      lscpu.get("Stepping")],
        "cpu_vendor": lscpu.get("Vendor ID"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "os": platform.platform(),
        "python": torch_info.get("python"),
        "torch": torch_info.get("torch"),
        "torch_cpu_capability": torch_info.get("cpu_capability"),
        "numpy": torch_info.get("numpy"),
        "bnbook": bnbook_version,
        "bnbook_binary": str(binary),
        "bnbook_binary_version": run_quiet([str(binary), "--version"]),
        "bnbook_binary_older_than_sources": stale,
        "git_commit": commit,
        "git_worktree_dirty": bool(status) if status is not None else None,
    }


def summarize(measurements, thread_counts) -> list[dict]:
    rows = []
    for key, model, net, label in PAIRS:
        for t in thread_counts:
            row = {"pair": key, "bnbook_model": model, "pytorch_network": net,
                   "threads": t}
            for kind in ("train", "eval"):
                field = f"{kind}_examples_per_sec"
                per_round = {}
                for m in measurements:
                    if m["pair"] == key and m["threads"] == t:
                        per_round.setdefault(m["round"], {})[m["side"]] = m["result"][field]
                pt = [v["pytorch"] for v in per_round.values()]
                bn = [v["bnbook"] for v in per_round.values()]
                ratios = [v["bnbook"] / v["pytorch"] for v in per_round.values()]
                row[kind] = {
                    "rounds": len(ratios),
                    "pytorch_median": statistics.median(pt),
                    "pytorch_min": min(pt), "pytorch_max": max(pt),
                    "bnbook_median": statistics.median(bn),
                    "bnbook_min": min(bn), "bnbook_max": max(bn),
                    "ratio_median_of_rounds": statistics.median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "ratio_of_medians": statistics.median(bn) / statistics.median(pt),
                }
            loads = [m["result"]["contention"]["other_load_cores"] for m in measurements
                     if m["pair"] == key and m["threads"] == t]
            loads = [x for x in loads if x is not None]
            row["other_load_cores_median"] = statistics.median(loads) if loads else None
            row["other_load_cores_max"] = max(loads) if loads else None
            rows.append(row)
    return rows


def markdown(rows, settings, machine, full=None) -> str:
    def table(kind, title):
        out = [f"**{title}**", "",
               "| pair | threads | PyTorch ex/s | bnbook ex/s | bnbook / PyTorch | "
               "ratio of medians |",
               "|---|---|---|---|---|---|"]
        for r in rows:
            s = r[kind]
            out.append(
                f"| {dict((k, l) for k, _, _, l in PAIRS)[r['pair']]} | {r['threads']} "
                f"| {s['pytorch_median']:.0f} ({s['pytorch_min']:.0f}–{s['pytorch_max']:.0f}) "
                f"| {s['bnbook_median']:.0f} ({s['bnbook_min']:.0f}–{s['bnbook_max']:.0f}) "
                f"| {s['ratio_median_of_rounds']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f}) "
                f"| {s['ratio_of_medians']:.2f} |")
        return out

    lines = table("train", "Training step (forward, loss, backward, SGD step, zero grad)")
    lines.append("")
    lines += table("eval", "Evaluation forward (no autograd, running statistics)")
    lines.append("")
    lines.append(
        f"Medians of {settings['rounds']} interleaved "
        f"round{'' if settings['rounds'] == 1 else 's'} (each round runs PyTorch, then "
        f"bnbook, for each pair; min–max in parentheses; bnbook / PyTorch is the median of "
        f"the per-round ratios, above 1 when bnbook is faster), each run the median of "
        f"{settings['steps']} step{'' if settings['steps'] == 1 else 's'} at batch {settings['batch_size']} after "
        f"{settings['warm_up']} warm-up steps, on random inputs of Fashion-MNIST's shape; "
        f"PyTorch {machine['torch']} (PyPI wheel, CPU), {machine['cpu_model']}, "
        f"{machine['usable_cpus']} cores, {machine['date'][:10]}{load_note(rows)}.")
    if full is not None:
        lines.append("")
        lines += full_markdown(full, settings)
    if settings["quick"]:
        lines.append("")
        lines.append("Smoke test (`--quick`): too few steps and rounds to mean much.")
    return "\n".join(lines) + "\n"


def load_note(rows) -> str:
    loads = [r["other_load_cores_max"] for r in rows if r["other_load_cores_max"] is not None]
    return busy_note(max(loads) if loads else None)


def busy_note(worst) -> str:
    """How much other programs used at most, and a warning above BUSY_CORES."""
    if worst is None:
        return ""
    note = f"; other programs used at most {worst:.2f} cores during a run"
    if worst > BUSY_CORES:
        note += " (a busy machine: treat these numbers with care)"
    return note


def write_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def parse_threads(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive thread counts separated by commas, e.g. 1,2; got {text!r}")
    return values


def non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return v


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Time PyTorch's and bnbook's LeNet-BN (d2l recipe, batch 256) in "
                    "interleaved rounds and write a Markdown table and a JSON file of "
                    "every measurement.",
        epilog="Details: the docstring at the top of this file and scripts/README.md.")
    p.add_argument("--rounds", type=positive, default=None,
                   help=f"interleaved rounds per thread count (default {DEFAULT_ROUNDS}; "
                        f"--quick: {QUICK_ROUNDS})")
    p.add_argument("--threads", type=parse_threads, default=[1, 2],
                   help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--steps", type=positive, default=None,
                   help=f"timed steps per run, after {WARM_UP_STEPS} warm-up steps "
                        f"(default {DEFAULT_STEPS}; --quick: {QUICK_STEPS})")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where to write speed-vs-pytorch.md and .json (default "
                        "book/generated; with --quick a directory under the system's "
                        "temporary directory, so a smoke test never overwrites the book's)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_ROUNDS} rounds of {QUICK_STEPS} steps")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help=f"venv with torch and numpy, created if missing (default {DEFAULT_VENV})")
    p.add_argument("--bnbook", default=None, metavar="PATH",
                   help="bnbook binary (default target/release/bnbook, built if missing)")
    p.add_argument("--full-rounds", type=non_negative, default=None,
                   help=f"interleaved rounds of whole training runs on Fashion-MNIST (default "
                        f"{DEFAULT_FULL_ROUNDS}; --quick: 1; 0 skips them)")
    p.add_argument("--full-epochs", type=positive, default=None,
                   help=f"epochs of each whole training run (default {DEFAULT_FULL_EPOCHS}, "
                        f"d2l's; --quick: {QUICK_FULL_EPOCHS})")
    p.add_argument("--full-threads", type=positive, default=DEFAULT_FULL_THREADS,
                   help=f"threads of the whole training runs (default {DEFAULT_FULL_THREADS})")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"directory with the four Fashion-MNIST .gz files (default "
                        f"{DEFAULT_DATA_DIR})")
    p.add_argument("--pytorch-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pytorch-full-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.pytorch_worker is not None:
        print(json.dumps(pytorch_worker(json.loads(args.pytorch_worker))), flush=True)
        return 0
    if args.pytorch_full_worker is not None:
        print(json.dumps(pytorch_full_worker(json.loads(args.pytorch_full_worker))), flush=True)
        return 0

    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    full_rounds = args.full_rounds if args.full_rounds is not None else (
        1 if args.quick else DEFAULT_FULL_ROUNDS)
    full_epochs = args.full_epochs or (QUICK_FULL_EPOCHS if args.quick else DEFAULT_FULL_EPOCHS)
    if full_rounds:
        check_data_dir(args.data_dir)
    if args.out_dir is not None:
        out_dir = args.out_dir
    elif args.quick:
        out_dir = Path(tempfile.gettempdir()) / "bnbook-speed-vs-pytorch-quick"
    else:
        out_dir = DEFAULT_OUT_DIR
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / (OUT_JSON + ".part")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise Failure(f"cannot write into --out-dir {out_dir}: {e}")

    python = ensure_venv(args.venv)
    binary, stale = ensure_binary(args.bnbook)

    settings = {
        "batch_size": BATCH_SIZE, "rounds": rounds, "threads": args.threads,
        "steps": steps, "warm_up": WARM_UP_STEPS, "seed": SEED, "quick": args.quick,
        "input": INPUT_NOTE,
        "pytorch": "d2l recipe: Xavier-uniform Conv2d/Linear weights, SGD lr 1.0, "
                   "CrossEntropyLoss; train step = forward + loss + backward + step + "
                   "zero_grad; eval = model.eval() under torch.no_grad(); "
                   "torch.set_num_threads(T), OMP_NUM_THREADS = MKL_NUM_THREADS = T",
        "bnbook": f"{binary.name} bench --model M --threads T --batch-size {BATCH_SIZE} "
                  f"--batches STEPS --json FILE",
        "order": "for each thread count, for each round, for each pair: PyTorch then bnbook",
        "median_of_steps": "upper median (sorted[n // 2]) on both sides",
        "full_rounds": full_rounds, "full_epochs": full_epochs,
        "full_threads": args.full_threads, "data_dir": str(args.data_dir),
        "full_run": "PyTorch: d2l's train_ch6 with the scratch LeNet-BN (this file's "
                    "pytorch_full_worker); bnbook: train --model lenet-bn --threads T "
                    "--quiet; each a fresh process, wall time from start to exit, peak "
                    "resident memory from wait4",
    }
    total = len(args.threads) * rounds * len(PAIRS) * 2
    log(f"Timing {len(PAIRS)} pairs x threads {args.threads} x {rounds} rounds "
        f"({total} runs), batch {BATCH_SIZE}, {WARM_UP_STEPS} warm-up + {steps} timed steps "
        f"per run, on {INPUT_NOTE}.")

    measurements = []
    torch_info = {}
    busy_runs = 0
    started = now_utc()
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="speed-vs-pytorch-") as tmp:
        for t in args.threads:
            for r in range(1, rounds + 1):
                for key, model, net, _ in PAIRS:
                    pt = timed(run_pytorch, python, key, t, steps)
                    torch_info = pt
                    bn = timed(run_bnbook, binary, model, t, steps, Path(tmp))
                    for side, res in (("pytorch", pt), ("bnbook", bn)):
                        measurements.append({"threads": t, "round": r, "pair": key,
                                             "side": side, "result": res})
                    busy = [x["contention"]["other_load_cores"] for x in (pt, bn)]
                    busy = max((b for b in busy if b is not None), default=None)
                    flag = ""
                    if busy is not None and busy > BUSY_CORES:
                        flag = f"  [busy: others used {busy:.1f} cores]"
                        busy_runs += 1
                    log(f"threads {t} round {r}/{rounds} {model:17s} train ex/s: PyTorch "
                        f"{pt['train_examples_per_sec']:6.0f}  bnbook "
                        f"{bn['train_examples_per_sec']:6.0f} "
                        f"({bn['train_examples_per_sec'] / pt['train_examples_per_sec']:.2f}x) "
                        f"| eval ex/s: PyTorch {pt['eval_examples_per_sec']:6.0f}  bnbook "
                        f"{bn['eval_examples_per_sec']:6.0f} "
                        f"({bn['eval_examples_per_sec'] / pt['eval_examples_per_sec']:.2f}x)"
                        f"{flag}")
                    if pt["threads"] != t:
                        log(f"note: torch reports {pt['threads']} threads, asked for {t}")
                    if pt["last_loss"] != pt["last_loss"] or abs(pt["last_loss"]) == float("inf"):
                        log(f"note: PyTorch's loss is {pt['last_loss']} (non-finite values "
                            "may change the speed)")
        full_runs = []
        for r in range(1, full_rounds + 1):
            log(f"whole training run, round {r}/{full_rounds}: {full_epochs} epoch(s) of "
                f"LeNet-BN on {args.full_threads} thread(s), PyTorch then bnbook ...")
            pt = timed(run_pytorch_full, python, args.data_dir, args.full_threads,
                       full_epochs, Path(tmp))
            bn = timed(run_bnbook_full, binary, args.data_dir, args.full_threads,
                       full_epochs, Path(tmp))
            full_runs.append({"round": r, "pytorch": pt, "bnbook": bn})
            busy = [x["contention"]["other_load_cores"] for x in (pt, bn)]
            busy = max((b for b in busy if b is not None), default=None)
            flag = f"  [busy: others used {busy:.1f} cores]" if busy and busy > BUSY_CORES else ""
            log(f"  PyTorch {pt['wall_s']:.1f} s, {pt['peak_rss_mb']:.0f} MB, test acc "
                f"{pt['final']['test_acc']:.3f} | bnbook {bn['wall_s']:.1f} s, "
                f"{bn['peak_rss_mb']:.0f} MB, test acc {bn['final']['test_acc']:.3f} "
                f"({pt['wall_s'] / bn['wall_s']:.2f}x){flag}")

    if busy_runs:
        log(f"note: other programs used more than {BUSY_CORES} cores during {busy_runs} of "
            f"{total // 2} PyTorch/bnbook pairs of runs; the numbers are unreliable, PyTorch's "
            "with more than one thread most (its OpenMP threads spin-wait while a core is "
            "taken). Rerun on a quiet machine.")
    machine = machine_description(binary, stale, torch_info)
    machine.update(date=started, finished=now_utc(), load_average_at_start=load_at_start,
                   load_average_at_end=load_average())
    rows = summarize(measurements, args.threads)
    full = summarize_full(full_runs) if full_runs else None
    doc = {"generator": GENERATOR, "settings": settings, "machine": machine,
           "pairs": [{"pair": k, "bnbook_model": m, "pytorch_network": n} for k, m, n, _ in PAIRS],
           "summary": rows, "measurements": measurements,
           "full_run_summary": full, "full_runs": full_runs}
    md = markdown(rows, settings, machine, full)
    write_atomic(out_dir / OUT_JSON, json.dumps(doc, indent=2) + "\n")
    write_atomic(out_dir / OUT_MD, md)
    log("")
    log(md)
    log(f"Wrote {out_dir / OUT_MD} and {out_dir / OUT_JSON}.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
