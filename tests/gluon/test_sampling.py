"""Poisson sampling and the DP data loader."""
import numpy as np
from mxnet import nd
import pytest
from scipy import stats

from mxprivacy import DPDataLoader, EmptyBatchError, InvalidParameterError, PoissonBatchSampler

from .test_trainer import make


def test_inclusion_is_bernoulli_q():
    sampler = PoissonBatchSampler(1000, 0.05, num_batches=400, seed=0)
    sizes = np.array([len(b) for b in sampler])
    # Batch size ~ Binomial(1000, 0.05): mean 50, var 47.5; 400 draws give a s.e. of
    # the mean of 0.34, so |mean - 50| < 1.5 fails with prob. < 1e-5 if correct.
    assert abs(sizes.mean() - 50) < 1.5
    draws = [np.asarray(b, dtype=np.int64) for b in PoissonBatchSampler(20, 0.3, num_batches=2000,
                                                                        seed=1)]
    counts = np.bincount(np.concatenate(draws), minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-3  # every index equally likely


def test_sampler_defaults_and_validation():
    assert len(PoissonBatchSampler(100, 0.01)) == 100
    for rate in (0, 1.2):
        with pytest.raises(InvalidParameterError):
            PoissonBatchSampler(100, rate)


def test_empty_batches_take_a_noisy_step():
    x = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    y = np.zeros(50, dtype=np.float32)
    block, trainer = make(sigma=1.0, sample_rate=0.01)
    block(nd.array(x[:2]))  # finish deferred initialization
    loader = DPDataLoader((x, y), 0.01, trainer=trainer, num_batches=30, seed=3)
    seen = sum(1 for _ in loader)
    assert loader.empty_batches > 0
    assert trainer.steps == loader.empty_batches  # the loop body never stepped
    assert seen + loader.empty_batches == 30
    with pytest.raises(EmptyBatchError):
        list(DPDataLoader((x, y), 0.01, num_batches=30, seed=3))
