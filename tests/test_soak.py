"""The soak's judgement (`make soak` runs it for real): what counts as growing without bound."""

from __future__ import annotations

from cliptool.bench.soak import grows, percentile


def test_growth_is_a_rise_in_every_minute_after_the_first_and_past_the_slack() -> None:
    assert grows([100, 150, 160, 170, 180, 190], slack=20)  # the warm-up jump does not count, the rest does
    assert not grows([100, 150, 160, 170, 170, 190], slack=20)  # a minute without a rise: it settles
    assert not grows([100, 150, 151, 152, 153, 154], slack=20)  # rising, but within the slack
    assert not grows([100, 300, 400], slack=20)  # too few minutes to tell
    assert grows([10, 30, 45, 60, 80], slack=16) and not grows([10, 30, 45, 44, 80], slack=16)


def test_percentiles_by_nearest_rank() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert (percentile(xs, 0.5), percentile(xs, 0.99), percentile(xs, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) != percentile([], 0.5)  # NaN for none
