"""The allocator page's credit chart (allocator._page.credit_chart): pure, from the
history the statistics keep (a point per pool and project when it changed)."""

from __future__ import annotations

from allocator._page import credit_chart


def point(t, pool, project, credit):
    return {"t": t, "pool": pool, "project": project, "credit": credit, "jobs": 0, "machines": 1}


def test_no_history_is_an_empty_chart_over_the_last_ten_minutes():
    assert credit_chart([], 5000.0) == {"t0": 4400.0, "t1": 5000.0, "top": 1, "projects": {}}


def test_one_poll_is_a_line_up_to_now_not_a_chart_of_zero_seconds():
    got = credit_chart([point(1000.0, "lab", "a", 50)], 1000.0)
    assert (got["t0"], got["t1"], got["top"]) == (400.0, 1000.0, 50)
    assert got["projects"] == {"a": [[1000.0, 50], [1000.0, 50]]}
    got = credit_chart([point(1000.0, "lab", "a", 50)], 1030.0)
    assert got["projects"] == {"a": [[1000.0, 50], [1030.0, 50]]}


def test_steps_summed_over_the_pools_each_holding_its_last_value():
    history = [  # latest first, as the statistics give it
        point(300.0, "lab", "a", 30),
        point(200.0, "hall", "a", 5),
        point(200.0, "lab", "b", 7),
        point(100.0, "lab", "a", 10),
        point(100.0, "hall", "a", 2),
    ]
    got = credit_chart(history, 1000.0, min_span_s=60.0)
    assert (got["t0"], got["t1"], got["top"]) == (100.0, 1000.0, 35)
    assert got["projects"]["a"] == [
        [100.0, 12],  # both pools at the first poll: one point
        [200.0, 12],
        [200.0, 15],  # hall went to 5; lab still at 10
        [300.0, 15],
        [300.0, 35],
        [1000.0, 35],
    ]
    assert got["projects"]["b"] == [[200.0, 7], [1000.0, 7]]
