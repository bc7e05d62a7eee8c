"""DPTrainer(target_epsilon=...): calibrated noise, the plan, and no step beyond it."""
import math

import numpy as np
import pytest
from mxnet import autograd

from mxprivacy import (ConflictingParametersError, DPDataLoader, DPTrainer,
                       InvalidParameterError, PrivacyBudgetExceeded, PrivateBlock)
from mxprivacy.accounting import GaussianEvent, PoissonSampledEvent, epsilon_for

from .helpers import LOSS, mlp

pytestmark = pytest.mark.filterwarnings("ignore::mxprivacy.PrivacyWarning")


def make(**kwargs):
    block = PrivateBlock(mlp())
    options = dict(max_grad_norm=1.0, expected_batch_size=6, sample_rate=0.1)
    options.update(kwargs)
    return block, DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1}, **options)


# (target, delta, q, epochs or total_steps): MNIST-like runs and a short one.
SETTINGS = [(2.6, 1e-5, 512 / 60000, dict(epochs=40)), (1.0, 1e-5, 256 / 60000,
            dict(total_steps=3000)), (8.0, 1e-5, 0.05, dict(epochs=25))]


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("target,delta,q,length", SETTINGS)
def test_planned_run_spends_at_most_the_target_and_within_1_percent(
        accountant, target, delta, q, length):
    _, trainer = make(sample_rate=q, target_epsilon=target, target_delta=delta,
                      accountant=accountant, **length)
    plan = trainer.privacy_plan
    steps = length.get("total_steps") or length["epochs"] * math.ceil(1 / q)
    assert plan.steps == steps and plan.sample_rate == q
    assert (plan.target_epsilon, plan.target_delta) == (target, delta)
    assert plan.noise_multiplier == trainer.noise_multiplier > 0
    eps = epsilon_for(trainer.noise_multiplier, q, steps, delta, accountant)
    assert plan.planned_epsilon == eps
    assert 0.99 * target <= eps <= target
    # the trainer's own accountant after the planned steps says the same
    trainer.accountant.compose(PoissonSampledEvent(q, GaussianEvent(trainer.noise_multiplier)),
                               steps)
    assert trainer.epsilon(delta) == pytest.approx(eps, rel=1e-12)


def test_pld_plan_needs_less_noise_than_rdp():
    rdp = make(target_epsilon=3.0, target_delta=1e-5, total_steps=500)[1].noise_multiplier
    pld = make(target_epsilon=3.0, target_delta=1e-5, total_steps=500,
               accountant="pld")[1].noise_multiplier
    assert pld < rdp


def _run_epochs(block, trainer, loader, epochs):
    for _ in range(epochs):
        for x, y in loader:
            with autograd.record():
                loss = LOSS(block(x), y)
            loss.backward()
            trainer.step(x.shape[0])


def test_a_loop_over_the_planned_epochs_fits_and_the_next_step_is_refused():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)).astype("float32"), rng.integers(0, 3, 60)
    block, trainer = make(target_epsilon=4.0, target_delta=1e-3, epochs=2)
    trainer._size_check.enabled = False  # 60 examples: sizes repeat by chance
    loader = DPDataLoader((x, y), expected_batch_size=6, trainer=trainer)
    _run_epochs(block, trainer, loader, 2)
    assert trainer.steps == trainer.privacy_plan.steps == 20
    assert 0.99 * 4.0 <= trainer.epsilon(1e-3) <= 4.0
    before = [p.data().asnumpy().copy() for p in block.collect_params().values()]
    with pytest.raises(PrivacyBudgetExceeded, match="20 steps"):
        _run_epochs(block, trainer, loader, 1)
    assert trainer.steps == 20 and trainer.epsilon(1e-3) <= 4.0
    for old, p in zip(before, block.collect_params().values()):
        np.testing.assert_array_equal(old, p.data().asnumpy())


def test_a_ledger_with_other_events_is_judged_by_its_epsilon():
    _, trainer = make(target_epsilon=2.0, target_delta=1e-5, total_steps=100)
    sigma = trainer.noise_multiplier
    # a resumed ledger with noisier steps: counting steps would refuse too early
    trainer.accountant.compose(PoissonSampledEvent(0.1, GaussianEvent(10 * sigma)), 150)
    trainer._check_plan()  # its epsilon leaves room for more
    # with less noisy steps: counting steps (10 < 100) would allow an overshoot
    _, trainer = make(target_epsilon=2.0, target_delta=1e-5, total_steps=100)
    trainer.accountant.compose(PoissonSampledEvent(0.1, GaussianEvent(sigma / 2)), 10)
    assert trainer.epsilon(1e-5) > 2.0
    with pytest.raises(PrivacyBudgetExceeded):
        trainer._check_plan()


def test_noise_multiplier_and_target_epsilon_conflict():
    with pytest.raises(ConflictingParametersError, match="only one"):
        make(noise_multiplier=1.0, target_epsilon=2.0, target_delta=1e-5, epochs=1)
    assert issubclass(ConflictingParametersError, InvalidParameterError)


@pytest.mark.parametrize("options,match", [
    (dict(), "noise_multiplier=sigma"),
    (dict(target_epsilon=2.0, epochs=1), "target_delta"),
    (dict(target_epsilon=2.0, target_delta=1e-5), "exactly one of epochs"),
    (dict(target_epsilon=2.0, target_delta=1e-5, epochs=1, total_steps=10), "exactly one"),
    (dict(noise_multiplier=1.0, target_delta=1e-5), "target_delta"),
    (dict(noise_multiplier=1.0, epochs=3), "epochs"),
    (dict(target_epsilon=0.0, target_delta=1e-5, epochs=1), "target_epsilon"),
    (dict(target_epsilon=2.0, target_delta=1.0, epochs=1), "target_delta"),
    (dict(target_epsilon=2.0, target_delta=1e-5, epochs=math.nan), "epochs"),
    (dict(target_epsilon=2.0, target_delta=1e-5, total_steps=2.5), "steps"),
])
def test_incomplete_or_invalid_plans_are_refused(options, match):
    with pytest.raises(InvalidParameterError, match=match):
        make(**options)


def test_without_a_target_there_is_no_plan():
    _, trainer = make(noise_multiplier=1.3)
    assert trainer.privacy_plan is None and trainer.noise_multiplier == 1.3


# -- fixed-size batches -------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_fixed_size_plan_calibrates_the_without_replacement_event(accountant):
    from mxprivacy.accounting import SampledWithoutReplacementEvent
    fixed = dict(sampling="fixed", dataset_size=600, expected_batch_size=6, sample_rate=None)
    target = dict(target_epsilon=2.0, target_delta=1e-5, epochs=3, accountant=accountant)
    _, trainer = make(**fixed, **target)
    plan = trainer.privacy_plan
    assert plan.sampling == "fixed" and plan.sample_rate == 0.01
    assert plan.steps == 300  # 3 epochs of ceil(600 / 6) batches
    sigma = trainer.noise_multiplier
    eps = epsilon_for(sigma, None, 300, 1e-5, accountant, sampling="fixed", dataset_size=600,
                      sample_size=6)
    assert plan.planned_epsilon == eps and 2.0 - min(0.01, 2e-3) <= eps <= 2.0
    trainer.accountant.compose(SampledWithoutReplacementEvent(600, 6, GaussianEvent(sigma)),
                               300)
    assert trainer.epsilon(1e-5) == pytest.approx(eps, rel=1e-12)
    _, poisson = make(sample_rate=0.01, **target)
    assert sigma > 1.1 * poisson.noise_multiplier  # without replacement costs more noise


def test_a_fixed_size_loop_over_the_planned_epochs_fits_and_the_next_step_is_refused():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 5)).astype("float32"), rng.integers(0, 3, 60)
    block, trainer = make(sampling="fixed", dataset_size=60, sample_rate=None,
                          target_epsilon=4.0, target_delta=1e-3, epochs=2)
    loader = DPDataLoader((x, y), expected_batch_size=6, trainer=trainer)
    _run_epochs(block, trainer, loader, 2)
    assert trainer.steps == trainer.privacy_plan.steps == 20
    assert 4.0 - 4e-3 <= trainer.epsilon(1e-3) <= 4.0
    with pytest.raises(PrivacyBudgetExceeded, match="20 steps"):
        _run_epochs(block, trainer, loader, 1)
    assert trainer.steps == 20
