"""`python -m allocator` as an operator types it: serve on a database in a folder not
made yet, and the admin commands' allocator taken from $BOREDNET_ALLOCATOR."""

from __future__ import annotations

import subprocess

import pytest

from allocator import cli
from allocator.cli import ALLOCATOR_ENV, ask
from net._keys import create_key_pair
from tests.helpers import PY, ROOT, free_port


def test_serve_makes_the_databases_folder(procs, tmp_path):
    db = tmp_path / "srv" / "alloc" / "org.sqlite"
    proc = procs.start(
        "allocator",
        [PY, "-m", "allocator", "serve", "--db", db, "--bind", f"tcp://127.0.0.1:{free_port()}"],
    )
    proc.wait_for(r"allocator at (\S+)", 30, stream="stdout")
    assert db.is_file() and (tmp_path / "srv" / "alloc" / "org.root.key_secret").is_file()


def test_serve_on_a_folder_it_cannot_make_says_so_without_a_traceback(tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    got = subprocess.run(
        [PY, "-m", "allocator", "serve", "--db", str(tmp_path / "plain" / "org.sqlite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 2
    assert got.stderr.startswith("error: ") and "Traceback" not in got.stderr


def test_the_admin_commands_take_the_allocator_from_the_environment(
    served, tmp_path, monkeypatch, capsys
):
    server, root = served
    admin = create_key_pair(tmp_path / "admin")
    ask(server.address, root, "grant", {"key": admin.public_hex, "role": "allocator_admin"})
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    assert cli.main(["whoami", "--key", str(tmp_path / "admin")]) == 2
    assert f"${ALLOCATOR_ENV}" in capsys.readouterr().err
    monkeypatch.setenv(ALLOCATOR_ENV, server.address)
    assert cli.main(["whoami", "--key", str(tmp_path / "admin")]) == 0
    assert capsys.readouterr().out.strip() == "allocator_admin"
    # --allocator, given, wins over the environment
    monkeypatch.setenv(ALLOCATOR_ENV, f"tcp://127.0.0.1:{free_port()}")
    key = str(tmp_path / "admin")
    assert cli.main(["whoami", "--key", key, "--allocator", server.address]) == 0
    assert capsys.readouterr().out.strip() == "allocator_admin"


@pytest.mark.parametrize("command", ["list", "stats", "prefs lab start_hour="])
def test_every_admin_command_defaults_to_the_environment(monkeypatch, command):
    monkeypatch.setenv(ALLOCATOR_ENV, "alloc.example#" + "5" * 64)
    args = cli.parser().parse_args(command.split())
    assert args.allocator == "alloc.example#" + "5" * 64
