"""The dealer's live dashboard: its JSON and metrics over real HTTP. Its page in a real
headless browser while a real dealer and jobber run a batch: tests/e2e/test_dashboard.py."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from dealer._dashboard import Dashboard
from dealer._figures import Times
from dealer._journal import Journal
from dealer._service import Service
from net._http import parse_http
from tests.helpers import Few


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def test_http_addresses_default_to_localhost():
    assert parse_http("8080") == ("127.0.0.1", 8080)
    assert parse_http("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_http(":0") == ("127.0.0.1", 0)
    assert parse_http("[::1]:9000") == ("::1", 9000)
    for bad in ("", "host:", "http", "1:99999", "1:٣"):
        with pytest.raises(ValueError, match="expected PORT or HOST:PORT"):
            parse_http(bad)


STATUS = {
    "task": "T",
    "key": "ab" * 32,
    "total": 10,
    "drawn": 4,
    "accepted": 3,
    "failed": 1,
    "in_flight": 0,
    "replicas_out": 0,
    "disputed": 0,
    "waiting": [],
    "jobbers_total": 2,
    "jobbers": [
        {"key": "k1", "denied": False, "gone": False, "credit": 37 * 10**9},
        {"key": "k2", "denied": False, "gone": True, "credit": 0},
    ],
}


def test_snapshots_rate_eta_metrics_and_only_reading():
    d = Dashboard("127.0.0.1", 0, "T", f"tcp://h:7117#{'ab' * 32}")
    try:
        assert d.due(0.0) and not d.due(0.5) and d.due(1.0)
        d.publish({**STATUS, "accepted": 0, "failed": 0}, [], 0, 100.0)
        d.publish(STATUS, [{"job": 3, "args": ["x"], "reasons": ["boom"]}], 1, 120.0)
        code, body = get(d.url + "status.json")
        snap = json.loads(body)
        assert code == 200 and snap["settled"] == 4
        assert snap["address"] == f"tcp://h:7117#{'ab' * 32}"  # for the page's header
        assert snap["rate"] == pytest.approx(4 / 20)
        assert snap["eta_s"] == pytest.approx(6 / 0.2)
        assert snap["history"] == [[100.0, 0], [120.0, 4]]
        assert snap["failures"] == [{"job": 3, "args": ["x"], "reasons": ["boom"]}]
        code, metrics = get(d.url + "metrics")
        assert code == 200
        assert re.search(r"^borednet_jobs_accepted 3\.0$", metrics, re.M)
        assert re.search(r'^borednet_jobbers\{state="gone"\} 1\.0$', metrics, re.M)
        assert re.search(r"^borednet_jobs_settled_per_second 0\.2$", metrics, re.M)
        code, page = get(d.url)
        assert code == 200 and "<title>T - borednet</title>" in page
        assert get(d.url + "nothing")[0] == 404
        req = urllib.request.Request(d.url + "status.json", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 405
        e.value.close()
    finally:
        d.close()


def test_the_history_keeps_the_whole_run_within_its_bound():
    d = Dashboard("127.0.0.1", 0, "T")
    try:
        for i in range(5000):
            d.publish({**STATUS, "accepted": i, "failed": 0}, [], 0, float(i))
        snap = json.loads(get(d.url + "status.json")[1])
        times = [t for t, _ in snap["history"]]
        assert len(times) <= 3600 and times[0] == 0.0 and times[-1] >= 4990
    finally:
        d.close()


def test_a_snapshot_says_what_it_is_and_each_jobber_s_figures():
    times = Times()
    times.sent(100.0)
    times.returned("k1", 100.0, 103.0)  # out 3 s
    times.returned("k1", 101.0, 102.0)  # out 1 s
    d = Dashboard("127.0.0.1", 0, "T")
    try:
        about = {"journal": "/x/j.sqlite", "summary": "pi ~ 3.14", "failure_groups": []}
        d.publish(STATUS, [], 0, 110.0, times, **about)
        snap = json.loads(get(d.url + "status.json")[1])
        assert snap["source"] == "live" and not snap["finished"]
        assert snap["journal"] == "/x/j.sqlite" and snap["summary"] == "pi ~ 3.14"
        assert snap["started_at"] == 100.0 and snap["elapsed_s"] == 10.0  # to now
        k1, k2 = snap["jobbers"]
        assert (k1["results"], k1["median_s"], k1["mean_s"]) == (2, 2.0, 2.0)
        assert k1["rate_per_min"] == pytest.approx(2 / 3 * 60)  # sent at 100, last back 103
        assert k1["credit_text"] == "37.0 G fuel" and snap["credit_text"] == "37.0 G fuel"
        assert (k2["results"], k2["rate_per_min"], k2["credit_text"]) == (0, None, "0 fuel")
        assert snap["times"] == {"results": 2, "median_s": 2.0, "mean_s": 2.0}
        # over: the time stops at the end, no time is left, and the credit of all counts
        d.publish(STATUS, [], 0, 500.0, times, finished=True, ended_at=103.0, credit=5 * 10**12)
        snap = json.loads(get(d.url + "status.json")[1])
        assert snap["finished"] and snap["elapsed_s"] == 3.0 and snap["eta_s"] is None
        assert snap["credit_text"] == "5.0 T fuel"
    finally:
        d.close()


class Summing(Few):
    def __init__(self, n: int, line) -> None:
        super().__init__(n)
        self.line = line

    def summary(self):
        return self.line()


def test_a_task_s_summary_line_is_shown_cut_and_its_bugs_logged_once(tmp_path, caplog):
    s = Service(Summing(2, lambda: "  pi is about\n3.14  "), Journal(tmp_path / "j", "S"), now=0.0)
    try:
        assert s.summary() == "pi is about 3.14"
        s.task.line = lambda: "x" * 1000
        assert len(s.summary()) == 500 and s.summary().endswith("…")
        s.task.line = lambda: 1 / 0
        assert s.summary() is None and s.summary() is None
        assert caplog.text.count("summary() raised") == 1
        s.task.line = lambda: None
        assert s.summary() is None
    finally:
        s.close()
