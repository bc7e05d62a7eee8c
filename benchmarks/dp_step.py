"""DP step against a hybridized non-private Gluon step of the same net, and Opacus.

Every MXNet net is hybridized by the user, as the Gluon tutorials do:
``net.hybridize(static_alloc=True, static_shape=True)``, before ``PrivateBlock(net)``
for the DP step, which then captures per-sample gradients inside cached graphs (issue
12). ``dp_imperative`` is the same DP step on the un-hybridized net (the imperative
capture), measured in the same run for comparison.

Nets (batch 256, CPU):
- ``mlp``: 784-256-10;
- ``cnn``: Opacus' MNIST CNN;
- ``lstm``: Embedding(10000, 64), then LSTM(64), then Dense(2), on length-64 sequences.
  The non-private baseline uses the fused ``gluon.rnn.LSTM``; DP uses ``DPLSTM``.

The DP steps take Poisson batch sizes (Binomial(60000, 256/60000), mean 256), since
``DPTrainer`` refuses a long run of equal sizes as a fixed-size loader.

Every variant runs in its own subprocesses (``--trials``, 3 by default), so its peak RSS is
its own. A timing is the median over trials of the median of ``--repeats`` steps after
warm-up. Opacus (hooks and ghost) runs when torch
and opacus are installed. Prints one JSON object::

    {"models": {name: {"nonprivate_ms", "dp_ms", "ratio", "opacus_best_ratio",
                       "peak_rss_ratio", "dp_secure_ms", "secure_ratio", ...}},
     "noise": {name: {"parameters", "default_ms", "secure_ms"}},
     "secure_noise_ms_per_million": ...}

Secure mode (``--secure``, on by default for mlp and cnn): ``dp_secure`` is the same DP
step with ``DPTrainer(..., secure_mode=True)`` (CSPRNG noise, sum of four Gaussians),
measured in the same run as ``dp``; ``secure_ratio`` is dp_secure / dp. The ``noise``
section times one synchronous draw of each model's noise vector (no background thread),
so it shows the cost the prefetch thread has to hide.
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
SECURE_MODELS = ("mlp", "cnn")
EXTRA: dict = {}  # extra fields a worker reports


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
    net = _mx_net(model, private=variant != "nonprivate")
    if variant != "dp_imperative":  # hybridized by the user, private or not
        net.hybridize(static_alloc=True, static_shape=True)
    if variant == "nonprivate":
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    else:
        net = PrivateBlock(net)
        secure = {"secure_mode": True} if variant == "dp_secure" else {}
        trainer = DPTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                            noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=BATCH, sample_rate=BATCH / 60000, **secure)

    if variant == "nonprivate":
        sizes = iter(lambda: BATCH, None)
    else:  # Poisson batch sizes (mean 256): DPTrainer refuses a run of equal sizes
        rng = np.random.default_rng(1)
        sizes = iter(lambda: int(min(rng.binomial(60000, BATCH / 60000), 2 * BATCH)), None)
        x, y = nd.concat(x, x, dim=0), nd.concat(y, y, dim=0)

    def step():
        size = next(sizes)
        if variant != "nonprivate":  # what DPDataLoader(..., trainer=trainer) does
            trainer.expect_examples(size)
        with autograd.record():
            loss = loss_fn(net(x[:size]), y[:size])
        loss.backward()
        trainer.step(size)

    ms = _median_ms(step, repeats, nd.waitall)
    if variant != "nonprivate":  # how many capture graphs ran (0: imperative capture)
        EXTRA["capture_graphs"] = len(net._graphs)
    return ms


def run_noise(model: str, variant: str, repeats: int) -> float:
    """One synchronous draw of the model's whole noise vector (``variant``: default or
    secure), as the background thread does it."""
    from mxnet import nd

    from mxprivacy.mechanisms import secure

    net = _mx_net(model, private=True)
    net(_mx_data(model)[0][:2])  # finish deferred initialization
    size = sum(p.data().size for p in net.collect_params().values() if p.grad_req != "null")
    rng = np.random.Generator(np.random.SFC64())
    draw = (lambda: secure.standard_normal(size)) if variant == "secure" else \
        (lambda: rng.standard_normal(size, dtype=np.float32))
    EXTRA["parameters"] = int(size)
    return _median_ms(draw, repeats, nd.waitall)


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
    run = {"mxnet": run_mxnet, "noise": run_noise}.get(framework, run_opacus)
    ms = run(model, variant, repeats)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"ms": ms, "peak_rss_mb": rss_mb, **EXTRA}))


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
    merged = {"ms": float(np.median([r["ms"] for r in good])),
              "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in good])),
              "trials_ms": [round(r["ms"], 3) for r in good]}
    if "capture_graphs" in good[0]:
        merged["capture_graphs"] = good[0]["capture_graphs"]
    return merged


def _secure_row(model: str, repeats: int, dp: dict) -> dict:
    """The secure DP step, measured in the same run as the normal one."""
    secure = _spawn("mxnet", model, "dp_secure", repeats)
    row = {"dp_secure_ms": secure.get("ms"),
           "secure_ratio": secure["ms"] / dp["ms"] if "ms" in secure and "ms" in dp else None,
           "secure_overhead_ms": (secure["ms"] - dp["ms"]
                                  if "ms" in secure and "ms" in dp else None),
           "dp_secure_trials_ms": secure.get("trials_ms")}
    if "error" in secure:
        row["dp_secure_error"] = secure["error"]
    return row


def _noise_costs(models, repeats: int) -> dict:
    from mxprivacy.mechanisms import secure

    secure.standard_normal(1000)
    start = time.perf_counter()
    secure.standard_normal(10 ** 6)
    report = {"secure_noise_ms_per_million": 1000.0 * (time.perf_counter() - start),
              "noise": {}}
    for model in models:
        default = _spawn_once("noise", model, "default", repeats)
        safe = _spawn_once("noise", model, "secure", repeats)
        report["noise"][model] = {"parameters": safe.get("parameters"),
                                  "default_ms": default.get("ms"),
                                  "secure_ms": safe.get("ms")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="JSON only (the default output)")
    parser.add_argument("--no-opacus", action="store_true")
    parser.add_argument("--no-secure", action="store_true",
                        help="skip the secure-mode step (mlp and cnn)")
    parser.add_argument("--no-imperative", action="store_true",
                        help="skip the DP step on the un-hybridized net")
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
        if not args.no_imperative:
            imperative = _spawn("mxnet", model, "dp_imperative", args.repeats)
            row.update({"dp_imperative_ms": imperative.get("ms"),
                        "imperative_ratio": (imperative["ms"] / plain["ms"]
                                             if "ms" in imperative and "ms" in plain else None),
                        "dp_capture_graphs": dp.get("capture_graphs")})
            row["trials_ms"]["dp_imperative"] = imperative.get("trials_ms")
        if have_opacus and row.get("dp_ms") and row.get("opacus_ms"):
            best = min(v for v in row["opacus_ms"].values() if v)
            row["dp_over_opacus_best_ms"] = row["dp_ms"] / best
        if model in SECURE_MODELS and not args.no_secure:
            row.update(_secure_row(model, args.repeats, dp))
        report["models"][model] = row
    if not args.no_secure:
        report.update(_noise_costs([m for m in args.models.split(",") if m in SECURE_MODELS],
                                   args.repeats))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
