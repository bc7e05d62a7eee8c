"""``PolyActivation``: a polynomial activation that homomorphic encryption can evaluate.

CKKS ciphertexts support additions and multiplications only, so an HE-friendly network
uses polynomials where a plain one uses ReLU, tanh or sigmoid:

- ``PolyActivation("square")``: ``y = x * x`` (one multiplication, as in TenSEAL's MNIST
  tutorial);
- ``PolyActivation.fit("relu" | "tanh" | "sigmoid", degree, input_range)``: the least
  squares polynomial of ``degree`` (2 to 4) on a dense grid of ``input_range``. Its
  largest error on the range is ``max_error`` (outside the range a polynomial diverges:
  choose a range that covers the pre-activations). Measured on (-4, 4) with 4001 points:

  ========  ========  ========  ========
  target    degree 2  degree 3  degree 4
  ========  ========  ========  ========
  relu      0.375     0.375     0.234
  tanh      0.424     0.228     0.228
  sigmoid   0.131     0.0382    0.0382
  ========  ========  ========  ========

  relu's best fit of odd degree 2k+1 is the even one of degree 2k, and tanh's (odd) best
  fit of degree 2k the one of degree 2k-1: coefficients that come out zero are dropped
  from the top, so ``degree`` (and the encrypted depth) can be lower than asked;
- ``PolyActivation(coefficients=(c0, c1, ..., cn))``: ``y = c0 + c1 x + ... + cn x^n``.

``coefficients`` (low to high degree, a tuple of floats), ``kind`` and ``degree`` are
what :mod:`mxprivacy.encrypted` reads to evaluate the layer on ciphertexts.

By default the coefficients are constants: the layer has no parameter, does not mix
samples and needs no per-sample rule. ``trainable=True`` makes them a Parameter named
``coefficients``, whose per-sample gradient rule is :mod:`mxprivacy.gluon.rules.poly`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..errors import InvalidParameterError

__all__ = ["PolyActivation", "FIT_TARGETS", "MAX_FIT_DEGREE"]

FIT_TARGETS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}
MAX_FIT_DEGREE = 4
FIT_POINTS = 4001  # grid points of the least squares fit


def _check_coefficients(coefficients) -> Tuple[float, ...]:
    try:
        values = tuple(float(c) for c in coefficients)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"coefficients must be a sequence of numbers (low to high degree), got "
            f"{coefficients!r}.") from None
    if len(values) < 2 or not all(math.isfinite(c) for c in values):
        raise InvalidParameterError(
            f"coefficients must hold at least 2 finite numbers (c0, c1, ...), got "
            f"{coefficients!r}.")
    if values[-1] == 0.0:
        raise InvalidParameterError(
            f"The last (highest-degree) coefficient is 0 in {coefficients!r}: drop it, so "
            "that the degree (and the encrypted depth) is what it looks like.")
    return values


def _check_range(input_range) -> Tuple[float, float]:
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"input_range must be a pair (low, high), got {input_range!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InvalidParameterError(
            f"input_range must be finite with low < high, got {input_range!r}.")
    return low, high


def fit_coefficients(target: str, degree: int, input_range) -> Tuple[Tuple[float, ...], float]:
    """Least squares coefficients (low to high degree) of ``target`` on ``input_range``,
    and the largest absolute error on the fit grid."""
    if target not in FIT_TARGETS:
        raise InvalidParameterError(
            f"target must be one of {sorted(FIT_TARGETS)}, got {target!r}.")
    if isinstance(degree, bool) or not isinstance(degree, int) or not \
            2 <= degree <= MAX_FIT_DEGREE:
        raise InvalidParameterError(
            f"degree must be an integer from 2 to {MAX_FIT_DEGREE} (each degree costs "
            f"encrypted depth), got {degree!r}.")
    low, high = _check_range(input_range)
    grid = np.linspace(low, high, FIT_POINTS)
    wanted = FIT_TARGETS[target](grid)
    fitted = np.polynomial.polynomial.polyfit(grid, wanted, degree)
    # an even or odd target leaves the odd or even coefficients at rounding noise
    fitted[np.abs(fitted) < 1e-9 * np.abs(fitted).max()] = 0.0
    while len(fitted) > 2 and fitted[-1] == 0.0:
        fitted = fitted[:-1]
    error = np.abs(np.polynomial.polynomial.polyval(grid, fitted) - wanted).max()
    return tuple(float(c) for c in fitted), float(error)


class PolyActivation(gluon.HybridBlock):
    """A polynomial activation ``y = c0 + c1 x + ... + cn x^n``, elementwise.

    Parameters
    ----------
    kind : str, default "square"
        ``"square"`` (``y = x * x``), or a name for explicit ``coefficients``
        (default ``"poly"``).
    coefficients : sequence of float, optional
        Low to high degree, at least two, the last non-zero. Overrides ``kind="square"``.
    trainable : bool, default False
        Make the coefficients a Parameter (``coefficients``), initialized to the given
        values, trained with the net (a per-sample rule handles it under DP).
    """

    def __init__(self, kind: str = "square", coefficients: Optional[Sequence[float]] = None,
                 trainable: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(kind, str) or not kind:
            raise InvalidParameterError(f"kind must be a non-empty string, got {kind!r}.")
        if coefficients is None:
            if kind != "square":
                raise InvalidParameterError(
                    f"Unknown kind {kind!r} without coefficients: use 'square', "
                    "PolyActivation.fit(target, degree, input_range), or give "
                    "coefficients=(c0, c1, ...).")
            coefficients = (0.0, 0.0, 1.0)
        elif kind == "square":
            kind = "poly"
        if not isinstance(trainable, bool):
            raise InvalidParameterError(f"trainable must be True or False, got {trainable!r}.")
        self._kind = kind
        self._fixed = _check_coefficients(coefficients)
        self._trainable = trainable
        self.max_error: Optional[float] = None  # set by fit()
        self.input_range: Optional[Tuple[float, float]] = None
        if trainable:
            self.weight = self.params.get(
                "coefficients", shape=(len(self._fixed),),
                init=mx.init.Constant(np.array(self._fixed, dtype=np.float32)))

    @classmethod
    def fit(cls, target: str, degree: int = 2, input_range=(-4.0, 4.0),
            trainable: bool = False, **kwargs) -> "PolyActivation":
        """The least squares polynomial of ``degree`` fitted to ``target`` ("relu",
        "tanh" or "sigmoid") on ``input_range``; its ``max_error`` is the largest
        absolute error on the range (see the module docstring for a table)."""
        coefficients, error = fit_coefficients(target, degree, input_range)
        layer = cls(target, coefficients=coefficients, trainable=trainable, **kwargs)
        layer.max_error, layer.input_range = error, _check_range(input_range)
        return layer

    @property
    def kind(self) -> str:
        """"square", the fitted target ("relu", "tanh", "sigmoid"), or "poly"."""
        return self._kind

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def coefficients(self) -> Tuple[float, ...]:
        """Current coefficients, low to high degree (the trained ones when trainable)."""
        if self._trainable and self.weight._data is not None:
            return tuple(float(c) for c in self.weight.data(self.weight.list_ctx()[0])
                         .asnumpy())
        return self._fixed

    @property
    def degree(self) -> int:
        return len(self._fixed) - 1

    def hybrid_forward(self, F, x, weight=None):
        if weight is None:
            return self._constant_poly(x)
        out, power = None, None
        for k in range(len(self._fixed)):
            power = None if k == 0 else (x if k == 1 else power * x)
            coefficient = F.slice_axis(weight, axis=0, begin=k, end=k + 1)
            term = (F.broadcast_add(F.zeros_like(x), coefficient) if k == 0
                    else F.broadcast_mul(power, coefficient))
            out = term if out is None else out + term
        return out

    def _constant_poly(self, x):
        """Horner-free power sum that skips zero terms: square is exactly ``x * x``."""
        out, power = None, None
        for k, c in enumerate(self._fixed):
            power = None if k == 0 else (x if k == 1 else power * x)
            if c == 0.0 or k == 0:
                continue
            term = power if c == 1.0 else power * c
            out = term if out is None else out + term
        return out + self._fixed[0] if self._fixed[0] != 0.0 else out

    def __repr__(self) -> str:
        shown = ", ".join(f"{c:.4g}" for c in self.coefficients)
        extra = ", trainable" if self._trainable else ""
        return f"{type(self).__name__}({self._kind!r}, coefficients=({shown}){extra})"
