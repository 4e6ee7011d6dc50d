"""The manager page's server (jobber._manager) with a stand-in for the jobber's control
socket: its token file, who it answers, and the requests it passes on."""

from __future__ import annotations

import http.client
import json
import os
import stat

import pytest

from jobber import _manager
from jobber._manager import TOKEN_HEADER, action, load_or_make_token, parse_address

STATUS = {"ok": True, "name": "lent-pc", "dealers": [], "running": [], "backoff": float("inf")}


def test_the_token_is_made_owner_only_on_first_use_and_then_reused(tmp_path):
    token = load_or_make_token(tmp_path)
    path = tmp_path / "manager.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and path.read_text().strip() == token
    assert load_or_make_token(tmp_path) == token
    other = tmp_path / "other"
    other.mkdir()
    assert load_or_make_token(other) != token  # random, not derived


def test_a_token_file_others_can_read_or_a_broken_one_is_refused(tmp_path):
    token = load_or_make_token(tmp_path)
    path = tmp_path / "manager.token"
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_or_make_token(tmp_path)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="no usable token"):
        load_or_make_token(tmp_path)
    path.unlink()
    (tmp_path / "elsewhere").write_text(token)
    os.chmod(tmp_path / "elsewhere", 0o600)
    path.symlink_to(tmp_path / "elsewhere")  # a planted link is not followed
    with pytest.raises(ValueError, match="not a file"):
        load_or_make_token(tmp_path)


def test_the_page_binds_to_loopback_only():
    assert parse_address("0") == ("127.0.0.1", 0)
    assert parse_address("8123") == ("127.0.0.1", 8123)
    assert parse_address("127.0.0.5:80") == ("127.0.0.5", 80)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("localhost:0") == ("localhost", 0)
    for host in ("0.0.0.0", "192.168.1.4", "[::]", "example.org"):
        with pytest.raises(ValueError, match="loopback only"):
            parse_address(f"{host}:8123")


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": "suspend"},
        {"cmd": "resume", "extra": "dropped"},
        {"cmd": "pause", "dealer": "tcp://127.0.0.1:7117"},
        {"cmd": "unpause", "dealer": "tcp://127.0.0.1:7117"},
        {"cmd": "accept_key", "dealer": "tcp://h:1", "key": "ab" * 32},
        {"cmd": "prefs", "set": {"no_battery": True, "memory_idle_mb": 512, "net_mb_day": 0}},
        {"cmd": "prefs", "set": {"max_disk_pct": 12.5, "compute_hours": "22-7"}},
        {"cmd": "prefs", "set": {name: None for name in _manager.PREFS}},
    ],
)
def test_valid_actions_are_passed_on_as_control_requests(body):
    request = action(body)
    assert request["cmd"] == body["cmd"]
    assert "extra" not in request
    assert {k: v for k, v in body.items() if k != "extra"} == request


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "JSON object"),
        ({"cmd": "quit"}, "expected suspend"),
        ({"cmd": "status"}, "expected suspend"),
        ({"cmd": "pause"}, "dealer"),
        ({"cmd": "pause", "dealer": "x" * 600}, "dealer"),
        ({"cmd": "accept_key", "dealer": "tcp://h:1", "key": "AB" * 32}, "hexadecimal"),
        ({"cmd": "prefs", "set": {}}, "prefs"),
        ({"cmd": "prefs", "set": {"slots": 3}}, "unknown preference"),
        ({"cmd": "prefs", "set": {"no_battery": "yes"}}, "true or false"),
        ({"cmd": "prefs", "set": {"memory_idle_mb": True}}, "whole number"),
        ({"cmd": "prefs", "set": {"max_disk_mb": -1}}, "whole number"),
        ({"cmd": "prefs", "set": {"max_disk_mb": 1.5}}, "whole number"),
        ({"cmd": "prefs", "set": {"max_disk_pct": 101}}, "0 to 100"),
        ({"cmd": "prefs", "set": {"max_disk_pct": float("nan")}}, "0 to 100"),
        ({"cmd": "prefs", "set": {"compute_hours": "25-7"}}, "22-7"),
        ({"cmd": "prefs", "set": {"compute_hours": "evenings"}}, "22-7"),
    ],
)
def test_invalid_actions_are_refused_with_a_reason(body, error):
    with pytest.raises(ValueError, match=error):
        action(body)


@pytest.fixture
def page(tmp_path):
    asked: list = []

    def ask(request):
        asked.append(request)
        if request == {"cmd": "suspend"}:
            raise TimeoutError("the jobber did not answer within 5 s")
        return STATUS

    server, url = _manager.serve(tmp_path, "127.0.0.1", 0, ask)
    yield server.server_address[1], url.split("#token=")[1], asked
    _manager.stop(server)


def request(port, method, path, headers=(), body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post(port, token, body, **headers):
    headers = {TOKEN_HEADER: token, "Content-Type": "application/json", **headers}
    return request(port, "POST", "/action", headers, json.dumps(body).encode())


def test_the_page_needs_no_token_but_the_status_does(page):
    port, token, asked = page
    code, html = request(port, "GET", "/")
    assert code == 200 and b"Suspend" in html and token.encode() not in html
    assert request(port, "GET", "/status")[0] == 403
    assert request(port, "GET", "/status", {TOKEN_HEADER: token[:-1] + "x"})[0] == 403
    assert request(port, "GET", f"/status?token={token}")[0] == 403  # the header, not the URL
    assert asked == []
    code, body = request(port, "GET", "/status", {TOKEN_HEADER: token})
    assert code == 200 and asked == ["status"]
    assert json.loads(body) == {**STATUS, "backoff": None}  # JSON has no infinity
    assert request(port, "GET", "/elsewhere", {TOKEN_HEADER: token})[0] == 404


def test_a_foreign_host_name_is_refused_even_with_the_token(page):
    """A DNS-rebinding page reaches loopback under a name of its own."""
    port, token, asked = page
    for host in (f"evil.example:{port}", "127.0.0.1:1", ""):
        headers = {TOKEN_HEADER: token, "Host": host}
        assert request(port, "GET", "/status", headers)[0] == 403
        assert request(port, "GET", "/", {"Host": host})[0] == 403
    assert request(port, "GET", "/status", {TOKEN_HEADER: token, "Host": f"localhost:{port}"})[0]
    assert asked == ["status"]


def test_actions_need_the_header_json_and_no_foreign_origin(page):
    port, token, asked = page
    pause = {"cmd": "pause", "dealer": "tcp://127.0.0.1:7117"}
    form = b"cmd=pause&dealer=x"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(port, "POST", "/action", headers, form)[0] == 403  # a cross-site form
    assert post(port, "", pause)[0] == 403
    assert post(port, token, pause, Origin="http://evil.example")[0] == 403
    assert post(port, token, pause, **{"Content-Type": "text/plain"})[0] == 415
    assert asked == []
    code, body = post(port, token, pause, Origin=f"http://127.0.0.1:{port}")
    assert code == 200 and json.loads(body)["name"] == "lent-pc"
    assert asked == [pause]
    code, body = post(port, token, {"cmd": "prefs", "set": {"max_disk_pct": 300}})
    assert code == 400 and "0 to 100" in json.loads(body)["error"]
    code, body = request(port, "POST", "/action", {TOKEN_HEADER: token}, b"{not json")
    assert code in (400, 415)
    assert asked == [pause]  # nothing refused reached the jobber


def test_a_jobber_that_does_not_answer_is_said_so(page):
    port, token, asked = page
    code, body = post(port, token, {"cmd": "suspend"})
    assert code == 503 and json.loads(body) == {
        "ok": False,
        "error": "the jobber did not answer within 5 s",
    }


def test_bodies_are_bounded_and_other_methods_refused(page):
    port, token, _ = page
    big = b"{" + b" " * 20000 + b"}"
    headers = {TOKEN_HEADER: token, "Content-Type": "application/json"}
    assert request(port, "POST", "/action", headers, big)[0] == 413
    assert request(port, "PUT", "/action", headers, b"{}")[0] == 405
    deep = b"[" * 10000 + b"]" * 10000
    assert request(port, "POST", "/action", headers, deep[:16000])[0] == 400
