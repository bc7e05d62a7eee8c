"""Checks that keep ``DPTrainer``'s reported epsilon true.

Each function here closes one way in which one record could move what the trainer
releases by more than the sensitivity its accountant assumes, or in which the
accountant could be told the wrong sampling rate. They raise classes of
:mod:`mxprivacy.errors` whose messages say what to do.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..accounting.step_sampling import StepSampling, check_sampling
from ..errors import (BatchSizeMismatchError, ForeignParameterError, InvalidParameterError,
                      PrivacyWarning, SamplingError)

__all__ = ["check_kvstore", "check_compression", "resolve_sample_rate", "resolve_sampling",
           "check_warn_options", "check_secure_options", "check_loss_reduction",
           "FixedSizeDetector", "ExactSizeCheck", "size_check", "owning_block"]

LOSS_REDUCTIONS = ("sum", "mean")


def positive(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), or a clear error."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidParameterError(f"{name} must be a finite number {bound}, got {value!r}.")
    return value


def owning_block(trainable):
    """The one :class:`~mxprivacy.PrivateBlock` that captures every trainable parameter
    (else a parameter's gradient would reach the update unclipped)."""
    from .private_block import owner_of

    owners = {id(owner_of(p)): owner_of(p) for p in trainable}
    if None in owners.values() or not owners:
        foreign = [p.name for p in trainable if owner_of(p) is None]
        raise ForeignParameterError(
            f"Parameters {foreign[:5]} do not belong to a PrivateBlock, so their "
            "per-sample gradients are not captured. Wrap the network with "
            "mxprivacy.PrivateBlock(net) and pass wrapped.collect_params().")
    if len(owners) > 1:
        raise ForeignParameterError(
            "The parameters belong to several PrivateBlocks; wrap the whole model once.")
    return next(iter(owners.values()))


_SINGLE_MACHINE = (None, "local", "device", "nccl", "local_update_cpu",
                   "local_allreduce_cpu", "local_allreduce_device")
_DISTRIBUTED = ("dist_sync", "dist_device_sync")  # see mxprivacy.gluon.distributed


def check_kvstore(kvstore) -> None:
    """Allow single-machine kvstores and the synchronous parameter server (``dist_sync``,
    ``dist_device_sync``), given by name or as a ``KVStore`` object.

    Refused: ``dist_async`` (the server applies each worker's push alone, so each push
    is a release with 1/sqrt(W) of the noise), Horovod and BytePS (their all-reduce does
    not go through the noise-once protocol of :mod:`mxprivacy.gluon.distributed`).
    """
    kind = kvstore if kvstore is None or isinstance(kvstore, str) \
        else getattr(kvstore, "type", repr(kvstore))
    if kind in _SINGLE_MACHINE or kind in _DISTRIBUTED:
        return
    why = ("the server would apply each worker's push on its own, as it arrives, so the "
           "noise would not be counted once per step"
           if isinstance(kind, str) and "async" in kind else
           "its reduction does not follow DPTrainer's protocol (each worker adds its "
           "share of the noise, the sum carries it once)")
    raise InvalidParameterError(
        f"kvstore {kind!r} is not supported: {why}. Use one of "
        f"{[k for k in _SINGLE_MACHINE if k]} on one machine, or "
        f"{list(_DISTRIBUTED)} on several (see mxprivacy.gluon.distributed).")


def check_compression(compression_params) -> None:
    """Refuse gradient compression: it quantizes clipped sums before the noise and
    carries the error into later steps, so one sample can move a later step by many C."""
    if compression_params:
        raise InvalidParameterError(
            f"compression_params={compression_params!r} is not supported: compression "
            "quantizes parts of the clipped sum before the noise is added and feeds the "
            "error back into later steps, which breaks the Gaussian mechanism's analysis. "
            "Leave compression_params=None.")


def resolve_sample_rate(sample_rate, dataset_size, expected_batch_size: float) -> float:
    """q from ``sample_rate`` or ``expected_batch_size / dataset_size``; both must agree."""
    if sample_rate is None and dataset_size is None:
        raise InvalidParameterError(
            "DPTrainer needs the Poisson sampling rate to account for privacy: pass "
            "sample_rate=q or dataset_size=N (then q = expected_batch_size / N).")
    implied = None
    if dataset_size is not None:
        size = positive("dataset_size", dataset_size)
        if size != int(size):
            raise InvalidParameterError(f"dataset_size must be an integer, got {dataset_size!r}.")
        implied = expected_batch_size / size
    rate = implied if sample_rate is None else positive("sample_rate", sample_rate)
    if not 0.0 < rate <= 1.0:
        raise InvalidParameterError(
            f"sample_rate must lie in (0, 1], got {rate!r} (expected_batch_size "
            f"{expected_batch_size:g} larger than dataset_size?).")
    if implied is not None and not math.isclose(rate, implied, rel_tol=1e-9):
        raise InvalidParameterError(
            f"sample_rate={rate!r} disagrees with expected_batch_size / dataset_size = "
            f"{expected_batch_size:g} / {dataset_size} = {implied!r}. The accountant and the "
            "update would assume different sampling; pass only one of them.")
    return rate


def resolve_sampling(sampling, sample_rate, dataset_size, expected_batch_size: float
                     ) -> StepSampling:
    """The trainer's :class:`~mxprivacy.accounting.step_sampling.StepSampling`.

    ``"poisson"``: q from :func:`resolve_sample_rate`. ``"fixed"``: every step draws
    exactly B = ``expected_batch_size`` of N = ``dataset_size`` examples (both needed, B
    a whole number); a ``sample_rate`` given too must equal B / N.
    """
    if check_sampling(sampling) == "poisson":
        return StepSampling.poisson(resolve_sample_rate(sample_rate, dataset_size,
                                                        expected_batch_size))
    if dataset_size is None:
        raise InvalidParameterError(
            "sampling='fixed' is accounted as B examples drawn without replacement from N: "
            "pass dataset_size=N (and expected_batch_size=B, the exact batch size).")
    if expected_batch_size != int(expected_batch_size):
        raise InvalidParameterError(
            f"sampling='fixed' draws exactly expected_batch_size examples per step, so it "
            f"must be a whole number, got {expected_batch_size!r}.")
    scheme = StepSampling.fixed(dataset_size, int(expected_batch_size))
    if sample_rate is not None and not math.isclose(positive("sample_rate", sample_rate),
                                                    scheme.sample_rate, rel_tol=1e-9):
        raise InvalidParameterError(
            f"sample_rate={sample_rate!r} disagrees with expected_batch_size / dataset_size "
            f"= {scheme.sample_size} / {scheme.dataset_size}. Pass dataset_size only: "
            "fixed-size sampling is described by N and B.")
    return scheme


def check_warn_options(warn_epsilon, warn_delta, dataset_size) -> tuple:
    """Validated ``(warn_epsilon, warn_delta)``; delta defaults to 1/N (or 1e-5)."""
    epsilon = positive("warn_epsilon", warn_epsilon)
    if warn_delta is None:
        return epsilon, (1.0 / float(dataset_size) if dataset_size else 1e-5)
    delta = positive("warn_delta", warn_delta)
    if not delta < 1.0:
        raise InvalidParameterError(f"warn_delta must lie in (0, 1), got {warn_delta!r}.")
    return epsilon, delta


def check_secure_options(secure_mode, noise_seed, clipping_options) -> bool:
    """Secure mode excludes seeds; a seed outside it makes the noise public: warn."""
    if not isinstance(secure_mode, bool):
        raise InvalidParameterError(f"secure_mode must be True or False, got {secure_mode!r}.")
    seeds = {"noise_seed": noise_seed,
             "clipping_options['seed']": (clipping_options or {}).get("seed")}
    given = [name for name, value in seeds.items() if value is not None]
    if given and secure_mode:
        raise InvalidParameterError(
            f"secure_mode=True draws from the operating system's cryptographic generator, "
            f"so it cannot be seeded: remove {', '.join(given)}.")
    if given:
        warnings.warn(
            f"{', '.join(given)} is set: the guarantee assumes that nobody knows the noise, "
            "and anyone who knows the seed can subtract it. Use seeds only for "
            "reproducible experiments, never for a released model.", PrivacyWarning,
            stacklevel=3)
    return secure_mode


def check_loss_reduction(loss_reduction) -> str:
    """``"sum"``: ``loss.backward()`` on the per-sample loss vector (Gluon's default).
    ``"mean"``: the loss was averaged over the batch first (``loss.mean().backward()``)."""
    if loss_reduction not in LOSS_REDUCTIONS:
        raise InvalidParameterError(
            f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}.")
    return loss_reduction


class FixedSizeDetector:
    """Notice batch sizes that a Poisson sample would almost never produce.

    A Poisson batch's size is Binomial(N, q) with N = qN / q. Three tests, each with a
    false-alarm probability of at most about 1e-12 per step on true Poisson sizes
    (1e-7 over 100,000 steps):

    - *implausible size*: a size in a tail of probability below 1e-12 (at qN=256 outside
      about [146, 374]), refused before the step does anything. Two views of a batch
      passed as ``step(2B)`` land there;
    - *a run of equal sizes*: two draws are equal with probability
      ``p_eq = sum_n P(n)^2`` (0.018 at qN=256), so ``run`` equal sizes in a row with
      ``p_eq^(run-1) <= 1e-12`` come from a fixed-size loader;
    - *a window of the last 100 sizes* whose sum leaves the tails of
      Binomial(100 N, q) (a loader at another rate, such as one built without
      ``trainer=``), with too many equal neighbours (binomial tail) or too little spread
      (chi-square tail of the sample variance, used where the binomial is close to
      normal): this catches shuffled loaders whose last batch is smaller, alternating
      sizes and batches filtered by a few percent.

    Where equal sizes are likely anyway (p_eq >= 0.5: q close to 1, or fewer than
    about one sample per batch) it checks nothing.
    """

    FALSE_ALARM = 1e-12
    WINDOW = 100

    def __init__(self, sample_rate: float, expected_batch_size: float) -> None:
        from scipy import stats

        size = max(1, int(round(expected_batch_size / sample_rate)))
        law = stats.binom(size, sample_rate)
        p_equal = _equal_size_probability(law, size)
        self.enabled = p_equal < 0.5
        self.run = 1 + int(math.ceil(math.log(self.FALSE_ALARM) / math.log(p_equal))) \
            if self.enabled else None
        self._mean = float(law.mean())
        self.low = int(law.ppf(self.FALSE_ALARM))
        self.high = int(law.isf(self.FALSE_ALARM))
        pairs = self.WINDOW - 1
        self._max_equal_pairs = int(stats.binom(pairs, p_equal).isf(self.FALSE_ALARM))
        window_law = stats.binom(self.WINDOW * size, sample_rate)  # sum of the window
        self._sum_low = int(window_law.ppf(self.FALSE_ALARM))
        self._sum_high = int(window_law.isf(self.FALSE_ALARM))
        variance = law.var()
        self._min_variance = variance * stats.chi2(pairs).ppf(self.FALSE_ALARM) / pairs \
            if variance >= 20 else None
        self._sizes: list = []

    def check(self, size: int) -> None:
        """Refuse a size that is implausible for a Poisson sample (before the step)."""
        if self.enabled and not self.low <= size <= self.high:
            raise SamplingError(
                f"A batch of {size} examples is implausible for Poisson sampling with "
                f"expected size {self.low}..{self.high} (probability below "
                f"{self.FALSE_ALARM:g}). Is step() given views of the same examples "
                "(pass example_ids= instead), or batches from another loader? Use "
                "mxprivacy.DPDataLoader(..., trainer=trainer).")

    def observe(self, size: int) -> None:
        """Record one logical step's batch size; raise when the sizes are too regular."""
        if not self.enabled:
            return
        self._sizes = (self._sizes + [int(size)])[-max(self.WINDOW, self.run):]
        recent = self._sizes[-self.run:]
        if len(recent) == self.run and len(set(recent)) == 1:
            self._refuse(f"the last {self.run} steps all had exactly {size} samples")
        window = np.asarray(self._sizes[-self.WINDOW:])
        if len(window) < self.WINDOW:
            return
        if not self._sum_low <= int(window.sum()) <= self._sum_high:
            self._refuse(f"the last {self.WINDOW} batches average {window.mean():.4g} "
                         f"examples, but the sampling rate implies {self._mean:.4g}; the "
                         "loader samples at another rate than the trainer accounts for")
        equal = int(np.sum(window[1:] == window[:-1]))
        if equal > self._max_equal_pairs:
            self._refuse(f"{equal} of the last {self.WINDOW - 1} consecutive steps had "
                         "equal sizes")
        if self._min_variance is not None and window.var(ddof=1) < self._min_variance:
            self._refuse(f"the last {self.WINDOW} batch sizes vary far less than Poisson "
                         f"sizes do (variance {window.var(ddof=1):.3g})")

    def _refuse(self, what: str) -> None:
        self._sizes = []
        raise SamplingError(
            f"Batch sizes are not Poisson: {what}. These batches come from a fixed-size "
            "loader (such as gluon.data.DataLoader with shuffle=True), which the Poisson "
            "accountant does not describe and can under-report. Use "
            "mxprivacy.DPDataLoader(..., trainer=trainer).")


class ExactSizeCheck:
    """For fixed-size sampling: every logical step holds exactly B examples.

    The accountant charges ``SampledWithoutReplacementEvent(N, B, ...)`` for each step,
    so a step with any other count is not the accounted event: refused before it does
    anything (equal sizes are the point here, so nothing like
    :class:`FixedSizeDetector` runs)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = int(batch_size)

    def check(self, size: int) -> None:
        if size != self.batch_size:
            raise BatchSizeMismatchError(
                f"This step holds {size} examples, but the trainer accounts for fixed-size "
                f"batches of exactly expected_batch_size = {self.batch_size}: any other "
                "count is not the accounted event. Step on every batch of "
                "DPDataLoader(..., sampling='fixed', trainer=trainer) whole (accumulate() "
                "its parts, then step(B)).")

    def observe(self, size: int) -> None:
        """Nothing to learn from the sizes: :meth:`check` already required B."""


def size_check(scheme: StepSampling, expected_batch_size: float):
    """The batch-size guard of a sampling: exact B for fixed, plausibility for Poisson."""
    if scheme.kind == "fixed":
        return ExactSizeCheck(scheme.sample_size)
    return FixedSizeDetector(scheme.sample_rate, expected_batch_size)


def _equal_size_probability(law, size: int) -> float:
    mean, sd = law.mean(), law.std()
    lo, hi = max(0, int(mean - 12 * sd) - 1), min(size, int(mean + 12 * sd) + 2)
    values = law.pmf(np.arange(lo, hi + 1))
    return float((values ** 2).sum())
