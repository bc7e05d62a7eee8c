"""``mxprivacy audit``: membership-inference metrics and epsilon lower bounds from a .npz.

The file holds either ``in_scores`` and ``out_scores`` (one score per canary, HIGHER
meaning member), or ``loss_train`` and ``loss_test`` and/or ``labels_*`` with
``logits_*`` or ``probs_*`` (members are ``*_train``). It is read with
``allow_pickle=False``: object arrays are refused, never unpickled. Nothing here imports
MXNet, and scikit-learn is imported only when the command runs.
"""
from __future__ import annotations

from ..errors import AuditInputError

__all__ = ["add_audit_parser", "load_scores", "SCORE_KEYS", "MODEL_KEYS"]

SCORE_KEYS = ("in_scores", "out_scores")
MODEL_KEYS = tuple(f"{field}_{side}" for field in ("loss", "labels", "logits", "probs")
                   for side in ("train", "test"))
_HOW = ("Save it with np.savez(path, in_scores=..., out_scores=...) or np.savez(path, "
        "loss_train=..., loss_test=...) (optionally labels_*, logits_* or probs_*).")


def add_audit_parser(sub) -> None:
    """Register ``audit`` on the subparsers ``sub`` of the ``mxprivacy`` parser."""
    audit = sub.add_parser(
        "audit", help="membership-inference attacks and an epsilon lower bound",
        description=__doc__.split("\n\n")[1])
    audit.add_argument("--scores", required=True, metavar="FILE.npz",
                       help="in_scores/out_scores, or loss_train/loss_test (+ labels_*, "
                            "logits_* or probs_*)")
    audit.add_argument("--significance", type=float, default=0.05,
                       help="probability that the bound is wrong (default 0.05)")
    audit.add_argument("--delta", type=float, default=1e-5,
                       help="delta of the (epsilon, delta) claim tested (default 1e-5)")
    audit.add_argument("--attacks", default="all",
                       help="comma-separated: threshold, threshold-entropy, lr, rf, knn; "
                            "or all that the file supports (default)")
    audit.add_argument("--seed", type=int, default=0,
                       help="seed of the trained attacks' folds and subsamples")
    audit.add_argument("--json", action="store_true", help="print one JSON object last")
    audit.set_defaults(func=_cmd_audit)


def _read(path: str) -> dict:
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise AuditInputError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # any parser failure on untrusted bytes: not a usable .npz
        raise AuditInputError(f"{path} is not a .npz file of numeric arrays ({exc}). "
                              f"{_HOW}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise AuditInputError(f"{path} holds a single array, not named arrays. {_HOW}")
    arrays = {}
    with loaded:
        for key in loaded.files:
            try:
                arrays[key] = loaded[key]
            except Exception as exc:  # numpy's reader fails in many ways on damaged bytes
                if "Object arrays" in str(exc):  # would need unpickling
                    raise AuditInputError(
                        f"{path}: array {key!r} holds Python objects, which are never "
                        "unpickled. Save numeric arrays.") from None
                raise AuditInputError(f"{path}: array {key!r} is damaged ({exc}).") from None
    return arrays


def load_scores(path: str) -> dict:
    """The named numeric arrays of ``path``, checked against the two layouts."""
    arrays = _read(path)
    unknown = sorted(set(arrays) - set(SCORE_KEYS) - set(MODEL_KEYS))
    if unknown:
        raise AuditInputError(f"{path} has unknown arrays {unknown}; expected "
                              f"{list(SCORE_KEYS)} or some of {list(MODEL_KEYS)}.")
    scores, model = set(arrays) & set(SCORE_KEYS), set(arrays) & set(MODEL_KEYS)
    if scores and model:
        raise AuditInputError(f"{path} mixes canary scores ({sorted(scores)}) with model "
                              f"outputs ({sorted(model)}); give one or the other.")
    if not scores and not model:
        raise AuditInputError(f"{path} has no arrays. {_HOW}")
    if scores and scores != set(SCORE_KEYS):
        raise AuditInputError(f"{path} needs both in_scores and out_scores.")
    for key, array in arrays.items():
        if array.dtype.kind not in "iuf":
            raise AuditInputError(f"{path}: array {key!r} has dtype {array.dtype}; give "
                                  "integer or floating-point numbers.")
    return arrays


def _cmd_audit(args) -> dict:
    from .membership import (AttackInputData, audit_scores, full_slicing,
                             run_membership_attacks)

    arrays = load_scores(args.scores)
    if "in_scores" in arrays:
        results = audit_scores(arrays["in_scores"], arrays["out_scores"],
                               significance=args.significance, delta=args.delta)
        one_run = results.results[0].epsilon_one_run
        out = dict(results.to_dict(), mode="scores", epsilon_one_run=one_run)
        print(results.summary())
        print(f"One-run epsilon lower bound {one_run:.4f} (Steinke, Nasr & Jagielski 2023): "
              "valid when each canary was included in training independently with "
              "probability 1/2.")
        return out
    data = AttackInputData(**arrays)
    attacks = "all" if args.attacks.strip() == "all" else [
        a.strip() for a in args.attacks.split(",")]
    results = run_membership_attacks(data, attacks, full_slicing(data),
                                     significance=args.significance, delta=args.delta,
                                     random_state=args.seed)
    print(results.summary())
    return dict(results.to_dict(), mode="model")
