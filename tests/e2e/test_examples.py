"""The examples researchers copy, run as they would run them: a real dealer process and
real jobber processes on loopback, small enough to take seconds."""

from __future__ import annotations

import csv
import importlib.util
import struct
import zlib
from pathlib import Path

from sandbox import run
from tests.helpers import PY, ROOT, free_port, summary, summary_rows

EXAMPLES = ROOT / "examples"


def example(name: str):
    """examples/NAME.py as a module (its dealer does not start: that is under __main__)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(procs, name: str, *args: str, jobbers: int = 2):
    """python examples/NAME.py ARGS --jobbers N, on a free loopback port."""
    argv = [PY, EXAMPLES / f"{name}.py", *args, "--bind", "tcp://127.0.0.1:*"]
    return procs.start(name, [*argv, "--jobbers", str(jobbers), "--quiet"])


def read_png(path: Path) -> tuple[int, int, bytes]:
    """(width, height, RGB rows) of an 8-bit RGB PNG without filters, as write_png makes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    line = 1 + 3 * width
    assert len(raw) == height * line
    assert all(raw[y * line] == 0 for y in range(height))  # filter type 0 on every row
    return width, height, b"".join(raw[y * line + 1 : (y + 1) * line] for y in range(height))


def escape_count(cr: float, ci: float, iterations: int) -> int:
    """The reference: mandelbrot.c's loop in Python floats (IEEE doubles, same order)."""
    zr = zi = 0.0
    n = 0
    while n < iterations:
        zr2, zi2 = zr * zr, zi * zi
        if zr2 + zi2 > 4.0:
            break
        zi = 2 * zr * zi + ci
        zr = zr2 - zi2 + cr
        n += 1
    return n


# --- mandelbrot -------------------------------------------------------------------------


def test_the_mandelbrot_kernel_counts_as_python_does(mandelbrot_wasm):
    """One band run in this process, every pixel against the Python reference."""
    width, row0, rows, x0, y0, step, its = 40, 7, 3, -2.25, 1.2, 0.075, 300
    args = [repr(a) for a in (width, row0, rows, x0, y0, step, its)]
    out = run(mandelbrot_wasm, args)
    assert out.status.value == "ok", out.detail
    counts = struct.unpack(f"<{width * rows}H", out.stdout)
    expected = [
        escape_count(x0 + (x + 0.5) * step, y0 - (y + 0.5) * step, its)
        for y in range(row0, row0 + rows)
        for x in range(width)
    ]
    assert list(counts) == expected
    assert min(counts) < 5 and max(counts) == its  # some escape at once, some never


def test_mandelbrot_renders_a_png_from_bands(procs, mandelbrot_wasm, tmp_path):
    width, height, iterations = 90, 60, 200
    out = tmp_path / "m.png"
    dealer = serve(
        procs,
        "mandelbrot",
        *("--size", f"{width}x{height}", "--rows", "8", "--iterations", str(iterations)),
        *("--out", str(out)),
    )
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == f"wrote {out}: {width} x {height} pixels"
    assert sum(row[2] for row in summary_rows(dealer.stderr)) == 8  # ceil(60 / 8) bands

    got_w, got_h, rgb = read_png(out)
    assert (got_w, got_h) == (width, height)
    m = example("mandelbrot")
    task = m.Mandelbrot(width, height, iterations=iterations, out=out)  # the same view
    inside = outside = 0
    for y in range(0, height, 3):
        for x in range(0, width, 5):
            cr, ci = task.x0 + (x + 0.5) * task.step, task.y0 - (y + 0.5) * task.step
            n = escape_count(cr, ci, iterations)
            pixel = rgb[3 * (y * width + x) : 3 * (y * width + x + 1)]
            assert pixel == m.colour(n, iterations), (x, y, n)
            inside += n == iterations
            outside += n < iterations
    assert inside > 20 and outside > 100  # the view holds both
    assert rgb[3 * (30 * width + 60) : 3 * (30 * width + 61)] == b"\0\0\0"  # c = -0.23: inside


# --- the parameter sweep ------------------------------------------------------------------


def test_the_sweep_cross_checks_floats_byte_for_byte(procs, sir_wasm, tmp_path):
    """Redundancy 2 on two jobbers at distinct addresses: every job is accepted only if
    both replicas printed the same 17-digit floats, and both jobbers did every job."""
    out = tmp_path / "s.csv"
    grid = ("--r0", "0.5", "3", "4", "--vaccinated", "0", "0.6", "3", "--runs", "50")
    dealer = serve(procs, "sweep", *grid, "--out", str(out))
    assert dealer.wait(90) == 0, dealer.stderr
    line = dealer.stdout.strip()
    assert line.startswith(f"wrote {out} (12 points); ")

    rows = summary_rows(dealer.stderr)
    assert len(rows) == 2
    assert [(valid, invalid, errors) for _, _, valid, invalid, errors, _ in rows] == [
        (12, 0, 0),
        (12, 0, 0),
    ]  # both replicas of all 12 jobs accepted: none disagreed, none failed

    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["r0", "vaccinated", "attack_rate", "major_outbreaks", "duration"]
    r0s = [round(0.5 + 2.5 * k / 3, 12) for k in range(4)]
    assert [(float(r[0]), float(r[1])) for r in table[1:]] == [
        (r0, v) for v in (0.0, 0.3, 0.6) for r0 in r0s
    ]
    # the CSV holds the payload's bytes: rerun one point here, with its seed (index 5)
    r0, v, *values = table[6]
    here = run(sir_wasm, [repr(float(r0)), repr(float(v)), "1000", "50", str(1_000_000_007 + 5)])
    assert here.stdout.decode().split() == values
    # no outbreak grows at R0 = 0.5; at R0 = 3 and no vaccination most runs are major
    by_point = {(float(r[0]), float(r[1])): [float(x) for x in r[2:]] for r in table[1:]}
    assert by_point[0.5, 0.0][1] == 0.0
    assert by_point[3.0, 0.0][1] > 0.4

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert line.endswith(
            "no plot: matplotlib is not installed (pip install 'borednet[examples]')"
        )  # noqa: E501
    else:
        assert line.endswith(f"plotted {out.with_suffix('.png')}")
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- memory -------------------------------------------------------------------------------


def test_jobs_that_need_more_memory_go_only_to_a_jobber_that_offers_it(procs, sieve_wasm, tmp_path):
    port = free_port()
    out = tmp_path / "p.csv"
    dealer = procs.dealer("dealer", "primes.py", "300000000", "--out", str(out), port=port)
    addr = f"127.0.0.1:{port}"
    small = procs.jobber("small", addr, extra=("--memory", "32", "--max-idle", "2"))
    small.wait_for(r"has no work for us: jobs need 80 MiB each; you offer 32", 30)
    big = procs.jobber("big", addr, extra=("--memory", "128", "--max-idle", "2"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == f"16252325 primes below 300000000; wrote {out}"
    rows = summary(dealer.stderr)
    assert rows["big"][:3] == (5, 0, 0)  # every one of the 5 jobs
    assert rows["small"][:3] == (0, 0, 0)  # asked, and was sent none
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["lo", "hi", "primes"] and len(table) == 6
    assert table[1] == ["0", "67108864", "3957809"]  # pi(2^26)
    for j in (small, big):
        assert j.wait(60) == 0, j.stderr
