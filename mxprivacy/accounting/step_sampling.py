"""How DP-SGD draws its batches, and the privacy event of one step: the one source the
trainer, its loader, the planner and calibration all use.

``"poisson"``
    Every record is in a batch independently with probability q, so batch sizes vary.
    One step is ``PoissonSampledEvent(q, GaussianEvent(sigma))``, accounted under the
    add/remove relation.
``"fixed"``
    Every step draws exactly B of the N records, uniformly at random without
    replacement and independently of every other step. One step is
    ``SampledWithoutReplacementEvent(N, B, GaussianEvent(sigma))``, accounted under the
    replace-one relation: neighbouring data sets have the same (public) size N and
    differ in one record.

Sensitivity under replace-one
    A replaced record takes out its clipped gradient (norm <= C) and puts in another
    one (norm <= C), so the clipped sum moves by at most 2C. The accountants apply this
    factor 2 themselves: a ``GaussianEvent``'s noise multiplier is noise std / C under
    both relations. The trainer therefore adds the same noise in both modes
    (std = sigma * C * sensitivity factor) and only the event and the relation change.
    Check with B = N: every record is in every step, and the accounted epsilon is that of
    the plain Gaussian mechanism with sensitivity 2C, i.e. of noise multiplier sigma / 2
    under add/remove (``tests/accounting/test_step_sampling.py``).

Clipping modes under replace-one
    Flat and per-layer clipping: a record's clipped gradient has norm at most C (or
    sqrt(sum C_l^2)), and the convention above holds. Microbatches of several records:
    the replaced record's microbatch moves from clip(S + g) to clip(S + g'), again by at
    most 2C, but the trainer keeps the add/remove factor 2 (noise 2 sigma C), so the
    charge is conservative (by a factor 2 in sigma). Adaptive clipping: a replaced
    record flips its centered count term from +1/2 to -1/2, a shift of 1 (1/2 under
    add/remove). The gradient's shift doubles too, so the split
    ``z^-2 = sigma_g^-2 + (2 count_noise)^-2`` still makes the pair one Gaussian with
    the accounted mu = 2/z (``tests/gluon/test_fixed_sampling.py``).

A shuffled epoch is neither
    ``gluon.data.DataLoader(shuffle=True)`` cuts one random permutation into batches.
    Those batches are not independent draws: a record in one batch is in no other batch
    of the epoch. So neither the Poisson analysis nor the without-replacement one
    describes it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

from ..errors import InvalidParameterError
from .base import ADD_REMOVE, REPLACE_ONE
from .events import (DpEvent, GaussianEvent, PoissonSampledEvent,
                     SampledWithoutReplacementEvent, _check_count)

__all__ = ["SAMPLINGS", "StepSampling", "step_sampling"]

SAMPLINGS = ("poisson", "fixed")
RATE_TOLERANCE = 1e-9
"""Relative tolerance when a sample rate is compared with B / N."""


def check_sampling(sampling) -> str:
    """``sampling`` if it names a sampler (``"poisson"`` or ``"fixed"``)."""
    if not isinstance(sampling, str) or sampling not in SAMPLINGS:
        raise InvalidParameterError(
            f"sampling must be 'poisson' or 'fixed', got {sampling!r}.")
    return sampling


def check_rate(sample_rate) -> float:
    """``sample_rate`` as a float in (0, 1]."""
    if isinstance(sample_rate, bool) or not (isinstance(sample_rate, numbers.Real)
                                             and 0 < sample_rate <= 1):
        raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    return float(sample_rate)


@dataclass(frozen=True)
class StepSampling:
    """How each step's batch is drawn. Build it with :meth:`poisson` or :meth:`fixed`.

    Attributes
    ----------
    kind : {"poisson", "fixed"}
    sample_rate : float
        q for Poisson sampling; B / N (each record's inclusion probability) for fixed.
    dataset_size, sample_size : int or None
        N and B of fixed-size sampling (None for Poisson).
    """

    kind: str
    sample_rate: float
    dataset_size: Optional[int] = None
    sample_size: Optional[int] = None

    @classmethod
    def poisson(cls, sample_rate: float) -> "StepSampling":
        """Each record in each batch independently with probability ``sample_rate``."""
        return cls("poisson", check_rate(sample_rate))

    @classmethod
    def fixed(cls, dataset_size: int, sample_size: int) -> "StepSampling":
        """Exactly ``sample_size`` of ``dataset_size`` records per step, drawn uniformly
        without replacement, independently at every step."""
        size = _check_count("dataset_size", dataset_size, 1)
        sample = _check_count("sample_size (the batch size B)", sample_size, 1)
        if sample > size:
            raise InvalidParameterError(
                f"A fixed-size batch of {sample} cannot be drawn from {size} records.")
        return cls("fixed", sample / size, size, sample)

    @property
    def neighboring(self) -> str:
        """The neighbouring relation this sampling is accounted under."""
        return ADD_REMOVE if self.kind == "poisson" else REPLACE_ONE

    def event(self, noise_multiplier: float) -> DpEvent:
        """The privacy event of one DP-SGD step with noise std ``noise_multiplier`` x C."""
        gaussian = GaussianEvent(noise_multiplier)
        if self.kind == "poisson":
            return PoissonSampledEvent(self.sample_rate, gaussian)
        return SampledWithoutReplacementEvent(self.dataset_size, self.sample_size, gaussian)

    @property
    def batches_per_epoch(self) -> int:
        """Batches of one loader epoch: ``ceil(1/q)`` (N examples on average) for
        Poisson, ``ceil(N/B)`` for fixed-size batches."""
        if self.kind == "poisson":
            return int(math.ceil(1.0 / self.sample_rate))
        return -(-self.dataset_size // self.sample_size)

    def describe(self) -> str:
        """A short description for error messages."""
        if self.kind == "poisson":
            return f"Poisson sampling at q = {self.sample_rate!r}"
        return (f"fixed-size batches of B = {self.sample_size} drawn without replacement "
                f"from N = {self.dataset_size}")


def step_sampling(sample_rate=None, *, sampling: Optional[str] = None,
                  dataset_size: Optional[int] = None,
                  sample_size: Optional[int] = None) -> StepSampling:
    """A :class:`StepSampling` from calibration-style arguments.

    ``sample_rate`` may already be a :class:`StepSampling` (then nothing else may be
    given). ``sampling="poisson"`` (the default) needs ``sample_rate``;
    ``sampling="fixed"`` needs ``dataset_size`` and ``sample_size``, and a
    ``sample_rate`` given with them must equal ``sample_size / dataset_size``.
    """
    if isinstance(sample_rate, StepSampling):
        if sampling is not None or dataset_size is not None or sample_size is not None:
            raise InvalidParameterError(
                "A StepSampling already says how batches are drawn: do not also pass "
                "sampling=, dataset_size= or sample_size=.")
        return sample_rate
    kind = check_sampling("poisson" if sampling is None else sampling)
    if kind == "poisson":
        if dataset_size is not None or sample_size is not None:
            raise InvalidParameterError(
                "dataset_size= and sample_size= describe fixed-size batches: pass "
                "sampling='fixed', or only sample_rate= for Poisson sampling.")
        return StepSampling.poisson(sample_rate)
    if dataset_size is None or sample_size is None:
        raise InvalidParameterError(
            "sampling='fixed' is accounted from the data set size N and the batch size B: "
            "pass dataset_size=N and sample_size=B.")
    scheme = StepSampling.fixed(dataset_size, sample_size)
    if sample_rate is not None and not math.isclose(check_rate(sample_rate), scheme.sample_rate,
                                                    rel_tol=RATE_TOLERANCE):
        raise InvalidParameterError(
            f"sample_rate={sample_rate!r} disagrees with sample_size / dataset_size = "
            f"{scheme.sample_size} / {scheme.dataset_size}; pass one or the other.")
    return scheme
