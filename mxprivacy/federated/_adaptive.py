"""Adaptive clipping of client updates (Andrew et al. 2021, "Differentially private
learning with adaptive clipping", Algorithm 1 and Theorem 1).

Each contributing client also gives one bit b = [||update|| <= C]. The server releases
the centred count sum(b - 1/2) + N(0, sigma_b^2) (one client changes it by at most 1/2),
estimates the unclipped fraction b~ = that / (q K) + 1/2, and moves C geometrically:

    C <- C * exp(-eta_C * (b~ - gamma))

so C grows when fewer than the target quantile gamma of the updates fit, and shrinks
when more do. Theorem 1: the update sum noised at multiplier z_delta and the count noised
at sigma_b together are one Gaussian mechanism of multiplier
z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2. The strategy keeps the accounted multiplier
``sigma`` and noises the update at z_delta = (sigma^-2 - (2 sigma_b)^-2)^-1/2, which needs
2 sigma_b > sigma.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["count_stddev", "update_noise_multiplier", "next_clip_norm"]


def count_stddev(noise_multiplier: float, expected_clients: float,
                 requested: Optional[float]) -> float:
    """sigma_b: ``requested``, or the paper's default q K / 20 (0 when sigma is 0)."""
    if requested is None:
        return 0.0 if noise_multiplier == 0 else expected_clients / 20.0
    if isinstance(requested, bool) or not (isinstance(requested, (int, float)) and
                                           math.isfinite(requested) and requested >= 0):
        raise InvalidParameterError(
            f"clipped_count_stddev must be a finite number >= 0, got {requested!r}.")
    return float(requested)


def update_noise_multiplier(noise_multiplier: float, stddev: float) -> float:
    """z_delta, the update's multiplier that keeps the accounted one at ``noise_multiplier``.

    Raises InvalidParameterError when 2 sigma_b <= sigma (the count would need more than
    the whole privacy budget).
    """
    if noise_multiplier == 0:
        return 0.0
    if not 2.0 * stddev > noise_multiplier:
        raise InvalidParameterError(
            f"clipped_count_stddev={stddev:g} is too small for noise_multiplier="
            f"{noise_multiplier:g}: adaptive clipping needs clipped_count_stddev > "
            f"noise_multiplier / 2 = {noise_multiplier / 2:g} (Andrew et al. 2021 suggest "
            "q K / 20). Raise clipped_count_stddev, sample more clients per round, or "
            "turn adaptive clipping off.")
    return (noise_multiplier ** -2 - (2.0 * stddev) ** -2) ** -0.5


def next_clip_norm(clip_norm: float, unclipped: int, counted: int, stddev: float,
                   expected_clients: float, target_quantile: float, learning_rate: float,
                   rng: np.random.Generator) -> float:
    """C after one round: ``unclipped`` of the ``counted`` contributions had norm <= C."""
    noisy = (unclipped - 0.5 * counted) + rng.normal(0.0, stddev)
    fraction = noisy / expected_clients + 0.5
    return float(clip_norm * math.exp(-learning_rate * (fraction - target_quantile)))
