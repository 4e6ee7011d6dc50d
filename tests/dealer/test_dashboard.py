"""The dealer's live dashboard: its JSON and metrics over real HTTP, and its page in a real
headless browser (Debian's chromium driven through selenium and chromedriver) while a
real dealer and jobber run a batch."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request

import pytest

from dealer._dashboard import Dashboard
from net._http import parse_http
from tests.helpers import CHUNK, JOBS, LINE, N, free_port, wait_for


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
    d = Dashboard("127.0.0.1", 0, "T")
    try:
        assert d.due(0.0) and not d.due(0.5) and d.due(1.0)
        d.publish({**STATUS, "accepted": 0, "failed": 0}, [], 0, 100.0)
        d.publish(STATUS, [{"job": 3, "args": ["x"], "reasons": ["boom"]}], 1, 120.0)
        code, body = get(d.url + "status.json")
        snap = json.loads(body)
        assert code == 200 and snap["settled"] == 4
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


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(
        (p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None
    )
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no chromium and chromedriver on this machine (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(binary)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,1400",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.mark.e2e
def test_the_page_shows_a_running_batch_and_updates_live(procs, factor_wasm, tmp_path):
    port, http, dead = free_port(), free_port(), free_port()
    dealer = procs.dealer(
        "dealer",
        "factoring.py",
        str(N),
        "--chunk",
        CHUNK,
        "--http",
        str(http),
        "--peer",
        f"127.0.0.1:{dead}",
        port=port,
    )
    dealer.wait_for(r"dashboard on http://127\.0\.0\.1:\d+/", 30)
    url = f"http://127.0.0.1:{http}/"
    browser = _browser()
    try:
        browser.get(url)
        text = lambda id_: browser.find_element("id", id_).text  # noqa: E731
        wait_for(lambda: text("total") == str(JOBS), 20, "the page shows the batch's total")
        assert text("accepted") == "0" and text("jobbers-total") == "0"
        assert "factoring" in browser.title.lower()
        browser.execute_script("window.stillTheSamePage = true")
        # a slowed jobber, so the page has time to see the batch move
        procs.jobber("lender", f"127.0.0.1:{port}", extra=("--cpu-limit", "15"))
        wait_for(lambda: 0 < int(text("accepted")) < JOBS, 60, "the page shows progress")
        wait_for(lambda: "lender" in text("jobbers"), 20, "the page lists the jobber")
        seen = int(text("accepted"))
        wait_for(lambda: int(text("accepted")) > seen, 60, "the page updates by itself")
        assert browser.execute_script("return window.stillTheSamePage") is True  # no reload
        # the page agrees with the JSON beside it (each read once a second)
        status = json.loads(get(url + "status.json")[1])
        wait_for(
            lambda: int(text("accepted")) >= status["accepted"], 10, "the page matches the JSON"
        )
        # its one peer, where nothing listens, with its failed contacts
        wait_for(lambda: "failed contacts" in text("peers"), 10, "the page shows the peer")
        assert text("peers").startswith(f"tcp://127.0.0.1:{dead}: never answered")
        assert status["peers"][0]["address"] == f"tcp://127.0.0.1:{dead}"
        points = browser.find_element("id", "line").get_attribute("points")
        assert len(points.split()) >= 2  # the chart draws progress over time
        assert text("rate") != "-" and float(text("rate")) > 0
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        code, metrics = get(url + "metrics")
        assert code == 200 and re.search(r"^borednet_jobs_total 11\.0$", metrics, re.M)
    finally:
        browser.quit()
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
