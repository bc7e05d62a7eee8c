"""Where the DP step's time goes: capture, each rule's norms and clipped sum, the rest.

In one process, for ``benchmarks/dp_step.py``'s nets (``mlp``, ``cnn``) hybridized by
the user at batch 256, each piece is timed between ``nd.waitall()`` calls, median of
``--repeats`` runs:

- ``nonprivate_ms``: a hybridized ``gluon.Trainer`` step (forward, backward, update);
- ``capture_ms``: the DP forward and backward through ``PrivateBlock`` (graph capture);
- per rule layer, ``sq_norms_ms`` (fresh cache) and ``clipped_sum_ms`` (with the cache
  ``sq_norms`` left, as the trainer runs them);
- ``dp_step_ms``: a whole ``DPTrainer`` step (Poisson batch sizes, mean 256), and
  ``rest_ms`` = dp step - capture - rules (factors, noise, update, Python overhead).

Pieces synchronized one by one lose the overlap of the real step, so the parts can sum
to more than ``dp_step_ms``. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _median_ms(fn, repeats: int, setup=None) -> float:
    from mxnet import nd

    times = []
    for i in range(repeats + 3):
        if setup is not None:
            setup()
        nd.waitall()
        start = time.perf_counter()
        fn()
        nd.waitall()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def profile(model: str, repeats: int) -> dict:
    from mxnet import autograd, gluon, nd

    from dp_step import BATCH, _mx_data, _mx_net
    from mxprivacy import DPTrainer, PrivateBlock
    from mxprivacy.gluon.rules import rule_for

    x, y = _mx_data(model)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    plain = _mx_net(model, private=False)
    plain.hybridize(static_alloc=True, static_shape=True)
    plain_trainer = gluon.Trainer(plain.collect_params(), "sgd", {"learning_rate": 0.05})

    def plain_step():
        with autograd.record():
            loss = loss_fn(plain(x), y)
        loss.backward()
        plain_trainer.step(BATCH)

    net = _mx_net(model, private=True)
    net.hybridize(static_alloc=True, static_shape=True)
    net = PrivateBlock(net)
    trainer = DPTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                        noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=BATCH,
                        sample_rate=BATCH / 60000)

    def capture():
        net.discard_capture()
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()

    rng = np.random.default_rng(1)
    x2, y2 = nd.concat(x, x, dim=0), nd.concat(y, y, dim=0)

    def dp_step():
        size = int(min(rng.binomial(60000, BATCH / 60000), 2 * BATCH))
        with autograd.record():
            loss = loss_fn(net(x2[:size]), y2[:size])
        loss.backward()
        trainer.step(size)

    report = {"model": model, "batch": BATCH}
    # interleave the whole-step timings so that load changes hit both alike
    plain_ms, dp_ms = [], []
    for _ in range(3):
        plain_ms.append(_median_ms(plain_step, repeats))
        net.discard_capture()
        dp_ms.append(_median_ms(dp_step, repeats))
    report["nonprivate_ms"] = float(np.median(plain_ms))
    report["dp_step_ms"] = float(np.median(dp_ms))
    report["capture_ms"] = _median_ms(capture, repeats)

    capture()
    shard = net.pending_shards()[0]
    factors = nd.array(rng.uniform(0.1, 1.0, size=BATCH))
    layers = {}
    total_rules = 0.0
    for layer in shard.layers:
        rule = rule_for(layer)
        args = shard._rule_args(layer)
        holder = {}

        def norms():
            holder["cache"] = {}
            rule.sq_norms(*args, holder["cache"])

        def fresh_cache():
            holder["cache"] = {}
            rule.sq_norms(*args, holder["cache"])

        norms_ms = _median_ms(norms, repeats)
        sum_ms = _median_ms(lambda: rule.clipped_sum(*args, factors, holder["cache"]),
                            repeats, setup=fresh_cache)
        layers[layer.name] = {"type": type(layer).__name__,
                              "input": list(args[1][0].shape),
                              "out_grad": list(args[2][0].shape),
                              "sq_norms_ms": round(norms_ms, 3),
                              "clipped_sum_ms": round(sum_ms, 3)}
        total_rules += norms_ms + sum_ms
    report["layers"] = layers
    report["rules_ms"] = total_rules
    report["rest_ms"] = report["dp_step_ms"] - report["capture_ms"] - total_rules
    report["ratio"] = report["dp_step_ms"] / report["nonprivate_ms"]
    net.discard_capture()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    out = {m: profile(m, args.repeats) for m in args.models.split(",")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
