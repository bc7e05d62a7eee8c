"""The ``mxprivacy`` command line. ``epsilon`` and ``calibrate`` never import MXNet."""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from typing import List, Optional

from .errors import MXPrivacyError, PrivacyWarning

__all__ = ["main"]


def _add_rate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample-rate", type=float, help="Poisson sampling rate q")
    parser.add_argument("--steps", type=int, help="number of DP-SGD steps")
    parser.add_argument("--dataset-size", type=int, help="N, with --batch-size and --epochs")
    parser.add_argument("--batch-size", type=int, help="expected batch size B (q = B/N)")
    parser.add_argument("--epochs", type=float, help="epochs (steps = ceil(E*N/B))")
    parser.add_argument("--delta", type=float, required=True)
    _add_accountant_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def _add_accountant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accountant", choices=["rdp", "pld"], default="rdp",
                        help="rdp: moments accountant; pld: privacy loss distributions "
                             "(tighter, slower)")


def _rate_and_steps(args) -> tuple:
    if args.sample_rate is not None and args.steps is not None:
        if args.steps < 1:
            raise MXPrivacyError(f"--steps must be a positive integer, got {args.steps}.")
        return args.sample_rate, args.steps
    if None not in (args.dataset_size, args.batch_size, args.epochs):
        rate = args.batch_size / args.dataset_size
        return rate, int(math.ceil(args.epochs * args.dataset_size / args.batch_size))
    raise MXPrivacyError("Give --sample-rate and --steps, or --dataset-size, --batch-size "
                         "and --epochs.")


def _cmd_epsilon(args) -> dict:
    from .accounting import epsilon_for

    rate, steps = _rate_and_steps(args)
    with warnings.catch_warnings():  # an infinite epsilon is explained below instead
        warnings.simplefilter("ignore", PrivacyWarning)
        eps = epsilon_for(args.noise_multiplier, rate, steps, args.delta, args.accountant)
    print(f"{steps} steps at sampling rate {rate:.6g} with noise multiplier "
          f"{args.noise_multiplier:g} satisfy ({eps:.4f}, {args.delta:g})-DP "
          f"({args.accountant.upper()} accountant).")
    if math.isinf(eps):
        print("Epsilon is infinite: this noise does not hide a single record at this delta "
              "(noise multiplier 0 releases it exactly). Add noise or raise delta.")
    return {"epsilon": eps, "delta": args.delta, "accountant": args.accountant,
            "sample_rate": rate, "noise_multiplier": args.noise_multiplier, "steps": steps}


def _cmd_calibrate(args) -> dict:
    from .accounting import calibrate_noise_multiplier, epsilon_for

    rate, steps = _rate_and_steps(args)
    sigma = calibrate_noise_multiplier(args.target_epsilon, args.delta, rate, steps=steps,
                                       accountant=args.accountant)
    achieved = epsilon_for(sigma, rate, steps, args.delta, args.accountant)
    print(f"Noise multiplier {sigma:.4f} gives epsilon {achieved:.4f} <= "
          f"{args.target_epsilon:g} at delta {args.delta:g} over {steps} steps (q={rate:.6g}).")
    return {"epsilon": achieved, "achieved_epsilon": achieved, "delta": args.delta,
            "accountant": args.accountant, "sample_rate": rate, "noise_multiplier": sigma,
            "steps": steps, "target_epsilon": args.target_epsilon}


def _cmd_train(args) -> dict:
    from .train import TrainConfig, run_training

    cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                      epochs=args.epochs, batch_size=args.batch_size,
                      noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon,
                      delta=args.delta, max_grad_norm=args.max_grad_norm, lr=args.lr,
                      momentum=args.momentum, mode=args.mode, seed=args.seed,
                      accountant=args.accountant,
                      progress=not args.no_progress)
    if cfg.target_epsilon is not None:
        cfg.noise_multiplier = None
    result = run_training(cfg)
    print(f"test accuracy {result.test_accuracy:.4f} at ({result.epsilon:.3f}, "
          f"{result.delta:g})-DP after {result.steps} steps "
          f"(sigma={result.noise_multiplier:.3f}, C={result.max_grad_norm:g}, "
          f"q={result.sample_rate:.5f}, {result.seconds:.1f} s)")
    return result.to_dict()


def _cmd_anonymize(args) -> dict:
    import pandas as pd

    from ._io import atomic_write
    from .preprocessing import KAnonymizer

    try:
        frame = pd.read_csv(args.input, skipinitialspace=True,
                            na_values=args.na_values.split(",") if args.na_values else None)
    except (OSError, ValueError) as exc:
        raise MXPrivacyError(f"Cannot read {args.input}: {exc}") from exc
    anonymizer = KAnonymizer(
        [q.strip() for q in args.quasi_identifiers.split(",")], args.k,
        sensitive=args.sensitive, l=args.l_diversity, l_kind=args.l_kind, c=args.c,
        t=args.t_closeness, max_suppression=args.max_suppression, mode=args.mode,
        output=args.output_mode)
    out = anonymizer.anonymize(frame)
    atomic_write(args.output, out.to_csv(index=False).encode("utf-8"))
    report = dict(anonymizer.report_, input=args.input, output=args.output)
    if args.report:
        atomic_write(args.report, json.dumps(report, indent=2).encode("utf-8"))
    print(f"{report['rows_out']} of {report['rows_in']} rows written to {args.output} "
          f"({report['suppressed']} suppressed): k={report['k_achieved']}, "
          f"{report['classes']} classes, NCP {report['ncp']:.4f}, {report['seconds']:.2f} s.")
    return report


def _json_safe(value):
    """Strict JSON has no Infinity: an infinite epsilon is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxprivacy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    eps = sub.add_parser("epsilon", help="epsilon of DP-SGD settings")
    eps.add_argument("--noise-multiplier", type=float, required=True)
    _add_rate_options(eps)
    eps.set_defaults(func=_cmd_epsilon)

    cal = sub.add_parser("calibrate", help="smallest noise multiplier for a target epsilon")
    cal.add_argument("--target-epsilon", type=float, required=True)
    _add_rate_options(cal)
    cal.set_defaults(func=_cmd_calibrate)

    anon = sub.add_parser("anonymize", help="k-anonymize a CSV file (Mondrian)")
    anon.add_argument("input")
    anon.add_argument("-o", "--output", required=True)
    anon.add_argument("--quasi-identifiers", required=True, help="comma-separated columns")
    anon.add_argument("--k", type=int, required=True)
    anon.add_argument("--sensitive")
    anon.add_argument("--l-diversity", type=float)
    anon.add_argument("--l-kind", choices=["distinct", "entropy", "recursive"],
                      default="distinct")
    anon.add_argument("--c", type=float, help="c of recursive (c, l)-diversity")
    anon.add_argument("--t-closeness", type=float)
    anon.add_argument("--max-suppression", type=float, default=0.0)
    anon.add_argument("--mode", choices=["strict", "relaxed"], default="strict")
    anon.add_argument("--output-mode", choices=["generalized", "representative"],
                      default="generalized")
    anon.add_argument("--na-values", help="comma-separated extra missing markers, e.g. '?'")
    anon.add_argument("--report", help="write the report JSON here")
    anon.add_argument("--json", action="store_true", help="print one JSON object last")
    anon.set_defaults(func=_cmd_anonymize)

    train = sub.add_parser("train", help="train a classifier with DP-SGD")
    train.add_argument("--dataset", choices=["digits", "mnist"], default="mnist")
    train.add_argument("--data-dir", help="directory with MNIST IDX files (or MXPRIVACY_DATA)")
    train.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    train.add_argument("--epochs", type=float, default=60)
    train.add_argument("--batch-size", type=int, default=256, help="expected batch size")
    noise = train.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float, default=1.1)
    noise.add_argument("--target-epsilon", type=float)
    train.add_argument("--delta", type=float, default=1e-5)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--lr", type=float, default=0.5)
    train.add_argument("--momentum", type=float, default=0.0)
    train.add_argument("--mode", choices=["auto", "vectorized", "microbatch"], default="auto")
    train.add_argument("--seed", type=int, default=0)
    _add_accountant_option(train)
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--json", action="store_true", help="print one JSON object last")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MXPrivacyError as exc:
        print(f"mxprivacy: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({key: _json_safe(value) for key, value in result.items()}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
