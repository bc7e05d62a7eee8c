"""Child process of tests/test_crash.py: resume from DIR, then save forever until killed.

Each round: one DP step, ``save_states`` (the ledger first), the parameters (atomic), one
NoisyOutput query (write-ahead ledger), and the NoisyOutput model plus its ledger.
"""
import os
import sys
import warnings

import mxnet as mx
from mxnet import gluon

from mxprivacy import NoisyOutput
from mxprivacy._io import atomic_path
from tests.gluon.ckpt_helpers import build, step


def noisy_output(directory):
    mx.random.seed(0)
    dense = gluon.nn.Dense(2, in_units=3)
    dense.initialize()
    return NoisyOutput(dense, mechanism="laplace", epsilon=0.01, output_bound=1.0,
                       budget_epsilon=1e6, ledger_path=os.path.join(directory, "wal"))


def main(directory):
    warnings.simplefilter("ignore")
    block, trainer = build("adam")
    ckpt, params = (os.path.join(directory, n) for n in ("trainer.states", "net.params"))
    if os.path.exists(ckpt):
        trainer.load_states(ckpt)
        block.load_parameters(params)
    model = os.path.join(directory, "model.params")
    out = noisy_output(directory)
    if os.path.exists(model):
        out.load_parameters(model)
    print("ready", flush=True)
    round_ = 0
    while True:
        round_ += 1
        step(block, trainer, round_)
        trainer.save_states(ckpt)  # ledger before weights: a crash between over-reports
        with atomic_path(params) as tmp:
            block.save_parameters(tmp)
        out(mx.nd.ones((1, 3)))
        out.save_parameters(model)


if __name__ == "__main__":
    main(sys.argv[1])
