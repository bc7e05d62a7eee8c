"""``mxprivacy federated-demo``: its options, and what it prints.

Registering the subcommand imports neither MXNet nor Flower (nor the rest of
:mod:`mxprivacy.federated`): they load when the demo runs. Every round prints one plain
line (accuracy, user-level epsilon); the summary follows, and with ``--json`` the last
stdout line is one JSON object.
"""
from __future__ import annotations

from ..cli import _DELTA, _NONNEG_FLOAT, _NONNEG_INT, _POS_FLOAT, _POS_INT, _RATE, _number

__all__ = ["add_federated_parser"]

_CLIENTS = _number(int, lambda v: v >= 2, "an integer >= 2")

def _defaults():
    """DemoConfig's field defaults (their one source); demo.py imports only numpy."""
    import dataclasses

    from .demo import DEFAULT_NOISE_MULTIPLIER, DemoConfig

    found = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    found["noise_multiplier"] = DEFAULT_NOISE_MULTIPLIER
    return found


def add_federated_parser(sub) -> None:
    """Register ``federated-demo`` on the subparsers ``sub`` of the ``mxprivacy`` parser."""
    d = _defaults()
    demo = sub.add_parser(
        "federated-demo", help="federated learning with user-level DP (Flower simulation)",
        description="Train a Gluon MLP split across simulated Flower clients with "
                    "user-level DP-FedAvg (McMahan et al. 2018): each round every client "
                    "joins with probability q, its update is clipped to C, and the server "
                    "adds N(0, (sigma C)^2) to the sum once. Prints accuracy and the "
                    "user-level epsilon per round.")
    demo.add_argument("--dataset", choices=["digits", "mnist"], default=d["dataset"])
    demo.add_argument("--data-dir", help="directory with MNIST IDX files (or MXPRIVACY_DATA)")
    demo.add_argument("--clients", type=_CLIENTS, default=d["clients"],
                      help=f"K, the declared number of clients (default {d['clients']})")
    demo.add_argument("--rounds", type=_POS_INT, default=d["rounds"],
                      help=f"default {d['rounds']}")
    demo.add_argument("--sample-rate", type=_RATE, default=d["sample_rate"],
                      help=f"q: each client joins a round with this probability "
                           f"(default {d['sample_rate']:g})")
    demo.add_argument("--clip-norm", type=_POS_FLOAT, default=d["clip_norm"],
                      help=f"C: L2 bound on each client's update (default {d['clip_norm']:g})")
    noise = demo.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=_NONNEG_FLOAT,
                       help=f"sigma (default {d['noise_multiplier']:g})")
    noise.add_argument("--target-epsilon", type=_POS_FLOAT,
                       help="calibrate sigma to reach this user-level epsilon after --rounds")
    demo.add_argument("--delta", type=_DELTA, default=d["delta"],
                      help=f"default {d['delta']:g}")
    demo.add_argument("--secure-aggregation", action="store_true",
                      help="SecAgg+: the server learns only the sum of the clipped updates")
    demo.add_argument("--iid", action="store_true",
                      help="split the data IID (default: non-IID by label)")
    demo.add_argument("--classes-per-client", type=_POS_INT, default=d["classes_per_client"],
                      help=f"labels per client in the non-IID split "
                           f"(default {d['classes_per_client']})")
    demo.add_argument("--local-epochs", type=_POS_INT, default=d["local_epochs"],
                      help=f"default {d['local_epochs']}")
    demo.add_argument("--batch-size", type=_POS_INT, default=d["batch_size"],
                      help=f"local batch size (default {d['batch_size']})")
    demo.add_argument("--lr", type=_POS_FLOAT, default=d["lr"],
                      help=f"local SGD learning rate (default {d['lr']:g})")
    demo.add_argument("--server-learning-rate", type=_POS_FLOAT,
                      default=d["server_learning_rate"],
                      help=f"default {d['server_learning_rate']:g}")
    demo.add_argument("--accountant", choices=["rdp", "pld"], default=d["accountant"])
    demo.add_argument("--no-dp", action="store_true",
                      help="non-private baseline: Flower's FedAvg, no clipping, no noise")
    demo.add_argument("--partition-seed", type=_NONNEG_INT,
                      help="seed of the data split (public; default: random)")
    demo.add_argument("--seed", type=_NONNEG_INT,
                      help="seed of the model initialization only (sampling and noise "
                           "always use OS entropy)")
    demo.add_argument("--no-progress", action="store_true", help="no line per round")
    demo.add_argument("--json", action="store_true", help="print one JSON object last")
    demo.set_defaults(func=_cmd_federated_demo)


def _config(args):
    from .demo import DemoConfig

    return DemoConfig(dataset=args.dataset, data_dir=args.data_dir, clients=args.clients,
                      rounds=args.rounds, sample_rate=args.sample_rate,
                      clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier,
                      target_epsilon=args.target_epsilon, delta=args.delta,
                      secure_aggregation=args.secure_aggregation, iid=args.iid,
                      classes_per_client=args.classes_per_client,
                      local_epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr,
                      server_learning_rate=args.server_learning_rate,
                      dp=not args.no_dp, accountant=args.accountant,
                      partition_seed=args.partition_seed, seed=args.seed,
                      progress=not args.no_progress)


def _cmd_federated_demo(args) -> dict:
    from .demo import run_demo

    result = run_demo(_config(args).validate())
    split = "IID" if result.iid else f"non-IID, {result.classes_per_client} labels per client"
    secure = ", SecAgg+" if result.secure_aggregation else ""
    if result.dp:
        privacy = (f"user-level ({result.epsilon:.3g}, {result.delta:g})-DP "
                   f"(sigma={result.noise_multiplier:.3g}, C={result.clip_norm:g}, "
                   f"q={result.sample_rate:g}{secure})")
    else:
        privacy = "no privacy (FedAvg)"
    print(f"test accuracy {result.test_accuracy:.4f} after {result.rounds} rounds on "
          f"{result.clients} clients ({result.dataset}, {split}) at {privacy}; "
          f"{result.seconds_per_round:.2f} s per round, {result.rejected} rejected, "
          f"{result.failures} failed updates")
    return result.to_dict()
