"""Worker of tests/gluon/test_dist_kvstore.py, started by ``launch_local`` (dist_sync on
loopback): ``python -m tests.gluon.dist_exit_worker SCENARIO``.

Two steps of a small DPTrainer, then a normal exit. ``pinned``: a daemon thread of the
script holds the trainer (as a background reporter or checkpointer would), so the
interpreter's teardown never frees the kvstore: ps-lite must be shut down before it.
``plain``: nothing holds it.
"""
import sys
import threading

import numpy as np
from mxnet import autograd, gluon, nd

from mxprivacy import DPTrainer
from tests.gluon.dist_worker import EXACT, EXACT_OPT, exact_net

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def main(scenario):
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), *EXACT_OPT, kvstore="dist_sync",
                        dist_own_sampler=True, dist_timeout=60, **EXACT)
    rng = np.random.default_rng(trainer.rank)
    for _ in range(2):
        x, y = rng.normal(size=(4, 5)), rng.integers(0, 3, size=4)
        with autograd.record():
            loss = LOSS(block(nd.array(x)), nd.array(y))
        loss.backward()
        trainer.step(4)
    if scenario == "pinned":
        forever = threading.Event()
        threading.Thread(target=lambda held=trainer: forever.wait(), daemon=True).start()
    print(f"rank {trainer.rank} trained", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
