/* One band of a Mandelbrot image, for examples/mandelbrot.py.
 *
 * Usage: mandelbrot WIDTH ROW0 ROWS X0 Y0 STEP ITERATIONS
 * Pixel (x, y) of the image is the point c = X0 + (x + 0.5) STEP + i (Y0 - (y + 0.5) STEP).
 * Writes, for rows ROW0 .. ROW0 + ROWS - 1, left to right, each pixel's escape count:
 * the first n at which |z| > 2 for z <- z^2 + c from z = 0, or ITERATIONS if it never
 * escaped; as 2 bytes, little endian (so ITERATIONS is at most 65535).
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: mandelbrot WIDTH ROW0 ROWS X0 Y0 STEP ITERATIONS\n");
        return 2;
    }
    int width = atoi(argv[1]), row0 = atoi(argv[2]), rows = atoi(argv[3]);
    double x0 = strtod(argv[4], NULL), y0 = strtod(argv[5], NULL), step = strtod(argv[6], NULL);
    int iterations = atoi(argv[7]);
    if (width < 1 || rows < 1 || iterations < 1 || iterations > 65535) return 2;
    unsigned char *out = malloc(2 * (size_t)width);
    if (!out) return 3;
    for (int y = row0; y < row0 + rows; y++) {
        double ci = y0 - (y + 0.5) * step;
        for (int x = 0; x < width; x++) {
            double cr = x0 + (x + 0.5) * step;
            double zr = 0, zi = 0;
            int n = 0;
            while (n < iterations) {
                double zr2 = zr * zr, zi2 = zi * zi;
                if (zr2 + zi2 > 4.0) break;
                zi = 2 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
                n++;
            }
            out[2 * x] = n & 0xff;
            out[2 * x + 1] = n >> 8;
        }
        fwrite(out, 2, width, stdout);
    }
    return 0;
}
