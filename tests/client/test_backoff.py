"""The one jittered exponential backoff (agentforge.client.retry.backoff_delay) and its
three users: the client's RetryPolicy, the bus's Backoff, the launcher's RestartBudget."""

from __future__ import annotations

import itertools
import random

import pytest

from agentforge.client.retry import RetryPolicy, backoff_delay
from services.shared.bus import Backoff
from services.shared.supervision import RestartBudget, RestartPolicy


def test_ceiling_grows_by_the_multiplier_up_to_the_cap_without_jitter() -> None:
    got = [backoff_delay(n, initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.0) for n in range(1, 7)]
    assert got == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_jitter_takes_up_to_its_fraction_off_the_ceiling() -> None:
    random.seed(7)
    full = [backoff_delay(3, initial_s=0.1, max_s=1.0, jitter=1.0) for _ in range(2000)]
    assert all(0.0 < d <= 0.4 for d in full) and min(full) < 0.05 and max(full) > 0.35
    half = [backoff_delay(3, initial_s=0.1, max_s=1.0, jitter=0.5) for _ in range(2000)]
    assert all(0.2 < d <= 0.4 for d in half) and min(half) < 0.21


def test_endless_attempts_stay_at_the_cap_instead_of_overflowing() -> None:
    assert backoff_delay(5000, initial_s=0.05, max_s=2.0, jitter=0.0) == 2.0


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.5), (1, -0.1), (1, 1.5)])
def test_bad_arguments_are_refused(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, initial_s=0.1, max_s=1.0, jitter=jitter)


def test_the_three_users_compute_their_delays_with_it() -> None:
    random.seed(11)
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, backoff_multiplier=3.0)
    assert all(0.0 < policy.backoff_s(4) <= 0.5 for _ in range(200))
    assert max(policy.backoff_s(2) for _ in range(500)) > 0.25  # full jitter below 0.3
    bus = list(itertools.islice(Backoff(initial_s=0.05, max_s=0.2, multiplier=2.0, jitter=0.0).delays(), 5))
    assert bus == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2])
    times = iter(range(100))
    budget = RestartBudget(RestartPolicy(burst=5, interval_s=1000, delay_s=0.5, max_delay_s=3.0),
                           clock=lambda: float(next(times)))
    assert [budget.crashed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
