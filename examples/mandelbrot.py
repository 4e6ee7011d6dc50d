"""Render the Mandelbrot set into a PNG, one band of rows per job.

    python examples/mandelbrot.py --jobbers 2 --out mandelbrot.png
    python examples/mandelbrot.py --size 1920x1080 --center -0.7436 0.1318 --span 0.002 \\
        --iterations 2000 --out seahorse.png

Each job runs mandelbrot.c on a band of rows and returns every pixel's escape
count; the task colours the counts and, once every band is in, writes the PNG
(with the standard library's zlib: no imaging package needed).
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import zlib
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from tasks import Job, Limits, Payload, Task  # noqa: E402


def colour(n: int, iterations: int) -> bytes:
    """The RGB colour of a pixel whose escape count is n: black inside the set."""
    if n >= iterations:
        return b"\0\0\0"
    t = math.sqrt(n / iterations)
    r, g, b = 9 * (1 - t) * t**3, 15 * (1 - t) ** 2 * t**2, 8.5 * (1 - t) ** 3 * t
    return bytes(min(255, int(256 * v)) for v in (r, g, b))


def write_png(path: Path, width: int, height: int, rgb: bytes) -> None:
    """An 8-bit RGB PNG of `rgb` (rows top to bottom, 3 bytes a pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    line = 3 * width
    raw = b"".join(b"\0" + rgb[y * line : (y + 1) * line] for y in range(height))  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


class Mandelbrot(Task):
    """Render the Mandelbrot set into a PNG."""
    output_options = ("out",)  # where the results go: not part of the journal's name

    limits = Limits(fuel=10**11, memory_mb=16, time_s=60, output_kb=1024)

    def __init__(
        self, width=800, height=600, center=(-0.75, 0.0), span=3.0, iterations=500, rows=16,
        out="mandelbrot.png",
    ):  # fmt: skip
        super().__init__()
        if not (0 < width * rows * 2 <= self.limits.output_kb * 1024 and height > 0):
            raise ValueError("a band (width x rows x 2 bytes) must fit in output_kb")
        if not 1 <= iterations <= 65535:
            raise ValueError("iterations must be in [1, 65535]")
        self.width, self.height, self.iterations, self.rows = width, height, iterations, rows
        self.out = Path(out)
        # pixel (x, y) is the point x0 + (x + 0.5) step + i (y0 - (y + 0.5) step)
        self.step = span / width
        self.x0 = center[0] - span / 2
        self.y0 = center[1] + self.step * height / 2
        self.payload = Payload.from_c("mandelbrot.c")  # next to this file
        self.bands: dict[int, bytes] = {}  # first row -> escape counts, 2 bytes each

    def jobs(self):
        for row0 in range(0, self.height, self.rows):
            rows = min(self.rows, self.height - row0)
            args = (self.width, row0, rows, self.x0, self.y0, self.step, self.iterations)
            yield Job(tuple(map(repr, args)))  # repr: a float's exact decimal

    def total(self) -> int:
        return -(-self.height // self.rows)

    def on_output(self, job: Job, output: bytes) -> None:
        row0, rows = int(job.args[1]), int(job.args[2])
        if len(output) != 2 * self.width * rows:
            raise ValueError(f"expected {2 * self.width * rows} bytes, got {len(output)}")
        self.bands[row0] = output

    def result(self) -> bytes:
        """The image, RGB rows top to bottom; bands that failed are grey."""
        palette = [colour(n, self.iterations) for n in range(self.iterations + 1)]
        rgb = []
        for row0 in range(0, self.height, self.rows):
            rows = min(self.rows, self.height - row0)
            counts = array("H", self.bands.get(row0, b""))  # 2 bytes a count, little endian
            if sys.byteorder == "big":
                counts.byteswap()
            rgb.append(b"".join(palette[n] for n in counts) or b"\x80" * 3 * self.width * rows)
        return b"".join(rgb)

    def report(self) -> str:
        write_png(self.out, self.width, self.height, self.result())
        missing = self.total() - len(self.bands)
        note = f"; {missing} bands failed (grey)" if missing else ""
        return f"wrote {self.out}: {self.width} x {self.height} pixels{note}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", default="800x600", help="WIDTHxHEIGHT (default 800x600)")
        parser.add_argument(
            "--center", nargs=2, type=float, default=(-0.75, 0.0), metavar=("X", "Y")
        )
        parser.add_argument("--span", type=float, default=3.0, help="width of the view (default 3)")
        parser.add_argument("--iterations", type=int, default=500, help="at most (default 500)")
        parser.add_argument("--rows", type=int, default=16, help="rows per job (default 16)")
        parser.add_argument("--out", default="mandelbrot.png", help="the PNG to write")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Mandelbrot:
        try:
            width, height = map(int, args.size.lower().split("x"))
            center = tuple(args.center)
            return cls(width, height, center, args.span, args.iterations, args.rows, args.out)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Mandelbrot))
