"""Calibrated noise mechanisms for single releases, on numpy arrays and MXNet NDArrays.

Each row (the last axis) of the input is one release, whose sensitivity is given:
L1 for Laplace, L2 for Gaussian. Fast mode draws floating-point noise from numpy's
generator. Secure mode (``secure=True``) rounds values to a grid and adds exact integer
noise drawn from a CSPRNG (:mod:`.secure`), so no floating-point attack applies.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..accounting.events import DpEvent, EpsilonDeltaEvent, GaussianEvent
from ..accounting.rdp import rdp_to_epsilon
from ..errors import InvalidParameterError
from . import secure as _secure
from .calibration import (analytic_gaussian_sigma, check_delta, check_epsilon,
                          check_sensitivity, classic_gaussian_sigma)

__all__ = ["Mechanism", "LaplaceMechanism", "GaussianMechanism", "ReportNoisyMax"]

_GRID_STEPS = 1024  # noise scale / grid step in secure mode


def _to_numpy(values: Any):
    """(float64 array, function that converts a result back to the input's type)."""
    if type(values).__module__.startswith("mxnet"):
        ctx, dtype = values.context, values.dtype
        import mxnet as mx
        return values.asnumpy().astype(np.float64), lambda out: mx.nd.array(
            out, ctx=ctx, dtype=dtype if out.dtype.kind == "f" else out.dtype)
    array = np.asarray(values, dtype=np.float64)
    if np.isscalar(values):
        return array, lambda out: out.item()
    return array, lambda out: out


class Mechanism:
    """Base class: validated parameters, an accounting ``event``, and ``randomise``."""

    secure: bool = False

    def __init__(self, *, secure: bool = False, random_state: Optional[int] = None) -> None:
        if secure and random_state is not None:
            raise InvalidParameterError(
                "secure=True draws from the operating system's CSPRNG; it cannot be seeded.")
        self.secure = bool(secure)
        self._rng = np.random.default_rng(random_state)

    @property
    def event(self) -> DpEvent:  # pragma: no cover - overridden
        raise NotImplementedError

    def randomise(self, values: Any) -> Any:
        array, back = _to_numpy(values)
        if not np.all(np.isfinite(array)):
            raise InvalidParameterError("Mechanisms take finite values; got NaN or inf.")
        return back(self._noisy(array))

    __call__ = randomise

    def _noisy(self, array: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class LaplaceMechanism(Mechanism):
    """Laplace noise of scale ``sensitivity / epsilon``: epsilon-DP per row.

    Parameters
    ----------
    epsilon : float
        Privacy of one release (> 0).
    sensitivity : float
        L1 sensitivity of one row.
    secure : bool, default False
        Exact discrete Laplace noise on a grid of step ``scale / 1024``. The scale is
        widened so that epsilon still holds after rounding.
    random_state : int, optional
        Seed of the fast-mode generator.
    """

    def __init__(self, epsilon: float, sensitivity: float, *, secure: bool = False,
                 random_state: Optional[int] = None) -> None:
        super().__init__(secure=secure, random_state=random_state)
        self.epsilon = check_epsilon(epsilon)
        self.sensitivity = check_sensitivity(sensitivity)
        self.scale = self.sensitivity / self.epsilon

    @property
    def event(self) -> DpEvent:
        """Pure epsilon-DP: exact for any dimension and for the secure sampler."""
        return EpsilonDeltaEvent(self.epsilon, 0.0)

    def _noisy(self, array: np.ndarray) -> np.ndarray:
        if not self.secure:
            return array + self._rng.laplace(0.0, self.scale, size=array.shape)
        dim = array.shape[-1] if array.ndim else 1
        step = self.scale / _GRID_STEPS
        # Rounding moves each coordinate by <= step/2 on both neighbours: L1 grows by dim*step.
        grid_scale = math.ceil((self.sensitivity + dim * step) / (step * self.epsilon))
        noise = _secure.discrete_laplace(grid_scale, array.size).reshape(array.shape)
        return (np.rint(array / step) + noise) * step


class GaussianMechanism(Mechanism):
    """Gaussian noise calibrated to (epsilon, delta) per row.

    Parameters
    ----------
    epsilon, delta : float
        Privacy of one release; ``delta`` must lie in (0, 1).
    sensitivity : float
        L2 sensitivity of one row.
    calibration : {"analytic", "classic"}, default "analytic"
        ``analytic``: the smallest sigma, from Balle & Wang (2018). ``classic``:
        ``sqrt(2 ln(1.25/delta)) sensitivity / epsilon``, only for epsilon < 1.
    secure : bool, default False
        Exact discrete Gaussian noise (Canonne, Kamath & Steinke 2020) on a grid of step
        ``sigma / 1024``. Its guarantee comes from zero-concentrated DP: the discrete
        Gaussian satisfies (Delta^2 / 2 sigma^2)-zCDP. So sigma is calibrated through
        RDP (a little more noise than analytic), and its ``event`` must be counted with
        the RDP accountant.
    random_state : int, optional
        Seed of the fast-mode generator.
    """

    def __init__(self, epsilon: float, delta: float, sensitivity: float, *,
                 calibration: str = "analytic", secure: bool = False,
                 random_state: Optional[int] = None) -> None:
        super().__init__(secure=secure, random_state=random_state)
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta, allow_zero=False)
        self.sensitivity = check_sensitivity(sensitivity)
        if calibration == "analytic":
            self.sigma = analytic_gaussian_sigma(self.epsilon, self.delta, self.sensitivity)
        elif calibration == "classic":
            self.sigma = classic_gaussian_sigma(self.epsilon, self.delta, self.sensitivity)
        else:
            raise InvalidParameterError(
                f"calibration must be 'analytic' or 'classic', got {calibration!r}.")
        self.calibration = calibration
        self._grid: Optional[tuple] = None

    @property
    def event(self) -> DpEvent:
        """The Gaussian event; in secure mode a noise multiplier no larger than the real
        one for any row dimension, so counting it with RDP never under-reports."""
        if self.secure:
            return GaussianEvent(_zcdp_sigma(self.epsilon, self.delta, self.sensitivity)
                                 / self.sensitivity)
        return GaussianEvent(self.sigma / self.sensitivity)

    def _grid_sigma(self, dim: int) -> tuple:
        """(effective sigma, grid step, integer sigma on the grid) for secure mode."""
        if self._grid is None or self._grid[0] != dim:
            step = _zcdp_sigma(self.epsilon, self.delta, self.sensitivity) / _GRID_STEPS
            widened = self.sensitivity + math.sqrt(dim) * step
            grid_sigma = math.ceil(_zcdp_sigma(self.epsilon, self.delta, widened) / step)
            effective = grid_sigma * step * self.sensitivity / widened
            self._grid = (dim, (effective, step, grid_sigma))
        return self._grid[1]

    def _noisy(self, array: np.ndarray) -> np.ndarray:
        if not self.secure:
            return array + self._rng.normal(0.0, self.sigma, size=array.shape)
        _, step, grid_sigma = self._grid_sigma(array.shape[-1] if array.ndim else 1)
        noise = _secure.discrete_gaussian(grid_sigma, array.size).reshape(array.shape)
        return (np.rint(array / step) + noise) * step


def _zcdp_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma (0.1 % bisection, rounded up) whose Gaussian RDP curve gives epsilon."""
    orders = np.concatenate([np.linspace(1.01, 10, 300), np.geomspace(10, 10000, 300)])

    def eps(sigma: float) -> float:
        return rdp_to_epsilon(orders, orders * sensitivity ** 2 / (2 * sigma ** 2), delta)[0]

    lo, hi = 1e-3 * sensitivity, sensitivity
    while eps(hi) > epsilon:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi


class ReportNoisyMax(Mechanism):
    """The index of the largest score after Gumbel noise: the exponential mechanism.

    ``P(j) ~ exp(epsilon * score_j / (2 sensitivity))``: epsilon-DP when every score
    moves by at most ``sensitivity`` between neighbours. Rows are independent releases.
    """

    def __init__(self, epsilon: float, sensitivity: float, *,
                 random_state: Optional[int] = None) -> None:
        super().__init__(secure=False, random_state=random_state)
        self.epsilon = check_epsilon(epsilon)
        self.sensitivity = check_sensitivity(sensitivity)

    @property
    def event(self) -> DpEvent:
        return EpsilonDeltaEvent(self.epsilon, 0.0)

    def _noisy(self, array: np.ndarray) -> np.ndarray:
        scale = 2.0 * self.sensitivity / self.epsilon
        return np.argmax(array + self._rng.gumbel(0.0, scale, size=array.shape), axis=-1)
