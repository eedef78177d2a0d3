#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for the bnbook normalisation tests.

Writes three files into crates/bnbook/tests/fixtures/:

* batchnorm_pytorch.json: a few small batch-norm cases (torch.nn.BatchNorm1d /
  BatchNorm2d, and a from-scratch batch norm with d2l's conventions), each run
  for three training steps and one evaluation step, with inputs, outputs,
  gradients and running statistics;
* norms_pytorch.json: small torch.nn.LayerNorm / InstanceNorm2d / GroupNorm
  cases, one forward and backward pass each;
* fold_pytorch.json: a convolution or linear layer followed by batch norm in
  evaluation mode, folded into one layer by torch.nn.utils.fusion
  (fuse_conv_bn_eval / fuse_linear_bn_eval).

The Rust tests read these files; they never run Python. This script is run by
hand, not in CI.

Both files: {"generator", "torch_version", "numpy_version", "cases": [...]}.
Every array is a flat row-major list of float32 values.

batchnorm_pytorch.json: "shape" gives the input shape, (N, C) or
(N, C, H, W). Each case has:
  name, source ("torch.nn.BatchNorm1d" | "torch.nn.BatchNorm2d" | "d2l_scratch"),
  shape, num_features, eps,
  momentum        torch: weight of the NEW batch (null = cumulative average,
                  i.e. weight 1/num_batches_tracked); d2l_scratch: 0.9 = weight
                  of the OLD value
  affine, track_running_stats,
  running_var_kind "unbiased" (torch, divides by count-1) | "biased" (d2l)
  gamma, beta     initial affine params, length C (null when affine is false)
  running_mean_init, running_var_init   zeros / ones
  train_steps     3 training steps on the same layer, gamma/beta never
                  updated: {x, grad_y, y, grad_x, grad_gamma, grad_beta,
                  running_mean, running_var (after the step),
                  num_batches_tracked}, with loss = (y * grad_y).sum()
  eval            {x, y}: evaluation mode after the 3 steps (running stats)

norms_pytorch.json: each case is one training-mode forward and backward pass
of a freshly built module, loss = (y * grad_y).sum():
  name,
  layer           "LayerNorm" | "InstanceNorm2d" | "GroupNorm"
  source          "torch.nn." + layer
  args            the keyword arguments the module was built with; omitted
                  ones (eps, affine, elementwise_affine) take torch's defaults
  eps, affine     the module's effective eps, and whether it has weight/bias
  shape           input shape
  param_shape     shape of gamma and beta (null when affine is false)
  gamma, beta     values copied into module.weight / module.bias (null when
                  affine is false)
  x, grad_y, y, grad_x, grad_gamma, grad_beta (the last two null when affine
                  is false)
These modules keep no running statistics: the script checks that the
evaluation-mode output equals the training-mode one bit for bit.

fold_pytorch.json: each case is one layer and the batch norm after it, both in
evaluation mode, and PyTorch's folded layer:
  name,
  layer           "Conv2d" | "Linear"
  source          "torch.nn.utils.fusion.fuse_conv_bn_eval" | "...fuse_linear_bn_eval"
  shape           input shape, (N, C, H, W) or (N, in_features)
  weight, bias    the layer's parameters in PyTorch's layout: (O, C, K, K) or
                  (out_features, in_features); bias null for bias=False
  eps, affine, gamma, beta (null when affine is false),
  running_mean, running_var   the batch norm's statistics (random, var > 0)
  x               the input
  y               batch_norm(layer(x)) in evaluation mode, unfolded
  folded_weight, folded_bias   the fused layer's parameters (same layouts)
  y_folded        the fused layer's output on x

Versions used to generate the committed JSON files:

    Python 3.11.7, torch 2.15.0 (PyPI default wheel, reports 2.15.0+cu132,
    run on CPU only), numpy 2.4.6

To regenerate (from the repository root; the venv lives outside the repo):

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch==2.15.0 numpy==2.4.6
    /work/venv-torch/bin/python scripts/gen_fixtures.py          # write
    /work/venv-torch/bin/python scripts/gen_fixtures.py --verify # re-check

Determinism: every random number comes from numpy's PCG64 generator with a
fixed per-case seed (so adding a case does not change the others), values are
float32 throughout, torch runs on CPU with one thread and deterministic
algorithms, and floats are written as the shortest decimal string that reads
back to the same float32. Rerunning with the same versions on the same kind of
CPU reproduces the file byte for byte. Another torch version or CPU may change
the last bits of the outputs (not the inputs); the Rust tests compare with a
tolerance, so that is harmless, but commit a regenerated file only on purpose.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "crates" / "bnbook" / "tests" / "fixtures"
DEFAULT_OUT = FIXTURES / "batchnorm_pytorch.json"
DEFAULT_NORMS_OUT = FIXTURES / "norms_pytorch.json"
DEFAULT_FOLD_OUT = FIXTURES / "fold_pytorch.json"
GENERATOR = "scripts/gen_fixtures.py"
EXPECTED_VERSIONS = {"torch": "2.15.0", "numpy": "2.4.6"}
TRAIN_STEPS = 3
EPS = 1e-5


# --------------------------------------------------------------------------
# Number formatting
# --------------------------------------------------------------------------


def f32(v) -> float:
    """A float32 value as the Python float whose repr is the shortest decimal
    string that parses back to exactly that float32 (at most 9 significant
    digits)."""
    out = float(str(np.float32(v)))
    if not math.isfinite(out):
        raise ValueError(f"non-finite value in fixture: {v!r}")
    return out


def flat(t) -> list[float]:
    """A tensor or array as a flat row-major list of float32 values."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    return [f32(v) for v in a]


# --------------------------------------------------------------------------
# Random inputs (numpy only, so they do not depend on torch's RNG)
# --------------------------------------------------------------------------


def normal(rng: np.random.Generator, shape, mean: float, std: float) -> torch.Tensor:
    return torch.from_numpy(rng.normal(mean, std, size=shape).astype(np.float32))


def uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(lo, hi, size=n).astype(np.float32))


def affine_init(rng: np.random.Generator, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-trivial initial scale and shift, so a wrong gamma/beta shows."""
    gamma = uniform(rng, c, 0.5, 1.5)
    beta = uniform(rng, c, -0.5, 0.5)
    return gamma, beta


def batch_input(rng: np.random.Generator, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """A training input far from N(0, 1) (so running stats move visibly) and
    the upstream gradient dL/dy used as loss = (y * grad_y).sum()."""
    x = normal(rng, shape, 2.0, 3.0)
    grad_y = normal(rng, shape, 0.0, 1.0)
    return x, grad_y


# --------------------------------------------------------------------------
# torch.nn.BatchNorm1d / BatchNorm2d cases
# --------------------------------------------------------------------------


def torch_case(name: str, seed: int, shape, momentum, affine: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    c = shape[1]
    if len(shape) == 2:
        module = torch.nn.BatchNorm1d(c, eps=EPS, momentum=momentum, affine=affine)
        source = "torch.nn.BatchNorm1d"
    elif len(shape) == 4:
        module = torch.nn.BatchNorm2d(c, eps=EPS, momentum=momentum, affine=affine)
        source = "torch.nn.BatchNorm2d"
    else:
        raise ValueError(f"unsupported shape {shape}")
    module = module.to(torch.float32)

    gamma = beta = None
    if affine:
        gamma, beta = affine_init(rng, c)
        with torch.no_grad():
            module.weight.copy_(gamma)
            module.bias.copy_(beta)

    case = {
        "name": name,
        "source": source,
        "shape": list(shape),
        "num_features": c,
        "eps": EPS,
        "momentum": momentum,
        "affine": affine,
        "track_running_stats": True,
        "running_var_kind": "unbiased",
        "gamma": flat(gamma) if affine else None,
        "beta": flat(beta) if affine else None,
        "running_mean_init": flat(module.running_mean),
        "running_var_init": flat(module.running_var),
        "train_steps": [],
    }

    module.train()
    for _ in range(TRAIN_STEPS):
        x, grad_y = batch_input(rng, shape)
        x.requires_grad_(True)
        y = module(x)
        (y * grad_y).sum().backward()
        case["train_steps"].append(
            {
                "x": flat(x),
                "grad_y": flat(grad_y),
                "y": flat(y),
                "grad_x": flat(x.grad),
                "grad_gamma": flat(module.weight.grad) if affine else None,
                "grad_beta": flat(module.bias.grad) if affine else None,
                "running_mean": flat(module.running_mean),
                "running_var": flat(module.running_var),
                "num_batches_tracked": int(module.num_batches_tracked.item()),
            }
        )
        # No optimizer: gamma/beta stay at their initial values. Just clear
        # the gradients so the next step does not accumulate into them.
        module.zero_grad(set_to_none=True)

    module.eval()
    x_eval = normal(rng, shape, 2.0, 3.0)
    with torch.no_grad():
        y_eval = module(x_eval)
    case["eval"] = {"x": flat(x_eval), "y": flat(y_eval)}
    return case


# --------------------------------------------------------------------------
# From-scratch batch norm with d2l's conventions
# --------------------------------------------------------------------------


def scratch_batch_norm(x, gamma, beta, moving_mean, moving_var, eps, momentum, training):
    """Batch norm written out by hand, following the conventions of the
    from-scratch version in Dive into Deep Learning (v2):

    * the mode is an explicit argument rather than inferred from whether
      autograd is recording;
    * statistics are taken per feature over the batch axis for a 2-D input
      and per channel over the batch and both spatial axes for a 4-D input;
    * the batch variance is the plain (biased, divide-by-count) mean of the
      squared deviations, and that same biased value feeds the moving
      variance;
    * `momentum` is the weight kept by the OLD moving value (0.9 means
      new = 0.9 * old + 0.1 * batch), the opposite of PyTorch's meaning;
    * in evaluation mode the input is normalised with the moving statistics.

    Returns the output and the updated moving statistics (detached).
    """
    if training:
        if x.dim() == 2:
            axes = (0,)
        else:
            axes = (0, 2, 3)
        mu = x.mean(dim=axes, keepdim=x.dim() != 2)
        sq_dev = (x - mu) ** 2
        var = sq_dev.mean(dim=axes, keepdim=x.dim() != 2)
        x_hat = (x - mu) / torch.sqrt(var + eps)
        new_mean = momentum * moving_mean + (1.0 - momentum) * mu
        new_var = momentum * moving_var + (1.0 - momentum) * var
    else:
        x_hat = (x - moving_mean) / torch.sqrt(moving_var + eps)
        new_mean, new_var = moving_mean, moving_var
    y = gamma * x_hat + beta
    return y, new_mean.detach(), new_var.detach()


def scratch_case(name: str, seed: int, shape) -> dict:
    rng = np.random.default_rng(seed)
    c = shape[1]
    momentum = 0.9
    param_shape = (1, c) if len(shape) == 2 else (1, c, 1, 1)

    gamma0, beta0 = affine_init(rng, c)
    gamma = gamma0.reshape(param_shape).clone().requires_grad_(True)
    beta = beta0.reshape(param_shape).clone().requires_grad_(True)
    moving_mean = torch.zeros(param_shape, dtype=torch.float32)
    moving_var = torch.ones(param_shape, dtype=torch.float32)

    case = {
        "name": name,
        "source": "d2l_scratch",
        "shape": list(shape),
        "num_features": c,
        "eps": EPS,
        "momentum": momentum,
        "affine": True,
        "track_running_stats": True,
        "running_var_kind": "biased",
        "gamma": flat(gamma),
        "beta": flat(beta),
        "running_mean_init": flat(moving_mean),
        "running_var_init": flat(moving_var),
        "train_steps": [],
    }

    for step in range(1, TRAIN_STEPS + 1):
        x, grad_y = batch_input(rng, shape)
        x.requires_grad_(True)
        y, moving_mean, moving_var = scratch_batch_norm(
            x, gamma, beta, moving_mean, moving_var, EPS, momentum, training=True
        )
        (y * grad_y).sum().backward()
        case["train_steps"].append(
            {
                "x": flat(x),
                "grad_y": flat(grad_y),
                "y": flat(y),
                "grad_x": flat(x.grad),
                "grad_gamma": flat(gamma.grad),
                "grad_beta": flat(beta.grad),
                "running_mean": flat(moving_mean),
                "running_var": flat(moving_var),
                "num_batches_tracked": step,  # no counter in the scratch version
            }
        )
        gamma.grad = None
        beta.grad = None

    x_eval = normal(rng, shape, 2.0, 3.0)
    with torch.no_grad():
        y_eval, _, _ = scratch_batch_norm(
            x_eval, gamma, beta, moving_mean, moving_var, EPS, momentum, training=False
        )
    case["eval"] = {"x": flat(x_eval), "y": flat(y_eval)}
    return case


# --------------------------------------------------------------------------
# torch.nn.LayerNorm / InstanceNorm2d / GroupNorm cases
# --------------------------------------------------------------------------


def norm_case(name: str, seed: int, shape, layer: str, args: dict, x_mean=2.0, x_std=3.0) -> dict:
    """One forward and backward pass of torch.nn.<layer>(**args) on an input
    drawn from N(x_mean, x_std²), with non-trivial gamma/beta when the module
    has them. The module's own eps and affine flag are recorded, so a case
    that omits them pins down torch's defaults."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, x_mean, x_std)
    grad_y = normal(rng, shape, 0.0, 1.0)
    module = getattr(torch.nn, layer)(**args).to(torch.float32)
    affine = module.weight is not None
    assert (module.bias is not None) == affine, name
    assert getattr(module, "running_mean", None) is None, f"{name}: no running stats"

    gamma = beta = param_shape = None
    if affine:
        param_shape = list(module.weight.shape)
        size = int(np.prod(param_shape))
        gamma = uniform(rng, size, 0.5, 1.5).reshape(param_shape)
        beta = uniform(rng, size, -0.5, 0.5).reshape(param_shape)
        with torch.no_grad():
            module.weight.copy_(gamma)
            module.bias.copy_(beta)

    module.train()
    x.requires_grad_(True)
    y = module(x)
    (y * grad_y).sum().backward()

    module.eval()
    with torch.no_grad():
        y_eval = module(x)
    assert torch.equal(y_eval, y.detach()), f"{name}: eval output differs from train output"

    return {
        "name": name,
        "layer": layer,
        "source": f"torch.nn.{layer}",
        "args": args,
        "eps": module.eps,
        "affine": affine,
        "shape": list(shape),
        "param_shape": param_shape,
        "gamma": flat(gamma) if affine else None,
        "beta": flat(beta) if affine else None,
        "x": flat(x),
        "grad_y": flat(grad_y),
        "y": flat(y),
        "grad_x": flat(x.grad),
        "grad_gamma": flat(module.weight.grad) if affine else None,
        "grad_beta": flat(module.bias.grad) if affine else None,
    }


def fixture_file(cases: list) -> dict:
    """The JSON document of a fixture file: provenance and the cases."""
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return {
        "generator": GENERATOR,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "cases": cases,
    }


def build_norms() -> dict:
    # The *_eps_1e_3 cases use inputs 1 ± 0.05: the variance 0.0025 makes eps
    # 40 % of it, so an eps that is dropped or mixed up changes every output,
    # and a mean of 20 standard deviations makes x − μ cancel (the Rust test's
    # tolerance allows for that).
    small = {"x_mean": 1.0, "x_std": 0.05}
    ln, inn, gn = "LayerNorm", "InstanceNorm2d", "GroupNorm"
    cases = [
        norm_case("layer_norm_features", 301, (4, 5), ln, {"normalized_shape": [5]}),
        norm_case("layer_norm_chw", 302, (2, 3, 4, 5), ln, {"normalized_shape": [3, 4, 5]}),
        norm_case("layer_norm_sequence", 303, (2, 3, 5), ln, {"normalized_shape": [5]}),
        norm_case(
            "layer_norm_no_affine", 304, (2, 3, 4, 5), ln,
            {"normalized_shape": [4, 5], "elementwise_affine": False},
        ),
        norm_case(
            "layer_norm_eps_1e_3", 305, (3, 8), ln,
            {"normalized_shape": [8], "eps": 1e-3}, **small,
        ),
        norm_case("instance_norm_default", 311, (2, 3, 4, 4), inn, {"num_features": 3}),
        norm_case(
            "instance_norm_affine", 312, (2, 3, 4, 4), inn,
            {"num_features": 3, "affine": True},
        ),
        norm_case(
            "instance_norm_eps_1e_3", 313, (2, 3, 3, 5), inn,
            {"num_features": 3, "eps": 1e-3, "affine": True}, **small,
        ),
        norm_case("group_norm_g1", 321, (2, 6, 3, 3), gn, {"num_groups": 1, "num_channels": 6}),
        norm_case("group_norm_g2", 322, (2, 6, 3, 3), gn, {"num_groups": 2, "num_channels": 6}),
        norm_case("group_norm_g3", 323, (2, 6, 3, 3), gn, {"num_groups": 3, "num_channels": 6}),
        norm_case("group_norm_g6", 324, (2, 6, 3, 3), gn, {"num_groups": 6, "num_channels": 6}),
        norm_case("group_norm_rank2", 325, (3, 6), gn, {"num_groups": 2, "num_channels": 6}),
        norm_case(
            "group_norm_no_affine", 326, (2, 6, 2, 3), gn,
            {"num_groups": 3, "num_channels": 6, "affine": False},
        ),
        norm_case(
            "group_norm_eps_1e_3", 327, (2, 6, 3, 3), gn,
            {"num_groups": 2, "num_channels": 6, "eps": 1e-3}, **small,
        ),
    ]
    return fixture_file(cases)


# --------------------------------------------------------------------------
# Folding batch norm into the layer before it
# --------------------------------------------------------------------------


def fold_case(name: str, seed: int, layer: str, shape, out: int, bias: bool = True,
              affine: bool = True) -> dict:
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    rng = np.random.default_rng(seed)
    if layer == "Conv2d":
        module = torch.nn.Conv2d(shape[1], out, kernel_size=3, bias=bias)
        bn = torch.nn.BatchNorm2d(out, eps=EPS, affine=affine)
        fuse, source = fuse_conv_bn_eval, "torch.nn.utils.fusion.fuse_conv_bn_eval"
    else:
        module = torch.nn.Linear(shape[1], out, bias=bias)
        bn = torch.nn.BatchNorm1d(out, eps=EPS, affine=affine)
        fuse, source = fuse_linear_bn_eval, "torch.nn.utils.fusion.fuse_linear_bn_eval"
    with torch.no_grad():
        module.weight.copy_(normal(rng, tuple(module.weight.shape), 0.0, 0.5))
        if bias:
            module.bias.copy_(normal(rng, (out,), 0.0, 0.5))
        if affine:
            gamma, beta = affine_init(rng, out)
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
        bn.running_mean.copy_(normal(rng, (out,), 0.5, 1.0))
        bn.running_var.copy_(uniform(rng, out, 0.2, 3.0))
    module.eval()
    bn.eval()
    x = normal(rng, shape, 0.5, 1.0)
    with torch.no_grad():
        y = bn(module(x))
        fused = fuse(module, bn)
        y_folded = fused(x)
    return {
        "name": name,
        "layer": layer,
        "source": source,
        "shape": list(shape),
        "weight": flat(module.weight),
        "bias": flat(module.bias) if bias else None,
        "eps": EPS,
        "affine": affine,
        "gamma": flat(bn.weight) if affine else None,
        "beta": flat(bn.bias) if affine else None,
        "running_mean": flat(bn.running_mean),
        "running_var": flat(bn.running_var),
        "x": flat(x),
        "y": flat(y),
        "folded_weight": flat(fused.weight),
        "folded_bias": flat(fused.bias),
        "y_folded": flat(y_folded),
    }


def build_fold() -> dict:
    cases = [
        fold_case("conv_bn", 401, "Conv2d", (2, 3, 6, 6), 4),
        fold_case("conv_no_bias_bn", 402, "Conv2d", (2, 2, 5, 5), 3, bias=False),
        fold_case("conv_bn_no_affine", 403, "Conv2d", (1, 2, 5, 5), 3, affine=False),
        fold_case("linear_bn", 411, "Linear", (5, 6), 4),
        fold_case("linear_no_bias_bn", 412, "Linear", (3, 4), 5, bias=False),
    ]
    return fixture_file(cases)


def verify_fold(path: Path) -> None:
    """Recomputes every case in float64 numpy: W' = s·W, b' = s·(b − μ) + β
    with s = γ / sqrt(σ² + ε), and both outputs."""
    data = json.loads(path.read_text())
    assert data["generator"] == GENERATOR
    for case in data["cases"]:
        n, shape = case["name"], tuple(case["shape"])
        w = np.array(case["weight"], dtype=np.float64)
        out = len(case["running_mean"])
        w = w.reshape(out, -1)
        b = np.array(case["bias"] if case["bias"] is not None else [0.0] * out)
        gamma = np.array(case["gamma"] if case["affine"] else [1.0] * out)
        beta = np.array(case["beta"] if case["affine"] else [0.0] * out)
        mean, var = np.array(case["running_mean"]), np.array(case["running_var"])
        s = gamma / np.sqrt(var + case["eps"])
        close(f"{n} folded_weight", case["folded_weight"], (s[:, None] * w).reshape(-1))
        close(f"{n} folded_bias", case["folded_bias"], s * (b - mean) + beta)
        x = np.array(case["x"]).reshape(shape)
        if case["layer"] == "Conv2d":
            k = 3
            oh, ow = shape[2] - k + 1, shape[3] - k + 1
            cols = np.stack(
                [x[:, :, i:i + k, j:j + k].reshape(shape[0], -1) for i in range(oh) for j in range(ow)],
                axis=2,
            )  # (N, C·K·K, OH·OW)
            z = np.einsum("of,nfp->nop", w, cols) + b[None, :, None]
            y = (s[None, :, None] * (z - mean[None, :, None]) + beta[None, :, None])
        else:
            z = x @ w.T + b
            y = s * (z - mean) + beta
        close(f"{n} y", case["y"], y.reshape(-1))
        close(f"{n} y_folded", case["y_folded"], y.reshape(-1))
        print(f"ok  {n}")
    print(f"verified {len(data['cases'])} cases in {path}")


# --------------------------------------------------------------------------
# The fixture files
# --------------------------------------------------------------------------


def build() -> dict:
    cases = [
        torch_case("torch_bn1d_default", 101, (8, 5), momentum=0.1),
        torch_case("torch_bn1d_cumulative", 102, (8, 5), momentum=None),
        torch_case("torch_bn1d_no_affine", 103, (6, 4), momentum=0.1, affine=False),
        torch_case("torch_bn2d_default", 104, (4, 3, 5, 5), momentum=0.1),
        torch_case("torch_bn2d_momentum_0_3", 105, (2, 3, 4, 4), momentum=0.3),
        torch_case("torch_bn1d_batch_of_two", 106, (2, 3), momentum=0.1),
        scratch_case("d2l_scratch_rank2", 201, (8, 5)),
        scratch_case("d2l_scratch_rank4", 202, (4, 3, 5, 5)),
    ]
    return fixture_file(cases)


def dumps(value, indent: int = 0) -> str:
    """JSON with one key per line but every number list on a single line:
    readable in a diff, and a fraction of the size of json.dumps(indent=...)."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [inner + dumps(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def setup_torch() -> None:
    torch.manual_seed(0)  # nothing here draws from torch's RNG; set anyway
    torch.set_num_threads(1)  # fixed reduction order
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def warn_on_version_drift() -> None:
    found = {"torch": torch.__version__.split("+")[0], "numpy": np.__version__}
    for lib, want in EXPECTED_VERSIONS.items():
        if found[lib] != want:
            print(
                f"warning: {lib} {found[lib]} differs from {want}, the version the "
                "committed fixtures were made with; outputs may differ in the last bits",
                file=sys.stderr,
            )


# --------------------------------------------------------------------------
# Verification: reload the file and recompute every case in float64 numpy
# --------------------------------------------------------------------------


def reference_step(x, dy, gamma, beta, rm, rv, eps, momentum, step, kind):
    """Training-mode forward/backward and running-stat update, in float64."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    m = x.size // x.shape[1]  # values per channel
    mu = x.mean(axis=axes)
    var_b = ((x - mu.reshape(bshape)) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(var_b + eps)
    x_hat = (x - mu.reshape(bshape)) * inv.reshape(bshape)
    y = gamma.reshape(bshape) * x_hat + beta.reshape(bshape)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx = (gamma * inv / m).reshape(bshape) * (
        m * dy - dbeta.reshape(bshape) - x_hat * dgamma.reshape(bshape)
    )
    if kind == "unbiased":
        var_run = var_b * m / (m - 1)
        w_new = 1.0 / step if momentum is None else momentum  # torch: weight of the batch
    else:
        var_run = var_b
        w_new = 1.0 - momentum  # d2l: momentum is the weight of the old value
    rm = (1.0 - w_new) * rm + w_new * mu
    rv = (1.0 - w_new) * rv + w_new * var_run
    return y, dx, dgamma, dbeta, rm, rv


def close(name, got, want, rtol=1e-4, atol=1e-5):
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want)) if got.shape == want.shape else "shape"
        raise AssertionError(f"{name}: mismatch (max abs err {err})")


def verify(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["generator"] == GENERATOR
    for case in data["cases"]:
        n = case["name"]
        shape = tuple(case["shape"])
        size, c = int(np.prod(shape)), case["num_features"]
        assert shape[1] == c and len(shape) in (2, 4), n
        assert case["source"] == {2: "torch.nn.BatchNorm1d", 4: "torch.nn.BatchNorm2d"}[
            len(shape)
        ] or case["source"] == "d2l_scratch", n
        affine = case["affine"]
        for key in ("gamma", "beta"):
            assert (len(case[key]) == c) if affine else case[key] is None, (n, key)
        assert len(case["running_mean_init"]) == c and len(case["running_var_init"]) == c
        assert len(case["train_steps"]) == TRAIN_STEPS, n

        gamma = np.array(case["gamma"] if affine else [1.0] * c)
        beta = np.array(case["beta"] if affine else [0.0] * c)
        rm = np.array(case["running_mean_init"], dtype=np.float64)
        rv = np.array(case["running_var_init"], dtype=np.float64)
        for i, st in enumerate(case["train_steps"], start=1):
            where = f"{n} step {i}"
            for key in ("x", "grad_y", "y", "grad_x"):
                assert len(st[key]) == size, (where, key)
            for key in ("running_mean", "running_var"):
                assert len(st[key]) == c, (where, key)
            for key in ("grad_gamma", "grad_beta"):
                assert (len(st[key]) == c) if affine else st[key] is None, (where, key)
            assert st["num_batches_tracked"] == i, where
            x = np.array(st["x"]).reshape(shape)
            dy = np.array(st["grad_y"]).reshape(shape)
            y, dx, dg, db, rm, rv = reference_step(
                x, dy, gamma, beta, rm, rv, case["eps"], case["momentum"], i,
                case["running_var_kind"],
            )
            close(f"{where} y", st["y"], y)
            close(f"{where} grad_x", st["grad_x"], dx)
            if affine:
                close(f"{where} grad_gamma", st["grad_gamma"], dg)
                close(f"{where} grad_beta", st["grad_beta"], db)
            close(f"{where} running_mean", st["running_mean"], rm)
            close(f"{where} running_var", st["running_var"], rv)
            # Continue from the stored (float32) stats, as the module did.
            rm = np.array(st["running_mean"])
            rv = np.array(st["running_var"])

        ev = case["eval"]
        assert len(ev["x"]) == size and len(ev["y"]) == size, n
        bshape = (1, -1) if len(shape) == 2 else (1, -1, 1, 1)
        xe = np.array(ev["x"]).reshape(shape)
        ye = gamma.reshape(bshape) * (xe - rm.reshape(bshape)) / np.sqrt(
            rv.reshape(bshape) + case["eps"]
        ) + beta.reshape(bshape)
        close(f"{n} eval y", ev["y"], ye)
        print(f"ok  {n}")
    print(f"verified {len(data['cases'])} cases in {path}")


# torch's defaults for the arguments a norms case may omit
NORM_DEFAULT_AFFINE = {"LayerNorm": True, "InstanceNorm2d": False, "GroupNorm": True}
NORM_AFFINE_ARG = {
    "LayerNorm": "elementwise_affine",
    "InstanceNorm2d": "affine",
    "GroupNorm": "affine",
}


def norm_reference(case):
    """y, grad_x, grad_gamma, grad_beta of one norms case, in float64: view
    the input as rows of values that share one mean and variance, standardise
    each row, then scale and shift."""
    layer, args, shape = case["layer"], case["args"], tuple(case["shape"])
    if layer == "LayerNorm":
        ns = tuple(args["normalized_shape"])
        d = len(ns)
        assert shape[len(shape) - d:] == ns, case["name"]
        rows = int(np.prod(shape[: len(shape) - d]))
        param_shape, bshape = list(ns), ns  # trailing axes broadcast
        sum_axes = tuple(range(len(shape) - d))
    else:
        c = args["num_features"] if layer == "InstanceNorm2d" else args["num_channels"]
        assert shape[1] == c, case["name"]
        if layer == "InstanceNorm2d":
            assert len(shape) == 4, case["name"]
            rows = shape[0] * c
        else:
            assert len(shape) >= 2 and c % args["num_groups"] == 0, case["name"]
            rows = shape[0] * args["num_groups"]
        param_shape, bshape = [c], (1, c) + (1,) * (len(shape) - 2)
        sum_axes = tuple(a for a in range(len(shape)) if a != 1)
    x = np.array(case["x"], dtype=np.float64).reshape(rows, -1)
    dy = np.array(case["grad_y"], dtype=np.float64).reshape(shape)
    mu = x.mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + case["eps"])
    x_hat = ((x - mu) * inv).reshape(shape)
    if case["affine"]:
        assert case["param_shape"] == param_shape, case["name"]
        gamma = np.array(case["gamma"]).reshape(bshape)
        beta = np.array(case["beta"]).reshape(bshape)
    else:
        assert case["param_shape"] is None, case["name"]
        gamma, beta = 1.0, 0.0
    y = gamma * x_hat + beta
    d_hat = (dy * gamma).reshape(rows, -1)
    xh = x_hat.reshape(rows, -1)
    dx = inv * (
        d_hat - d_hat.mean(axis=1, keepdims=True) - xh * (d_hat * xh).mean(axis=1, keepdims=True)
    )
    dgamma = (dy * x_hat).sum(axis=sum_axes).reshape(-1)
    dbeta = dy.sum(axis=sum_axes).reshape(-1)
    return y, dx, dgamma, dbeta


def verify_norms(path: Path) -> None:
    data = json.loads(path.read_text())
    assert data["generator"] == GENERATOR
    for case in data["cases"]:
        n, layer, args = case["name"], case["layer"], case["args"]
        assert case["source"] == f"torch.nn.{layer}", n
        assert case["eps"] == args.get("eps", EPS), n
        assert case["affine"] == args.get(NORM_AFFINE_ARG[layer], NORM_DEFAULT_AFFINE[layer]), n
        size = int(np.prod(case["shape"]))
        for key in ("x", "grad_y", "y", "grad_x"):
            assert len(case[key]) == size, (n, key)
        y, dx, dg, db = norm_reference(case)
        close(f"{n} y", case["y"], y)
        close(f"{n} grad_x", case["grad_x"], dx)
        for key, want in (("gamma", None), ("beta", None), ("grad_gamma", dg), ("grad_beta", db)):
            if not case["affine"]:
                assert case[key] is None, (n, key)
                continue
            assert len(case[key]) == int(np.prod(case["param_shape"])), (n, key)
            if want is not None:
                close(f"{n} {key}", case[key], want)
        print(f"ok  {n}")
    print(f"verified {len(data['cases'])} cases in {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="batch-norm JSON path")
    ap.add_argument(
        "--norms-out", type=Path, default=DEFAULT_NORMS_OUT,
        help="layer/instance/group-norm JSON path",
    )
    ap.add_argument(
        "--fold-out", type=Path, default=DEFAULT_FOLD_OUT, help="batch-norm folding JSON path",
    )
    ap.add_argument("--verify", action="store_true", help="only re-check the existing files")
    args = ap.parse_args()
    if not args.verify:
        setup_torch()
        warn_on_version_drift()
        for out, contents in (
            (args.out, build), (args.norms_out, build_norms), (args.fold_out, build_fold),
        ):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(dumps(contents()) + "\n")
            print(f"wrote {out} ({out.stat().st_size} bytes)")
    verify(args.out)
    verify_norms(args.norms_out)
    verify_fold(args.fold_out)


if __name__ == "__main__":
    main()
