"""Workers of tests/distributed/test_train_dist.py, started by ``launch_local``.

``python -m tests.distributed.dist_train_worker train-killed STEP -- TRAIN ARGS``
    ``mxprivacy train TRAIN ARGS``, except that rank 1 kills itself with SIGKILL right
    after its step STEP (a test hook: nothing in mxprivacy knows about it).
``python -m tests.distributed.dist_train_worker train-cnn OUTDIR DATA_DIR``
    ``run_training`` of the CNN on 2048 MNIST images (4 steps); each rank writes its
    result to ``result-RANK.json``.
``python -m tests.distributed.dist_train_worker run OUTDIR``
    DP-SGD on a small synthetic task; after every step rank 0 writes the checkpoint
    (``save_states``), then the weights, then ``saved.json`` (steps and epsilon of the
    checkpoint just written). Each worker writes its pid to ``pid-RANK``. It runs until
    the test kills a worker.
``python -m tests.distributed.dist_train_worker resume OUTDIR``
    Every worker loads those weights and that checkpoint, takes RESUME_STEPS more steps
    and writes ``report-RANK.json``.
"""
import json
import os
import signal
import sys
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from mxprivacy import DPDataLoader, DPTrainer, PrivateBlock

SIZE, FEATURES, CLASSES = 256, 10, 3
SETTINGS = dict(noise_multiplier=1.0, max_grad_norm=0.5, expected_batch_size=16,
                dataset_size=SIZE)
OPTIMIZER = ("sgd", {"learning_rate": 0.1, "momentum": 0.9})
RESUME_STEPS = 4
LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def make_net():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, in_units=FEATURES, activation="tanh"),
            gluon.nn.Dense(CLASSES, in_units=8))
    net.initialize(mx.init.Xavier())
    return PrivateBlock(net)


def make_trainer(block, kvstore):
    timeout = 30 if kvstore.startswith("dist") else None
    return DPTrainer(block.collect_params(), *OPTIMIZER, kvstore=kvstore,
                     dist_timeout=timeout, **SETTINGS)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SIZE, FEATURES)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32") + (x[:, 1] > 1)


def train(block, trainer, num_batches, after_step=None):
    for x, y in DPDataLoader(data(), expected_batch_size=SETTINGS["expected_batch_size"],
                             trainer=trainer, num_batches=num_batches):
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        if after_step is not None:
            after_step()


def write_json(path, value):
    """Whole or absent: the test reads it while the job runs."""
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle)
    os.replace(path + ".tmp", path)


def scenario_run(out):
    block = make_net()
    trainer = make_trainer(block, "dist_sync")
    write_json(os.path.join(out, f"pid-{trainer.rank}"), os.getpid())

    def checkpoint():
        # The ledger first: killed between the two writes, the checkpoint counts one step
        # more than the weights carry (an over-count), never fewer.
        trainer.save_states(os.path.join(out, "ckpt"))
        if trainer.rank == 0:
            block.save_parameters(os.path.join(out, "params.tmp"))
            os.replace(os.path.join(out, "params.tmp"), os.path.join(out, "params"))
            write_json(os.path.join(out, "saved.json"),
                       {"steps": trainer.steps, "epsilon": trainer.epsilon(1e-5)})

    train(block, trainer, 10 ** 6, checkpoint)  # until a worker is killed


def scenario_resume(out):
    block = make_net()
    block.load_parameters(os.path.join(out, "params"))
    trainer = make_trainer(block, "dist_sync")
    trainer.load_states(os.path.join(out, "ckpt"))  # every worker loads rank 0's file
    loaded = {"steps": trainer.steps, "epsilon": trainer.epsilon(1e-5)}
    train(block, trainer, RESUME_STEPS)
    write_json(os.path.join(out, f"report-{trainer.rank}.json"), {
        "loaded": loaded, "steps": trainer.steps, "epsilon": trainer.epsilon(1e-5),
        "ledger": trainer.accountant.state_dict(), "num_workers": trainer.num_workers,
        "weights": [p.data().asnumpy().sum().item()
                    for p in block.collect_params().values()]})


def train_killed(step, argv):
    original = DPTrainer.step

    def step_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.rank == 1 and self.steps >= step:
            os.kill(os.getpid(), signal.SIGKILL)

    DPTrainer.step = step_then_die
    from mxprivacy.cli import main

    return main(argv)


def train_cnn(out, data_dir):
    from mxprivacy.train import TrainConfig, run_training

    result = run_training(TrainConfig(model="cnn", data_dir=data_dir, train_limit=2048,
                                      epochs=1, kvstore="dist_sync", progress=False))
    write_json(os.path.join(out, f"result-{result.rank}.json"), result.to_dict())


def main(argv):
    warnings.simplefilter("ignore")
    if argv[0] == "train-killed":
        return train_killed(int(argv[1]), argv[argv.index("--") + 1:])
    if argv[0] == "train-cnn":
        return train_cnn(argv[1], argv[2])
    {"run": scenario_run, "resume": scenario_resume}[argv[0]](argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
