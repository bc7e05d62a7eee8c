"""DP step against a hybridized non-private Gluon step of the same MLP, side by side.

MLP 784-256-10 at batch 256 on CPU. Modes: vectorized (default) and microbatch-of-one.
JSON: {"models": {name: {"nonprivate_ms", "dp_ms", "ratio"}}}.
"""
import argparse
import json
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from mxprivacy import DPTrainer, PrivateBlock
from mxprivacy.train import build_model


def _time_steps(step, repeats):
    for _ in range(3):
        step()
    nd.waitall()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        nd.waitall()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _net():
    mx.random.seed(0)
    net = build_model("mlp")
    net.initialize(mx.init.Xavier())
    return net


def measure(mode, batch, repeats):
    x = nd.random.normal(shape=(batch, 784))
    y = nd.array(np.arange(batch) % 10)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    plain = _net()
    plain.hybridize()
    trainer = gluon.Trainer(plain.collect_params(), "sgd", {"learning_rate": 0.1})

    def plain_step():
        with autograd.record():
            loss = loss_fn(plain(x), y)
        loss.backward()
        trainer.step(batch)

    private = PrivateBlock(_net(), mode=mode)
    if mode == "microbatch":
        private.hybridize()
    dp = DPTrainer(private.collect_params(), "sgd", {"learning_rate": 0.1}, noise_multiplier=1.0,
                   max_grad_norm=1.0, expected_batch_size=batch, sample_rate=batch / 60000)

    def dp_step():
        with autograd.record():
            loss = loss_fn(private(x), y)
        loss.backward()
        dp.step(batch)

    nonprivate_ms = _time_steps(plain_step, repeats)
    dp_ms = _time_steps(dp_step, repeats if mode == "vectorized" else max(3, repeats // 10))
    return {"nonprivate_ms": nonprivate_ms, "dp_ms": dp_ms, "ratio": dp_ms / nonprivate_ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    models = {f"mlp_{mode}": measure(mode, args.batch, args.repeats)
              for mode in ("vectorized", "microbatch")}
    out = {"batch": args.batch, "models": models}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
