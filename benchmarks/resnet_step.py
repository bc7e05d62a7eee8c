"""DP step of model_zoo ResNet-18 (after ``mxprivacy.fix``) against non-private steps.

``model_zoo.vision.resnet18_v1(classes=10)`` at batch 64 on 32x32 inputs, hybridized by
the user (``static_alloc=True``), as issue 12 asks. Three variants, each in its own
subprocesses (``--trials``, 3 by default, so peak RSS is the variant's own), measured
side by side in one run:

- ``nonprivate_bn``: the original net (BatchNorm) with ``gluon.Trainer``;
- ``nonprivate_fixed``: the net after ``fix()`` (GroupNorm) with ``gluon.Trainer``;
- ``dp``: the fixed net in ``PrivateBlock`` with ``DPTrainer`` (capture inside the cached
  graph), on Poisson batch sizes announced as ``DPDataLoader`` does.

A timing is the median over trials of the median of ``--repeats`` steps after 3 warm-up
steps. Prints one JSON object with the ms, the ratios and the peak RSS ratio.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

BATCH = 64
VARIANTS = ("nonprivate_bn", "nonprivate_fixed", "dp")


def _step_fn(variant: str):
    import mxnet as mx
    from mxnet import autograd, gluon, nd
    from mxnet.gluon.model_zoo import vision

    import mxprivacy

    rng = np.random.default_rng(0)
    x = nd.array(rng.normal(size=(BATCH, 3, 32, 32)))
    y = nd.array(np.arange(BATCH) % 10)
    net = vision.resnet18_v1(classes=10)
    if variant != "nonprivate_bn":
        net = mxprivacy.fix(net)
    net.initialize(mx.init.Xavier())
    net(x)
    net.hybridize(static_alloc=True)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    if variant != "dp":
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01})

        def step():
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(BATCH)
        return step
    block = mxprivacy.PrivateBlock(net)
    trainer = mxprivacy.DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.01},
                                  noise_multiplier=1.0, max_grad_norm=1.0,
                                  expected_batch_size=BATCH, sample_rate=BATCH / 50000)

    def dp_step():
        size = int(min(rng.binomial(50000, BATCH / 50000), BATCH))
        trainer.expect_examples(size)  # what DPDataLoader(..., trainer=trainer) does
        with autograd.record():
            loss = loss_fn(block(x[:size]), y[:size])
        loss.backward()
        trainer.step(size)
    return dp_step


def worker(variant: str, repeats: int) -> None:
    from mxnet import nd

    step = _step_fn(variant)
    for _ in range(3):
        step()
    nd.waitall()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        nd.waitall()
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"ms": 1000 * float(np.median(times)), "rss_mb": rss}))


def _spawn(variant: str, repeats: int, trials: int) -> dict:
    runs = []
    for _ in range(trials):
        out = subprocess.run([sys.executable, __file__, "--worker", variant,
                              "--repeats", str(repeats)], capture_output=True, text=True,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"ms": float(np.median([r["ms"] for r in runs])),
            "trials_ms": [round(r["ms"], 2) for r in runs],
            "rss_mb": float(np.median([r["rss_mb"] for r in runs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return
    rows = {v: _spawn(v, args.repeats, args.trials) for v in VARIANTS}
    report = {"model": "resnet18_v1(classes=10)", "batch": BATCH, "input": [3, 32, 32],
              "variants": rows,
              "dp_over_fixed": rows["dp"]["ms"] / rows["nonprivate_fixed"]["ms"],
              "dp_over_batchnorm": rows["dp"]["ms"] / rows["nonprivate_bn"]["ms"],
              "peak_rss_ratio": rows["dp"]["rss_mb"] / rows["nonprivate_fixed"]["rss_mb"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
