"""``mxprivacy audit``: membership-inference metrics and epsilon lower bounds from a .npz.

The file holds either ``in_scores`` and ``out_scores`` (one score per canary, HIGHER
meaning member), or ``loss_train`` and ``loss_test`` and/or ``labels_*`` with
``logits_*`` or ``probs_*`` (members are ``*_train``). Every array's header is read
before any data: unknown names, non-numeric dtypes and arrays of more than
``--max-scores`` numbers (default 10^7) are refused without loading them, and object
arrays are never unpickled. Canary scores get a Clopper-Pearson bound (independent
trials); ``--one-run`` states that they are canaries of one training run, each included
by a fair coin, and gives the one-run bound instead. Nothing here imports MXNet, and
scikit-learn is imported only when the command runs.
"""
from __future__ import annotations

import io
import math
import struct

from ..errors import AuditInputError
from . import _validate

__all__ = ["add_audit_parser", "load_scores", "SCORE_KEYS", "MODEL_KEYS", "MAX_SCORES"]

SCORE_KEYS = ("in_scores", "out_scores")
MODEL_KEYS = tuple(f"{field}_{side}" for field in ("loss", "labels", "logits", "probs")
                   for side in ("train", "test"))
MAX_SCORES = 10 ** 7      # default limit on the numbers in one array (80 MB as float64)
_MAX_HEADER = 10_000      # bytes of an .npy header (numpy >= 1.24 refuses longer ones too)
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
                       help="probability that a bound is wrong (default 0.05)")
    audit.add_argument("--delta", type=float, default=1e-5,
                       help="delta of the (epsilon, delta) claim tested, in (0, 1) "
                            "(default 1e-5)")
    audit.add_argument("--one-run", action="store_true",
                       help="in_scores/out_scores are canaries of ONE training run, each "
                            "included by an independent fair coin: give the one-run bound "
                            "(Steinke et al. 2023) instead of Clopper-Pearson")
    audit.add_argument("--max-scores", type=int, default=MAX_SCORES,
                       help=f"refuse arrays holding more numbers (default {MAX_SCORES:.0e})")
    audit.add_argument("--attacks", default="all",
                       help="comma-separated: threshold, threshold-entropy, lr, rf, knn; "
                            "or all that the file supports (default)")
    audit.add_argument("--seed", type=int, default=0,
                       help="seed of the trained attacks' folds and subsamples")
    audit.add_argument("--json", action="store_true", help="print one JSON object last")
    audit.set_defaults(func=_cmd_audit)


def _open_archive(path: str):
    """The open ``zipfile.ZipFile`` of ``path``, or an error saying what it is instead."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            single = _is_npy(handle)
    except OSError as exc:
        raise AuditInputError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if single:
        raise AuditInputError(f"{path} holds a single array, not named arrays. {_HOW}")
    try:
        return zipfile.ZipFile(path)
    except Exception as exc:  # any parser failure on untrusted bytes: not a usable .npz
        raise AuditInputError(f"{path} is not a .npz file of numeric arrays ({exc}). "
                              f"{_HOW}") from None


def _is_npy(handle) -> bool:
    """Whether ``handle`` starts with a readable .npy header (a file from np.save)."""
    try:
        _header(handle)
    except ValueError:
        return False
    return True


def _member_names(path: str, archive) -> dict:
    """``{array name: zip member name}``; unknown or repeated names are refused."""
    names = {}
    for member in archive.namelist():
        key = member[:-4] if member.endswith(".npy") else member
        if key in names:
            raise AuditInputError(f"{path} holds array {key!r} twice. {_HOW}")
        names[key] = member
    unknown = sorted(set(names) - set(SCORE_KEYS) - set(MODEL_KEYS))
    if unknown:
        raise AuditInputError(f"{path} has unknown arrays {unknown}; expected "
                              f"{list(SCORE_KEYS)} or some of {list(MODEL_KEYS)}.")
    return names


def _header(handle):
    """``(shape, fortran_order, dtype)`` of an .npy stream, reading at most
    ``_MAX_HEADER`` header bytes (numpy 1.23 would read any length it is told)."""
    import numpy as np

    prefix = handle.read(8)
    if len(prefix) < 8 or prefix[:6] != b"\x93NUMPY" or prefix[6] not in (1, 2):
        raise ValueError("not an .npy array of format version 1 or 2")
    size_bytes = handle.read(2 if prefix[6] == 1 else 4)
    if len(size_bytes) < (2 if prefix[6] == 1 else 4):
        raise ValueError("its header is cut short")
    length = struct.unpack("<H" if prefix[6] == 1 else "<I", size_bytes)[0]
    if length > _MAX_HEADER:
        raise ValueError(f"its header is {length} bytes long (at most {_MAX_HEADER})")
    stream = io.BytesIO(prefix + size_bytes + handle.read(length))
    version = np.lib.format.read_magic(stream)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(stream)


def _check_header(path: str, key: str, archive, member: str, max_scores: int) -> None:
    """Refuse ``key`` from its header alone: damaged, object, non-numeric or too large."""
    try:
        with archive.open(member) as handle:
            shape, _, dtype = _header(handle)
    except Exception as exc:  # damaged bytes fail in many ways
        raise AuditInputError(f"{path}: array {key!r} is damaged ({exc}).") from None
    if dtype.hasobject:
        raise AuditInputError(f"{path}: array {key!r} holds Python objects, which are never "
                              "unpickled. Save numeric arrays.")
    if dtype.kind not in "iuf":
        raise AuditInputError(f"{path}: array {key!r} has dtype {dtype}; give integer or "
                              "floating-point numbers.")
    count = math.prod(shape)
    if count > max_scores:
        raise AuditInputError(
            f"{path}: array {key!r} holds {count:,} numbers (shape {shape}), more than "
            f"--max-scores {max_scores:,}. Audit a subsample, or raise --max-scores if you "
            "trust the file and have the memory and time.")


def _read(path: str, max_scores: int = MAX_SCORES) -> dict:
    """The named arrays of ``path``, each checked from its header before it is loaded."""
    import numpy as np

    archive = _open_archive(path)
    with archive:
        names = _member_names(path, archive)
        for key, member in names.items():
            _check_header(path, key, archive, member, max_scores)
        arrays = {}
        for key, member in names.items():
            try:
                with archive.open(member) as handle:
                    arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
            except Exception as exc:  # e.g. a bad CRC, found only when the data is read
                raise AuditInputError(f"{path}: array {key!r} is damaged ({exc}).") from None
    return arrays


def load_scores(path: str, max_scores: int = MAX_SCORES) -> dict:
    """The named numeric arrays of ``path``, checked against the two layouts. No array
    may hold more than ``max_scores`` numbers (checked from its header, before loading)."""
    if isinstance(max_scores, bool) or not isinstance(max_scores, int) or max_scores < 1:
        raise AuditInputError(f"max_scores must be a whole number >= 1; got {max_scores!r}.")
    arrays = _read(path, max_scores)
    scores, model = set(arrays) & set(SCORE_KEYS), set(arrays) & set(MODEL_KEYS)
    if scores and model:
        raise AuditInputError(f"{path} mixes canary scores ({sorted(scores)}) with model "
                              f"outputs ({sorted(model)}); give one or the other.")
    if not scores and not model:
        raise AuditInputError(f"{path} has no arrays. {_HOW}")
    if scores and scores != set(SCORE_KEYS):
        raise AuditInputError(f"{path} needs both in_scores and out_scores.")
    return arrays


def _cmd_audit(args) -> dict:
    from .membership import (AttackInputData, audit_scores, full_slicing,
                             run_membership_attacks)

    significance = _validate.significance(args.significance)
    delta = _validate.delta(args.delta, allow_zero=False)
    arrays = load_scores(args.scores, args.max_scores)
    if "in_scores" in arrays:
        results = audit_scores(arrays["in_scores"], arrays["out_scores"],
                               significance=significance, delta=delta, one_run=args.one_run)
        print(results.summary())
        return dict(results.to_dict(), mode="scores",
                    epsilon_one_run=results.results[0].epsilon_one_run)
    if args.one_run:
        raise AuditInputError(
            "--one-run needs in_scores and out_scores (canary scores); this file holds "
            "model outputs, whose bound is Clopper-Pearson's.")
    data = AttackInputData(**arrays)
    attacks = "all" if args.attacks.strip() == "all" else [
        a.strip() for a in args.attacks.split(",")]
    results = run_membership_attacks(data, attacks, full_slicing(data),
                                     significance=significance, delta=delta,
                                     random_state=args.seed)
    print(results.summary())
    return dict(results.to_dict(), mode="model")
