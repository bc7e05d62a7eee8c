"""The ``mxprivacy`` command line. ``epsilon`` and ``calibrate`` never import MXNet."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import List, Optional

from .errors import InvalidParameterError, MXPrivacyError, PrivacyWarning

__all__ = ["main"]


class _UsageError(Exception):
    """A malformed option: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        raise _UsageError(message)


def _number(kind, test, wanted: str):
    """An argparse type: parse with ``kind`` and check ``test``, or say what is wanted."""
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    parse.__name__ = wanted
    return parse


_POS_INT = _number(int, lambda v: v >= 1, "an integer >= 1")
_NONNEG_INT = _number(int, lambda v: v >= 0, "an integer >= 0")
_POS_FLOAT = _number(float, lambda v: v > 0, "a finite number > 0")
_NONNEG_FLOAT = _number(float, lambda v: v >= 0, "a finite number >= 0")
_RATE = _number(float, lambda v: 0 < v <= 1, "a rate in (0, 1]")
_DELTA = _number(float, lambda v: 0 < v < 1, "a delta in (0, 1)")
_FRACTION = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_UNIT = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
_AT_LEAST_ONE = _number(float, lambda v: v >= 1, "a number >= 1")


def _add_rate_options(parser: argparse.ArgumentParser, accountants=("rdp", "pld")) -> None:
    parser.add_argument("--sample-rate", type=_RATE, help="Poisson sampling rate q")
    parser.add_argument("--steps", type=_POS_INT, help="number of DP-SGD steps")
    parser.add_argument("--dataset-size", type=_POS_INT,
                        help="N, with --batch-size and --epochs")
    parser.add_argument("--batch-size", type=_POS_INT, help="expected batch size B (q = B/N)")
    parser.add_argument("--epochs", type=_POS_FLOAT, help="epochs (steps = ceil(E*N/B))")
    parser.add_argument("--delta", type=_DELTA, required=True)
    _add_accountant_option(parser, accountants)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def _add_accountant_option(parser: argparse.ArgumentParser,
                           accountants=("rdp", "pld")) -> None:
    parser.add_argument("--accountant", choices=list(accountants), default="rdp",
                        help="rdp: moments accountant; pld: privacy loss distributions "
                             "(tighter, slower)" + ("; gdp: Gaussian DP, a central-limit "
                             "approximation (not an upper bound); all: the three side by "
                             "side" if "all" in accountants else ""))


def _rate_and_steps(args) -> tuple:
    from .accounting.calibration import MAX_STEPS

    direct = (args.sample_rate, args.steps)
    derived = (args.dataset_size, args.batch_size, args.epochs)
    usage = "Give --sample-rate and --steps, or --dataset-size, --batch-size and --epochs"
    if any(v is not None for v in direct) and any(v is not None for v in derived):
        raise InvalidParameterError(f"{usage}, not both.")
    if None not in direct:
        return direct
    if None in derived:
        raise InvalidParameterError(f"{usage}.")
    if args.batch_size > args.dataset_size:
        raise InvalidParameterError(
            f"--batch-size {args.batch_size} exceeds --dataset-size {args.dataset_size}: "
            "the expected batch size is q * N, with q at most 1.")
    steps = args.epochs * args.dataset_size / args.batch_size
    if steps > MAX_STEPS:
        raise InvalidParameterError(
            f"--epochs {args.epochs:g} means {steps:.3g} steps, more than accounting supports "
            f"({MAX_STEPS:.0e}).")
    return args.batch_size / args.dataset_size, int(math.ceil(steps))


def _fmt(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"


def _step_event(args, rate: float):
    """(one step's event, neighbouring relation) for ``--sampling``."""
    from .accounting import (GaussianEvent, PoissonSampledEvent,
                             SampledWithoutReplacementEvent)

    gaussian = GaussianEvent(args.noise_multiplier)
    if args.sampling == "poisson":
        return PoissonSampledEvent(rate, gaussian), "add_remove"
    if args.dataset_size is None or args.batch_size is None:
        raise InvalidParameterError(
            "--sampling fixed needs --dataset-size and --batch-size (B records drawn "
            "without replacement at every step), with --epochs.")
    return (SampledWithoutReplacementEvent(args.dataset_size, args.batch_size, gaussian),
            "replace_one")


def _epsilons(args, rate: float, steps: int) -> dict:
    """Epsilon per accountant name (several with ``--accountant all``)."""
    from .accounting import make_accountant

    event, relation = _step_event(args, rate)
    names = ["rdp", "pld", "gdp"] if args.accountant == "all" else [args.accountant]
    found = {}
    for name in names:
        acc = make_accountant(name, relation, approximation_ok=True)
        with warnings.catch_warnings():  # an infinite epsilon is explained below instead
            warnings.simplefilter("ignore", PrivacyWarning)
            acc.compose(event, steps)
            found[name] = (acc.get_epsilon(args.delta), acc.is_upper_bound)
    return found


def _cmd_epsilon(args) -> dict:
    rate, steps = _rate_and_steps(args)
    found = _epsilons(args, rate, steps)
    how = ("fixed-size batches of %d of %d records (replace-one neighbours)"
           % (args.batch_size, args.dataset_size) if args.sampling == "fixed"
           else f"sampling rate {rate:.6g}")
    for name, (eps, bound) in found.items():
        claim = "satisfy" if bound else "are, by a central-limit approximation (not an " \
            "upper bound), about"
        print(f"{steps} steps at {how} with noise multiplier {args.noise_multiplier:g} "
              f"{claim} ({_fmt(eps)}, {args.delta:g})-DP ({name.upper()} accountant).")
    eps = max(e for e, bound in found.values() if bound) if any(
        bound for _, bound in found.values()) else next(iter(found.values()))[0]
    if math.isinf(eps):
        print("Epsilon is infinite: this noise does not hide a single record at this delta "
              "(noise multiplier 0 releases it exactly; below 1e-100 it counts as 0). "
              "Add noise or raise delta.")
    elif eps > 1e3:
        print("Epsilon is astronomically large: this noise hides essentially nothing.")
    bounds = [e for e, bound in found.values() if bound]
    result = {"epsilon": min(bounds) if bounds else None,  # never an approximation
              "upper_bound": bool(bounds), "delta": args.delta, "accountant": args.accountant, "sample_rate": rate,
              "noise_multiplier": args.noise_multiplier, "steps": steps,
              "sampling": args.sampling}
    if not bounds:
        result["epsilon_approximation"] = found[args.accountant][0]
    if args.accountant == "all":
        result["epsilons"] = {name: {"epsilon": e, "upper_bound": bound}
                              for name, (e, bound) in found.items()}
    return result


def _cmd_calibrate(args) -> dict:
    from .accounting import calibrate_noise_multiplier, epsilon_for

    rate, steps = _rate_and_steps(args)
    sigma = calibrate_noise_multiplier(args.target_epsilon, args.delta, rate, steps=steps,
                                       accountant=args.accountant)
    achieved = epsilon_for(sigma, rate, steps, args.delta, args.accountant)
    print(f"Noise multiplier {_fmt(sigma)} gives epsilon {_fmt(achieved)} <= "
          f"{args.target_epsilon:g} at delta {args.delta:g} over {steps} steps (q={rate:.6g}).")
    return {"epsilon": achieved, "achieved_epsilon": achieved, "delta": args.delta,
            "accountant": args.accountant, "sample_rate": rate, "noise_multiplier": sigma,
            "steps": steps, "target_epsilon": args.target_epsilon}


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_output(path: str, flag: str, source: str, force: bool) -> None:
    """Refuse an output that cannot be written, or that would replace the input."""
    if os.path.isdir(path):
        raise InvalidParameterError(f"{flag} {path} is a directory; give a file name.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidParameterError(f"{flag} {path}: directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"{flag} {path}: directory {parent} is not writable.")
    if _same_file(path, source) and not force:
        raise InvalidParameterError(
            f"{flag} {path} is the input file: writing it would replace the raw data. "
            "Choose another file, or pass --force.")


def _check_outputs(args) -> None:
    if not os.path.isfile(args.input):
        raise InvalidParameterError(f"Input {args.input} is not a readable file.")
    _check_output(args.output, "-o", args.input, args.force)
    if args.report:
        _check_output(args.report, "--report", args.input, args.force)
        if _same_file(args.report, args.output):
            raise InvalidParameterError("--report and -o name the same file.")


def _split_list(text: Optional[str], flag: str) -> Optional[List[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise InvalidParameterError(f"{flag} has an empty name: {text!r}.")
    if len(set(items)) != len(items):
        raise InvalidParameterError(f"{flag} names a column twice: {text!r}.")
    return items


def _read_table(args):
    import pandas as pd

    names = _split_list(args.names, "--names")
    try:
        frame = pd.read_csv(args.input, skipinitialspace=True,
                            header=None if args.no_header else 0,
                            na_values=args.na_values.split(",") if args.na_values else None)
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # EmptyDataError, ParserError
        raise InvalidParameterError(f"Cannot read {args.input}: {exc}") from exc
    if names is not None:
        if len(names) != frame.shape[1]:
            raise InvalidParameterError(
                f"--names gives {len(names)} names but {args.input} has {frame.shape[1]} "
                "columns.")
        frame.columns = names
    frame.columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise InvalidParameterError(f"{args.input} has no data rows.")
    return frame


def _cmd_anonymize(args) -> dict:
    from ._io import atomic_write
    from .preprocessing import KAnonymizer

    _check_outputs(args)  # before any write
    frame = _read_table(args)
    anonymizer = KAnonymizer(
        _split_list(args.quasi_identifiers, "--quasi-identifiers"), args.k,
        sensitive=args.sensitive, l=args.l_diversity, l_kind=args.l_kind, c=args.c,
        t=args.t_closeness, max_suppression=args.max_suppression, mode=args.mode,
        output=args.output_mode)
    out = anonymizer.anonymize(frame)
    report = dict(anonymizer.report_, input=args.input, output=args.output)
    atomic_write(args.output, out.to_csv(index=False).encode("utf-8"))
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


def _anonymize_parser(sub) -> None:
    anon = sub.add_parser("anonymize", help="k-anonymize a CSV file (Mondrian)")
    anon.add_argument("input")
    anon.add_argument("-o", "--output", required=True)
    anon.add_argument("--force", action="store_true",
                      help="allow -o or --report to replace the input file")
    anon.add_argument("--quasi-identifiers", required=True, help="comma-separated columns")
    anon.add_argument("--k", type=_POS_INT, required=True)
    anon.add_argument("--sensitive")
    anon.add_argument("--l-diversity", type=_AT_LEAST_ONE)
    anon.add_argument("--l-kind", choices=["distinct", "entropy", "recursive"],
                      default="distinct")
    anon.add_argument("--c", type=_POS_FLOAT, help="c of recursive (c, l)-diversity")
    anon.add_argument("--t-closeness", type=_UNIT)
    anon.add_argument("--max-suppression", type=_FRACTION, default=0.0)
    anon.add_argument("--mode", choices=["strict", "relaxed"], default="strict")
    anon.add_argument("--output-mode", choices=["generalized", "representative"],
                      default="generalized")
    anon.add_argument("--no-header", action="store_true",
                      help="the first line is data (columns are 0, 1, ... unless --names)")
    anon.add_argument("--names", help="comma-separated column names (replace the header)")
    anon.add_argument("--na-values", help="comma-separated extra missing markers, e.g. '?'")
    anon.add_argument("--report", help="write the report JSON here")
    anon.add_argument("--json", action="store_true", help="print one JSON object last")
    anon.set_defaults(func=_cmd_anonymize)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mxprivacy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    eps = sub.add_parser("epsilon", help="epsilon of DP-SGD settings")
    eps.add_argument("--noise-multiplier", type=_NONNEG_FLOAT, required=True)
    eps.add_argument("--sampling", choices=["poisson", "fixed"], default="poisson",
                     help="poisson: each record joins each batch with probability q; "
                          "fixed: B records drawn afresh without replacement every step")
    _add_rate_options(eps, ("rdp", "pld", "gdp", "all"))
    eps.set_defaults(func=_cmd_epsilon)

    cal = sub.add_parser("calibrate", help="smallest noise multiplier for a target epsilon")
    cal.add_argument("--target-epsilon", type=_POS_FLOAT, required=True)
    _add_rate_options(cal)
    cal.set_defaults(func=_cmd_calibrate)

    _anonymize_parser(sub)
    from .train_cli import add_train_parser  # after this module's helpers exist
    add_train_parser(sub)
    from .audit.cli import add_audit_parser  # scikit-learn only when `audit` runs
    add_audit_parser(sub)
    from .distributed.cli import add_launch_parser  # no MXNet import
    add_launch_parser(sub)
    from .federated.cli import add_federated_parser; add_federated_parser(sub)  # no MXNet/Flower
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        result = args.func(args)
    except (_UsageError, MXPrivacyError) as exc:
        print("mxprivacy: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    if isinstance(result, int):  # `launch` returns its job's exit code
        return result
    if args.json:
        print(json.dumps({key: _json_safe(value) for key, value in result.items()}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
