"""The dealer's live dashboard: its JSON and metrics over real HTTP. Its page in a real
headless browser while a real dealer and jobber run a batch: tests/e2e/test_dashboard.py."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from dealer._dashboard import Dashboard
from net._http import parse_http


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
        {"denied": False, "gone": False},
        {"denied": False, "gone": True},
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
