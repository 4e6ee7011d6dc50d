"""The dealer's dashboard page in a real headless browser (Debian's chromium driven through
selenium and chromedriver) while a real dealer and jobber run a batch, and afterwards
from the batch's journal alone (`python -m dealer dashboard DB`)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.dealer.test_dashboard import get
from tests.helpers import CHUNK, JOBS, LINE, PY, N, free_port, wait_for

TOOK = r"(\d+ ms|\d\.\d s|\d+ s|\d+ min \d+ s)"  # a job's time out, as the page writes it


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
        # the header says the address lenders give, key and all, and copies it
        address = dealer.wait_for(r"listening on (tcp://\S+#[0-9a-f]{64})", 1).group(1)
        assert address == f"tcp://127.0.0.1:{port}#{json.loads(get(url + 'status.json')[1])['key']}"
        assert text("address") == address
        assert browser.find_element("id", "address").find_element("xpath", "..").text == (
            f"python -m jobber {address}"
        )
        browser.find_element("id", "copy").click()
        wait_for(lambda: text("copied") != "", 10, "the page says it copied the address")
        assert browser.execute_script("return getSelection().toString()") == address
        browser.execute_script("window.stillTheSamePage = true")
        # a slowed jobber, so the page has time to see the batch move
        procs.jobber("lender", f"127.0.0.1:{port}", extra=("--cpu-limit", "15"))
        wait_for(lambda: 0 < int(text("accepted")) < JOBS, 60, "the page shows progress")
        wait_for(lambda: "lender" in text("jobbers"), 20, "the page lists the jobber")
        # what it is, where its journal is, how long it has run, what the task says
        assert text("source") == "live"
        assert text("journal") == str(tmp_path / "dealer.sqlite")
        assert re.fullmatch(r"\d+ (min \d+ )?s", text("elapsed")), text("elapsed")
        wait_for(lambda: "ranges searched" in text("summary"), 20, "the task's summary line")
        assert re.fullmatch(r"\d+ of 11 ranges searched; divisors found: .+", text("summary"))
        wait_for(lambda: "G fuel" in text("jobbers"), 30, "the jobber's credit, readable")
        assert re.fullmatch(r"\d+\.\d G fuel", text("credit"))
        assert re.fullmatch(f"{TOOK} / {TOOK}", text("job-time")), text("job-time")
        assert text("x-ticks").split("\n")[0] == "0 s"
        assert text("y-ticks").split("\n")[:2] == ["0", "2"]  # to 11 jobs, in steps of 2
        seen = int(text("accepted"))
        wait_for(lambda: int(text("accepted")) > seen, 60, "the page updates by itself")
        assert browser.execute_script("return window.stillTheSamePage") is True  # no reload
        # the page agrees with the JSON beside it (each read once a second)
        status = json.loads(get(url + "status.json")[1])
        wait_for(
            lambda: int(text("accepted")) >= status["accepted"], 10, "the page matches the JSON"
        )
        # its one peer, where nothing listens, with its failed contacts
        wait_for(lambda: "failed contacts" in text("peers"), 60, "the page shows the peer")
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


def test_the_page_shows_long_jobs_with_their_last_saved_state(procs, tmp_path):
    """A batch of jobs that save (tests/task_files/chain.py): the page lists the job
    running, how long it has run, where it started and when its last state came."""
    port, http = free_port(), free_port()
    dealer = procs.dealer(
        "dealer",
        "../tests/task_files/chain.py",
        *("--steps", "3000000", "--send-every", "1", "--http", str(http)),
        port=port,
    )
    dealer.wait_for(r"dashboard on http://127\.0\.0\.1:\d+/", 30)
    browser = _browser()
    try:
        browser.get(f"http://127.0.0.1:{http}/")
        text = lambda id_: browser.find_element("id", id_).text  # noqa: E731
        jobber = procs.jobber("lender", f"127.0.0.1:{port}")
        wait_for(lambda: " ago" in text("long-jobs"), 300, "the page shows a state's age")
        assert text("long-total") == "1"
        row = text("long-jobs")
        assert "the beginning" in row and re.search(r"\d+ s", row)
    finally:
        browser.quit()
    assert dealer.wait(300) == 0, dealer.stderr
    jobber.signal(15)
    assert jobber.wait(60) == 0, jobber.stderr


def test_a_finished_batch_s_dashboard_from_its_journal_alone(procs, tmp_path):
    """A batch where jobs fail alike (tests/task_files/failing.py) run to its end by a real
    jobber; then `python -m dealer dashboard DB` shows it, and a still screenshot."""
    port = free_port()
    db = tmp_path / "failing.sqlite"
    dealer = procs.dealer("dealer", "../tests/task_files/failing.py", port=port, db=db)
    address = dealer.wait_for(r"listening on (tcp://\S+#[0-9a-f]{64})", 1).group(1)
    jobber = procs.jobber("lender", f"127.0.0.1:{port}")
    assert dealer.wait(300) == 1, dealer.stderr  # some jobs failed
    assert dealer.stdout.strip() == "12 done, 8 failed"
    jobber.signal(15)
    assert jobber.wait(60) == 0, jobber.stderr
    view = procs.start("view", [PY, "-m", "dealer", "dashboard", db])
    url = view.wait_for(r"dashboard on (http://127\.0\.0\.1:\d+/)", 60, stream="stdout").group(1)
    browser = _browser()
    try:
        browser.get(url)
        text = lambda id_: browser.find_element("id", id_).text  # noqa: E731
        wait_for(lambda: text("accepted") == "12", 30, "the page shows the finished counts")
        assert (text("failed"), text("failed_own"), text("total")) == ("8", "8", "20")
        assert (text("in_flight"), text("drawn"), text("eta")) == ("0", "20", "done")
        assert text("source") == "from the journal: finished"
        assert text("journal") == str(db)
        assert text("address") == address and text("lenders-verb") == "lenders ran"
        assert text("summary") == "12 jobs succeeded so far"  # as the dealer stopped
        assert re.fullmatch(r"\d+(\.\d+)? s|\d+ min \d+ s", text("elapsed")), text("elapsed")
        assert re.fullmatch(r"\d+\.\d M fuel", text("credit")), text("credit")  # 12 x 8.4 M
        assert text("rate-label") == "jobs/s (whole run)"
        # eight failures in two groups, not eight lines
        assert text("failures-total") == "8"
        # (read at once: the page draws its lists anew every second)
        groups = browser.execute_script(
            "return [...document.querySelectorAll('#failure-groups > li')].map("
            "(li) => [li.querySelector('.count').textContent, li.textContent])"
        )
        assert [count for count, _ in groups] == ["5 × ", "3 × "]
        # the first job's own words, the numbers as they were
        assert re.search(
            r"the same failure on 1 machine: exit: exit code \d+ \(fuel \d+\)", groups[0][1]
        )
        assert "e.g. job 1 (exit x), job 5 (exit xxxxx), job 9" in groups[0][1]
        assert "trap: wasm trap" in groups[1][1] and "its own bug" in groups[1][1]
        # the chart's axes: what they are, and ticks with labels
        assert text("x-title") == "time since the first job was sent"
        assert text("y-title") == "jobs settled"
        assert text("x-ticks").split("\n")[0] == "0 s" and len(text("x-ticks").split()) >= 4
        assert text("y-ticks").split("\n")[:2] == ["0", "5"] and "20" in text("y-ticks")
        points = browser.find_element("id", "line").get_attribute("points").split()
        assert len(points) >= 2 * 13 - 1  # from the start, a step per job settled
        assert text("waiting") == "nothing: the batch is over"
        assert re.fullmatch(f"{TOOK} / {TOOK}", text("job-time")), text("job-time")
        rows = text("jobbers").split("\n")
        assert len(rows) == 1 and "127.0.0." in rows[0] and "M fuel" in rows[0]
        # a still page for screenshots: read once, nothing moving
        browser.get(url + "?still")
        wait_for(
            lambda: browser.execute_script("return document.body.dataset.still") == "ready",
            30,
            "the still page is drawn",
        )
        assert text("accepted") == "12"
        bar = "return getComputedStyle(document.getElementById('progress')).transitionDuration"
        assert browser.execute_script(bar) == "0s"
        shot = tmp_path / "dashboard-from-journal.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.quit()
    view.signal(15)
    assert view.wait(30) == 0, view.stderr
