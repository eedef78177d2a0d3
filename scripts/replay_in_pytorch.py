#!/usr/bin/env python3
"""Replay a `bnbook` LeNet-BN training run in PyTorch, step for step.

`cargo run --release --example export_run -- SEED EPOCHS run.json` writes the
initial weights of `lenet-bn` and the example order of every epoch. This script
builds the same network in PyTorch (batch norm written out as in d2l's
from-scratch version: old-value momentum 0.9, biased running variance, eps 1e-5,
prediction mode with the running statistics), loads those weights, trains with
SGD (lr 1.0, batch 256, the last batch of 96 kept) on exactly the same batches,
and prints loss / train accuracy / test accuracy per epoch, to compare with
`bnbook train --model lenet-bn --seed SEED`.

Run by hand (not in CI):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch numpy
    /tmp/venv/bin/python scripts/replay_in_pytorch.py run.json [--threads 2]
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
import torch
from torch import nn

DATA = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def idx(name):
    path = os.path.join(DATA, name)
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class ScratchBN(nn.Module):
    """Batch norm with explicit mode, d2l's conventions."""

    def __init__(self, c, rank):
        super().__init__()
        shape = (1, c) if rank == 2 else (1, c, 1, 1)
        self.axes = (0,) if rank == 2 else (0, 2, 3)
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=self.axes, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=self.axes, keepdim=True)
            with torch.no_grad():
                self.moving_mean.mul_(0.9).add_(0.1 * mean)
                self.moving_var.mul_(0.9).add_(0.1 * var)
        else:
            mean, var = self.moving_mean, self.moving_var
        return self.gamma * (x - mean) / torch.sqrt(var + 1e-5) + self.beta


def lenet_bn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), ScratchBN(6, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), ScratchBN(16, 4), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(256, 120), ScratchBN(120, 2), nn.Sigmoid(),
        nn.Linear(120, 84), ScratchBN(84, 2), nn.Sigmoid(),
        nn.Linear(84, 10))


def load_parameters(net, params):
    """bnbook order: per layer weight then bias (Linear weights are stored (in, out))."""
    ours = iter(params)
    for module in net:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w, b = next(ours), next(ours)
            wt = torch.tensor(w["values"], dtype=torch.float32).reshape(w["shape"])
            module.weight.data.copy_(wt.T if isinstance(module, nn.Linear) else wt)
            module.bias.data.copy_(torch.tensor(b["values"]).reshape(b["shape"]))
        elif isinstance(module, ScratchBN):
            g, b = next(ours), next(ours)
            module.gamma.data.copy_(torch.tensor(g["values"]).reshape(g["shape"]))
            module.beta.data.copy_(torch.tensor(b["values"]).reshape(b["shape"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = json.load(open(args.run))
    xtr = torch.from_numpy(idx("train-images-idx3-ubyte").astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    ytr = torch.from_numpy(idx("train-labels-idx1-ubyte").astype(np.int64))
    xte = torch.from_numpy(idx("t10k-images-idx3-ubyte").astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    yte = torch.from_numpy(idx("t10k-labels-idx1-ubyte").astype(np.int64))
    net = lenet_bn()
    load_parameters(net, run["parameters"])
    sgd = torch.optim.SGD(net.parameters(), lr=1.0)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch, order in enumerate(run["orders"], start=1):
        net.train()
        order = torch.tensor(order)
        total, correct, n = 0.0, 0, 0
        for i in range(0, len(order), 256):
            j = order[i:i + 256]
            x, y = xtr[j], ytr[j]
            sgd.zero_grad()
            out = net(x)
            loss = loss_fn(out, y)
            loss.backward()
            sgd.step()
            total += loss.item() * len(j)
            correct += int((out.argmax(1) == y).sum())
            n += len(j)
        net.eval()
        with torch.no_grad():
            test = sum(int((net(xte[i:i + 256]).argmax(1) == yte[i:i + 256]).sum()) for i in range(0, 10000, 256))
        rec = dict(epoch=epoch, loss=total / n, train_acc=correct / n, test_acc=test / 10000)
        history.append(rec)
        print(f"epoch {epoch:3d}: loss {rec['loss']:.3f}, train acc {rec['train_acc']:.3f}, test acc {rec['test_acc']:.3f}", flush=True)
    if args.json:
        json.dump(dict(model="lenet-bn (PyTorch replay)", seed=run["seed"], history=history), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
