"""The manager page: the lender's view of a running jobber, in a browser, as BOINC's manager
shows and steers its client (`python -m jobber --manager PORT ...`, or `python -m jobber
manager` beside a jobber already running).

Theory of operation
-------------------
The page's server (net._http.app_server: a few threads, bounded) talks to the jobber
only through its control socket (jobber._control.ask), as `python -m jobber status`
does: its threads never touch the jobber's loop or state, and it works the same in the
jobber's process and in a process of its own.

Who may use it: whoever holds the token kept in DATA_DIR/manager.token (0600, made on
first use, `secrets.token_urlsafe`), that is the data directory's owner. The URL given
out carries it in its fragment (`http://127.0.0.1:PORT/#token=...`), which a browser
never sends to a server nor puts in a Referer; the page moves it to the tab's session
storage, takes it off the address bar, and presents it in a header (TOKEN_HEADER) with
every request for data or action. The page itself (GET /) holds no data and needs none.

Routes:

=============== ====================================================================
GET /           the page (jobber/manager.html)
GET /status     the jobber's status as JSON; needs the token (403 without)
POST /action    a JSON request map (see `action`), forwarded to the control socket;
                needs the token, a JSON body, and no foreign Origin
=============== ====================================================================

Other defences: a request naming a Host other than the loopback address and port
served is refused (403: a DNS-rebinding page cannot use a name of its own); a form
on another site cannot set the header, and a script on one cannot read or send it
without a preflight this server never grants. The page binds to loopback only: over
plain HTTP a token would cross the network in the clear. From another machine an
owner runs the page on their own machine against the jobber's remote control
(docs/jobber.md, "The manager page").
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import stat
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobber import _control, _prefs
from net._http import app_server, parse_http

log = logging.getLogger(__name__)

TOKEN_FILE = "manager.token"
TOKEN_HEADER = "X-Borednet-Token"
ASK_TIMEOUT_S = 5.0
MAX_ADDRESS = 512  # a dealer's address as status lists it, in a request
PREFS = tuple(_prefs.Prefs.__dataclass_fields__)  # the page's form: every preference
_KEY = re.compile(r"[0-9a-f]{64}")

Reply = tuple[int, str, bytes]


def load_or_make_token(data_dir: Path) -> str:
    """The manager's token, made on first use in DATA_DIR/manager.token (0600)."""
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ValueError(f"{path} is not a file of this user's alone (chmod 600 it, or remove it)")
    token = path.read_text().strip()
    if len(token) < 32 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise ValueError(f"{path} holds no usable token: remove it and one is made")
    return token


def parse_address(text: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` for the page, HOST a loopback address (default 127.0.0.1)."""
    host, port = parse_http(text)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the manager page serves on loopback only, not {host}: it is plain HTTP, so "
            "its token would cross the network in the clear. From another machine, run "
            "`python -m jobber manager --remote` there (docs/jobber.md, The manager page)"
        )
    return host, port


def action(body: Any) -> dict[str, Any]:
    """The control request a POSTed JSON body asks for; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    cmd = body.get("cmd")
    if cmd in ("suspend", "resume"):
        return {"cmd": cmd}
    if cmd in ("pause", "unpause"):
        return {"cmd": cmd, "dealer": _address(body.get("dealer"))}
    if cmd == "accept_key":
        key = body.get("key")
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError("key: expected 64 lowercase hexadecimal digits")
        return {"cmd": cmd, "dealer": _address(body.get("dealer")), "key": key}
    if cmd == "prefs":
        given = body.get("set")
        if not isinstance(given, dict) or not given:
            raise ValueError('prefs: expected {"set": {NAME: VALUE or null, ...}}')
        return {"cmd": cmd, "set": {name: _pref(name, v) for name, v in given.items()}}
    raise ValueError("cmd: expected suspend, resume, pause, unpause, prefs or accept_key")


def _address(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ADDRESS:
        raise ValueError("dealer: expected its address as the status lists it")
    return value


def _pref(name: str, value: Any) -> Any:
    """One preference's value, checked as the jobber checks it (jobber._prefs; null: back
    to the default)."""
    try:
        _prefs.Prefs().changed({name: value})
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None
    return value


class Manager:
    """The page's routes (see the module's docstring), for net._http.app_server."""

    def __init__(self, ask: Callable[[str | dict], dict], token: str) -> None:
        self.ask = ask
        self._token = token.encode()
        self.hosts: frozenset[str] = frozenset()  # Host headers accepted: set once bound
        self._page = resources.files("jobber").joinpath("manager.html").read_bytes()

    def bound(self, host: str, port: int) -> None:
        names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
        self.hosts = frozenset(f"{h}:{port}" for h in names)

    def handle(self, method: str, target: str, headers, body: bytes) -> Reply:
        path = urlsplit(target).path
        host = headers.get("Host", "")
        if host not in self.hosts:
            return _text(403, f"this page answers to {' or '.join(sorted(self.hosts))} only")
        if method == "GET" and path == "/":
            return 200, "text/html; charset=utf-8", self._page
        if path not in ("/status", "/action"):
            return _text(404, "not found")
        if not self._holds_token(headers):
            return _text(403, f"the token is needed (in {TOKEN_HEADER})")
        if method == "GET" and path == "/status":
            return self._forward("status")
        if method == "POST" and path == "/action":
            return self._act(headers, body)
        return _text(405, "GET /status, POST /action")

    def _holds_token(self, headers) -> bool:
        given = headers.get(TOKEN_HEADER, "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token)

    def _act(self, headers, body: bytes) -> Reply:
        origin = headers.get("Origin")
        if origin is not None and origin != f"http://{headers.get('Host')}":
            return _text(403, "an action from another site")
        if headers.get_content_type() != "application/json":
            return _text(415, "expected application/json")
        try:
            request = action(json.loads(body))
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
            return _json(400, {"ok": False, "error": str(e)})
        return self._forward(request)

    def _forward(self, request: str | dict) -> Reply:
        try:
            reply = self.ask(request)
        except (ConnectionError, TimeoutError, OSError) as e:
            return _json(503, {"ok": False, "error": str(e)})
        return _json(200, reply)


def serve(
    data_dir: Path, host: str, port: int, ask: Callable[[str | dict], dict] | None = None
) -> tuple[Any, str]:
    """Serve the page for the jobber of `data_dir`; returns (server, URL with the token)."""
    token = load_or_make_token(data_dir)
    manager = Manager(ask or partial(_control.ask, data_dir, timeout_s=ASK_TIMEOUT_S), token)
    server = app_server(host, port, manager.handle)
    port = server.server_address[1]
    manager.bound(host, port)
    name = f"[{host}]" if ":" in host else host
    return server, f"http://{name}:{port}/#token={token}"


def start(data_dir: Path, address: str):
    """`python -m jobber --manager [HOST:]PORT ...`: the page, served from the jobber's
    process (in threads of its own) until the server is closed; its URL logged."""
    host, port = parse_address(address)
    server, url = serve(data_dir, host, port)
    log.info("manager page on %s", url)
    return server


def run_standalone(
    data_dir: Path, address: str, ask: Callable[[str | dict], dict] | None = None
) -> int:
    """`python -m jobber manager`: serve the page until SIGINT or SIGTERM, for the jobber
    of `data_dir`, or through `ask` (jobber._remote.client: a jobber elsewhere; its
    token is then kept in `data_dir` all the same)."""
    host, port = parse_address(address)
    if ask is not None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not data_dir.is_dir():
        raise ValueError(f"no jobber has run on {data_dir} (see --data-dir)")
    # blocked before the server's threads start, so they inherit it and sigwait gets it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    server, url = serve(data_dir, host, port, ask)
    print(f"manager page on {url}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stop(server)
    return 0


def stop(server) -> None:
    """Close the page's server (None: there is none)."""
    if server is not None:
        server.shutdown()
        server.server_close()


def _text(code: int, text: str) -> Reply:
    return code, "text/plain; charset=utf-8", (text + "\n").encode()


def _json(code: int, body: dict) -> Reply:
    return code, "application/json", json.dumps(_finite(body)).encode()


def _finite(v):
    """A status as JSON carries it: non-finite numbers as null, bytes as hex."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
