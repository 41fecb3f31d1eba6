"""The fair share of partitions (SPEC §13: accounts partitioned over runners): a runner claims
free partitions up to ``ceil(partitions / live runners)``, any left free for ``grace``
whatever its share, and over its share releases one at a time, only once nothing is free."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from models.partitions import Share, fair_share, plan_share


def test_fair_share_is_the_ceiling_so_that_together_they_hold_every_partition() -> None:
    assert [fair_share(4, n) for n in (1, 2, 3, 4, 5)] == [4, 2, 2, 1, 1]
    assert fair_share(4, 0) == 4  # a stale count of none: itself


def test_a_lone_runner_claims_every_free_partition() -> None:
    assert plan_share([14, 59, 152, 180], [], dict.fromkeys([14, 59, 152, 180], 0.0), 1,
                      grace=6) == Share(claim=(14, 59, 152, 180))


def test_with_two_runners_each_claims_up_to_half_lowest_first() -> None:
    free = dict.fromkeys([14, 59, 152, 180], 0.0)
    assert plan_share([14, 59, 152, 180], [], free, 2, grace=6) == Share(claim=(14, 59))
    assert plan_share([14, 59, 152, 180], [14], free, 2, grace=6) == Share(claim=(59,))


def test_at_its_share_a_runner_leaves_a_just_released_partition_to_the_others() -> None:
    assert plan_share([1, 2, 3, 4], [1, 2], {3: 0.3}, 2, grace=6) == Share()


def test_a_partition_free_past_the_grace_is_claimed_whatever_the_share() -> None:
    assert plan_share([1, 2, 3, 4], [1, 2], {3: 0.3, 4: 6.0}, 2, grace=6) == Share(claim=(4,))


def test_over_its_share_a_runner_releases_its_highest_one_only_while_nothing_is_free() -> None:
    assert plan_share([1, 2, 3, 4], [1, 2, 3, 4], {}, 2, grace=6) == Share(release=4)
    assert plan_share([1, 2, 3], [1, 2, 3], {}, 2, grace=6) == Share(release=3)
    # the last one released is not taken yet: nothing more goes
    assert plan_share([1, 2, 3, 4], [1, 2, 3], {4: 0.2}, 2, grace=6) == Share()
    # at its share: nothing goes
    assert plan_share([1, 2, 3, 4], [1, 2], {}, 2, grace=6) == Share()


def test_without_sharing_every_free_partition_is_claimed_and_none_released() -> None:
    assert plan_share([1, 2, 3], [1], {2: 0.0, 3: 0.1}, None, grace=6) == Share(claim=(2, 3))
    assert plan_share([1, 2, 3], [1, 2, 3], {}, None, grace=6) == Share()


def test_partitions_outside_its_set_are_never_claimed_nor_stop_a_release() -> None:
    assert plan_share([1, 2], [1, 2], {7: 0.0}, 2, grace=6) == Share(release=2)


@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 3))
def test_runners_that_follow_the_plan_end_with_a_fair_share_each_and_every_one_held(
        partitions: int, runners: int, order: int) -> None:
    """Runners taking turns (a released partition is seen free by the next): within a bounded
    number of turns every partition is held by exactly one runner, none holds more than its
    share, and nothing moves any more."""
    wanted = list(range(partitions))
    held: list[set[int]] = [set(wanted)] + [set() for _ in range(runners - 1)]
    quota = fair_share(partitions, runners)
    for turn in range(4 * partitions * runners + 4):
        moved = False
        for n in (range(runners) if order % 2 == 0 else reversed(range(runners))):
            taken = set().union(*held)
            free = {p: 0.0 for p in wanted if p not in taken}
            plan = plan_share(wanted, held[n], free, runners, grace=6)
            assert not (set(plan.claim) & taken)
            held[n] |= set(plan.claim)
            if plan.release is not None:
                held[n].discard(plan.release)
            moved = moved or bool(plan.claim) or plan.release is not None
        if not moved and turn > 0:
            break
    assert not moved
    assert sorted(p for mine in held for p in mine) == wanted
    assert all(len(mine) <= quota for mine in held)
