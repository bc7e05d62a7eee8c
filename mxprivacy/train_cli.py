"""``mxprivacy train``: its options, and what it prints.

With ``--kvstore dist_sync`` (or ``dist_device_sync``) every worker of a job started by
``mxprivacy launch -n W -s S -- mxprivacy train --kvstore dist_sync ...`` runs this
command; only rank 0 prints (progress on stderr, the summary and ``--json`` on stdout),
so the job's output is one machine's. Nothing here imports MXNet until the run starts.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings

from .cli import (_DELTA, _FRACTION, _NONNEG_FLOAT, _NONNEG_INT, _POS_FLOAT, _POS_INT,
                  _add_accountant_option, _number)
from .errors import PrivacyWarning

__all__ = ["add_train_parser"]

_SEED_NOTE = ("mxprivacy: note: --sampling-seed makes the batches and the noise "
              "reproducible; the privacy guarantee assumes a secret sample, so keep the seed "
              "secret or report this run as non-private.")
_TIMEOUT = _number(float, lambda v: v > 0, "a number of seconds > 0 (or inf)")


def _seconds(text: str) -> float:
    """``--dist-timeout``: seconds > 0, or ``inf`` (no limit)."""
    return math.inf if text.strip().lower() in ("inf", "infinity") else _TIMEOUT(text)


def _train_config(args):
    """The TrainConfig of ``mxprivacy train``: options not given take the model's recipe."""
    from .train import TrainConfig

    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                       epochs=args.epochs, batch_size=args.batch_size,
                       noise_multiplier=args.noise_multiplier,
                       target_epsilon=args.target_epsilon, delta=args.delta,
                       max_grad_norm=args.max_grad_norm, lr=args.lr, momentum=args.momentum,
                       activation=args.activation, inputs=args.inputs,
                       ema_decay=args.ema_decay, mode=args.mode,
                       seed=args.seed, sampling_seed=args.sampling_seed,
                       accountant=args.accountant, progress=not args.no_progress,
                       show_loss=not args.hide_loss, kvstore=args.kvstore,
                       dist_timeout=args.dist_timeout)


def _cmd_train(args):
    """Train; rank 0 returns the JSON dict, the other workers of a job return 0 (quiet)."""
    from .train import run_training

    cfg = _train_config(args)
    with warnings.catch_warnings():
        if cfg.sampling_seed is not None:  # one line here instead of one warning per object
            print(_SEED_NOTE, file=sys.stderr)
            warnings.filterwarnings("ignore", ".*seed.*", PrivacyWarning)
        result = run_training(cfg)
    if result.rank != 0:
        return 0
    workers = (f" on {result.num_workers} workers ({result.kvstore})"
               if result.server_epsilon is not None else "")
    print(f"test accuracy {result.test_accuracy:.4f} at ({result.epsilon:.3f}, "
          f"{result.delta:g})-DP after {result.steps} steps{workers} "
          f"(sigma={result.noise_multiplier:.3f}, C={result.max_grad_norm:g}, "
          f"q={result.sample_rate:.5f}, {result.seconds:.1f} s)")
    if result.server_epsilon is not None:
        print(f"against the parameter server, which sees each worker's push: "
              f"({result.server_epsilon:.3f}, {result.delta:g})-DP")
    return result.to_dict()


def _recipe_help(name: str, flag: str = "") -> str:
    """``"default: cnn X, mlp Y"``, read from train.RECIPES (their one source)."""
    from .train import RECIPES

    values = ", ".join(f"{model} {getattr(recipe, name):g}" if isinstance(
        getattr(recipe, name), (int, float)) else f"{model} {getattr(recipe, name)}"
        for model, recipe in sorted(RECIPES.items()))
    return f"{flag}default from the model's recipe: {values}"


def _add_distributed_options(train: argparse.ArgumentParser) -> None:
    from .train import KVSTORES

    train.add_argument("--kvstore", choices=list(KVSTORES),
                       default="local",
                       help="local: one machine; dist_sync / dist_device_sync: the workers "
                            "of a parameter-server job, started with mxprivacy launch -n W "
                            "-s S -- mxprivacy train --kvstore dist_sync ... (same epsilon "
                            "as one machine; only rank 0 prints)")
    train.add_argument("--dist-timeout", type=_seconds, metavar="SECONDS",
                       help="with a dist kvstore: a worker that waits this long for the "
                            "others (one died or hangs) exits with code 75 (default "
                            "$MXPRIVACY_DIST_TIMEOUT, else 600; inf: no limit)")


def add_train_parser(sub) -> None:
    """Register ``train`` on the subparsers ``sub`` of the ``mxprivacy`` parser."""
    from .train import RECIPES

    train = sub.add_parser(
        "train", help="train a classifier with DP-SGD",
        description="Train with DP-SGD. Options not given take the model's recipe "
                    "(mxprivacy.train.RECIPES). " + " ".join(
                        f"{model}: {recipe.source}." for model, recipe in RECIPES.items()))
    train.add_argument("--dataset", choices=["digits", "mnist"], default="mnist")
    train.add_argument("--data-dir", help="directory with MNIST IDX files (or MXPRIVACY_DATA)")
    train.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    train.add_argument("--epochs", type=_POS_FLOAT, help=_recipe_help("epochs"))
    train.add_argument("--batch-size", type=_POS_INT,
                       help=_recipe_help("batch_size", "expected batch size; "))
    noise = train.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=_NONNEG_FLOAT,
                       help=_recipe_help("noise_multiplier"))
    noise.add_argument("--target-epsilon", type=_POS_FLOAT,
                       help="calibrate the noise multiplier to reach this epsilon")
    train.add_argument("--delta", type=_DELTA, default=1e-5)
    train.add_argument("--max-grad-norm", type=_POS_FLOAT, help=_recipe_help("max_grad_norm"))
    train.add_argument("--lr", type=_POS_FLOAT, help=_recipe_help("lr"))
    train.add_argument("--momentum", type=_FRACTION, help=_recipe_help("momentum"))
    train.add_argument("--activation", choices=["relu", "tanh"],
                       help=_recipe_help("activation"))
    train.add_argument("--inputs", choices=["standardized", "unit"],
                       help=_recipe_help("inputs", "pixel scaling (unit: [0, 1]); "))
    train.add_argument("--ema-decay", type=_number(float, lambda v: 0 < v < 1,
                                                   "a number in (0, 1)"),
                       help="evaluate an exponential moving average of the weights with this "
                            "decay, e.g. 0.999 (post-processing: free in privacy)")
    train.add_argument("--mode", choices=["auto", "vectorized", "microbatch"], default="auto")
    train.add_argument("--seed", type=_NONNEG_INT,
                       help="seed of the model initialization only (default: OS entropy)")
    train.add_argument("--sampling-seed", type=_NONNEG_INT,
                       help="seed of Poisson sampling and noise, for reproducible "
                            "experiments; the guarantee assumes it stays secret")
    _add_accountant_option(train)
    _add_distributed_options(train)
    train.add_argument("--no-progress", action="store_true",
                       help="no progress output (default: a bar on a terminal, a line per "
                            "tenth of the run otherwise)")
    train.add_argument("--hide-loss", action="store_true",
                       help="do not show the (un-noised) training loss in the progress "
                            "output or the curve")
    train.add_argument("--json", action="store_true", help="print one JSON object last")
    train.set_defaults(func=_cmd_train)
