"""DP step against a hybridized non-private Gluon step of the same net, and Opacus.

Nets (batch 256, CPU):
- ``mlp``: 784-256-10;
- ``cnn``: Opacus' MNIST CNN;
- ``lstm``: Embedding(10000, 64), then LSTM(64), then Dense(2), on length-64 sequences.
  The non-private baseline uses the fused ``gluon.rnn.LSTM``; DP uses ``DPLSTM``.

Every variant runs in its own subprocesses (``--trials``, 3 by default), so its peak RSS is
its own. A timing is the median over trials of the median of ``--repeats`` steps after
warm-up. Opacus (hooks and ghost) runs when torch
and opacus are installed. Prints one JSON object::

    {"models": {name: {"nonprivate_ms", "dp_ms", "ratio", "opacus_best_ratio",
                       "peak_rss_ratio", ...}}}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

BATCH = 256
MODELS = ("mlp", "cnn", "lstm")


def _median_ms(step, repeats: int, sync) -> float:
    for _ in range(3):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


# -- MXNet -----------------------------------------------------------------------------
def _mx_data(model: str):
    from mxnet import nd
    rng = np.random.default_rng(0)
    if model == "mlp":
        x = nd.array(rng.normal(size=(BATCH, 784)))
    elif model == "cnn":
        x = nd.array(rng.normal(size=(BATCH, 1, 28, 28)))
    else:
        x = nd.array(rng.integers(0, 10000, size=(BATCH, 64)))
    classes = 2 if model == "lstm" else 10
    return x, nd.array(np.arange(BATCH) % classes)


def _mx_net(model: str, private: bool):
    import mxnet as mx
    from mxnet import gluon

    from mxprivacy.gluon import DPLSTM
    from mxprivacy.train import build_model

    mx.random.seed(0)
    if model in ("mlp", "cnn"):
        net = build_model(model)
    else:
        class TextClassifier(gluon.nn.HybridBlock if not private else gluon.nn.Block):
            def __init__(self):
                super().__init__()
                self.embed = gluon.nn.Embedding(10000, 64)
                self.rnn = DPLSTM(64, layout="NTC") if private else \
                    gluon.rnn.LSTM(64, layout="NTC")
                self.out = gluon.nn.Dense(2)

            def forward(self, x):  # used by the Block (DP) variant
                return self.out(self.rnn(self.embed(x))[:, -1, :])

            def hybrid_forward(self, F, x):
                return self.out(F.squeeze(F.slice_axis(self.rnn(self.embed(x)), axis=1,
                                                       begin=-1, end=None), axis=1))
        net = TextClassifier()
    net.initialize(mx.init.Xavier())
    return net


def run_mxnet(model: str, variant: str, repeats: int) -> float:
    from mxnet import autograd, gluon, nd

    from mxprivacy import DPTrainer, PrivateBlock

    x, y = _mx_data(model)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    net = _mx_net(model, private=variant == "dp")
    if variant == "nonprivate":
        net.hybridize(static_alloc=True, static_shape=True)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    else:
        net = PrivateBlock(net)
        trainer = DPTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                            noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=BATCH, sample_rate=BATCH / 60000)

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(BATCH)

    return _median_ms(step, repeats, nd.waitall)


# -- Opacus ------------------------------------------------------------------------------
def _torch_net(model: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if model == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    if model == "cnn":
        return nn.Sequential(nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
                             nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1),
                             nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(),
                             nn.Linear(32, 10))
    from opacus.layers import DPLSTM as OpacusDPLSTM

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10000, 64)
            self.rnn = OpacusDPLSTM(64, 64, batch_first=True)
            self.out = nn.Linear(64, 2)

        def forward(self, x):
            return self.out(self.rnn(self.embed(x))[0][:, -1, :])
    return Text()


def run_opacus(model: str, variant: str, repeats: int) -> float:
    import torch
    from opacus import PrivacyEngine

    rng = np.random.default_rng(0)
    if model == "lstm":
        x = torch.tensor(rng.integers(0, 10000, size=(BATCH, 64)))
    else:
        shape = (BATCH, 784) if model == "mlp" else (BATCH, 1, 28, 28)
        x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
    y = torch.tensor(np.arange(BATCH) % (2 if model == "lstm" else 10))
    net = _torch_net(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    criterion = torch.nn.CrossEntropyLoss()
    if variant != "torch":
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                             batch_size=BATCH)
        made = PrivacyEngine().make_private(
            module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, criterion=criterion, poisson_sampling=False,
            grad_sample_mode="ghost" if variant == "ghost" else "hooks")
        net, optimizer = made[0], made[1]
        if variant == "ghost":  # (model, optimizer, criterion, data_loader)
            criterion = made[2]

    def step():
        optimizer.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()

    return _median_ms(step, repeats, lambda: None)


def worker(framework: str, model: str, variant: str, repeats: int) -> None:
    run = run_mxnet if framework == "mxnet" else run_opacus
    ms = run(model, variant, repeats)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"ms": ms, "peak_rss_mb": rss_mb}))


def _spawn_once(framework: str, model: str, variant: str, repeats: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, model, variant,
           "--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


TRIALS = 3


def _spawn(framework: str, model: str, variant: str, repeats: int):
    """Median over TRIALS fresh processes: step times differ by up to 1.5x between
    processes on this machine (memory placement), though they are stable within one."""
    runs = [_spawn_once(framework, model, variant, repeats) for _ in range(TRIALS)]
    good = [r for r in runs if "ms" in r]
    if not good:
        return runs[0]
    return {"ms": float(np.median([r["ms"] for r in good])),
            "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in good])),
            "trials_ms": [round(r["ms"], 3) for r in good]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    parser.add_argument("--no-opacus", action="store_true")
    parser.add_argument("--trials", type=int, default=3, help="processes per variant")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "MODEL", "VARIANT"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeats)
        return
    global TRIALS
    TRIALS = args.trials
    try:
        import opacus  # noqa: F401
        have_opacus = not args.no_opacus
    except ImportError:
        have_opacus = False
    report = {"batch": BATCH, "threads": os.cpu_count(), "models": {}}
    for model in args.models.split(","):
        plain = _spawn("mxnet", model, "nonprivate", args.repeats)
        dp = _spawn("mxnet", model, "dp", args.repeats)
        row = {"nonprivate_ms": plain.get("ms"), "dp_ms": dp.get("ms"),
               "ratio": dp["ms"] / plain["ms"] if "ms" in dp and "ms" in plain else None,
               "peak_rss_ratio": (dp["peak_rss_mb"] / plain["peak_rss_mb"]
                                  if "ms" in dp and "ms" in plain else None),
               "opacus_best_ratio": None}
        row["trials_ms"] = {"nonprivate": plain.get("trials_ms"), "dp": dp.get("trials_ms")}
        for name, result in (("nonprivate", plain), ("dp", dp)):
            if "error" in result:
                row[f"{name}_error"] = result["error"]
        if have_opacus:
            torch_ms = _spawn("opacus", model, "torch", args.repeats).get("ms")
            modes = {v: _spawn("opacus", model, v, args.repeats).get("ms")
                     for v in ("hooks", "ghost")}
            ratios = {v: ms / torch_ms for v, ms in modes.items() if ms and torch_ms}
            row.update({"torch_nonprivate_ms": torch_ms,
                        "opacus_ms": modes, "opacus_ratios": ratios,
                        "opacus_best_ratio": min(ratios.values()) if ratios else None})
        report["models"][model] = row
    print(json.dumps(report))


if __name__ == "__main__":
    main()
