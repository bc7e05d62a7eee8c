"""Property: whatever the order of steps, saves and loads (older checkpoints, checkpoints
of another trainer with other settings), the reported epsilon never decreases."""
import os
import tempfile
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .ckpt_helpers import build, step

TRAINERS, SLOTS = 2, 3
OPS = st.lists(st.one_of(
    st.tuples(st.just("step"), st.integers(0, TRAINERS - 1), st.integers(1, 3)),
    st.tuples(st.just("save"), st.integers(0, TRAINERS - 1), st.integers(0, SLOTS - 1)),
    st.tuples(st.just("load"), st.integers(0, TRAINERS - 1), st.integers(0, SLOTS - 1)),
), min_size=1, max_size=14)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_epsilon_never_decreases(ops):
    pairs = [build("sgd", sigma=1.0 + 0.5 * i, seed=i) for i in range(TRAINERS)]
    previous = [0.0] * TRAINERS
    counter = 0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergent histories warn; that is tested elsewhere
        for op, who, arg in ops:
            block, trainer = pairs[who]
            slot = os.path.join(tmp, f"slot{arg}")
            if op == "step":
                for _ in range(arg):
                    counter += 1
                    step(block, trainer, counter)
            elif op == "save":
                trainer.save_states(slot)
            elif os.path.exists(slot):
                trainer.load_states(slot)
            for index, (_, each) in enumerate(pairs):
                eps = each.epsilon(1e-5) if each.steps else 0.0
                assert eps >= previous[index] - 1e-12, (op, who, arg)
                assert each.steps == sum(c for _, c in each.accountant.ledger)
                previous[index] = eps
