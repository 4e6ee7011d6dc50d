/* Float work for tests/task_files/floats.py: STEPS steps of square roots, divisions and
 * sines from X, then the bits of a NaN made at run time, which are the CPU's own
 * unless the sandbox canonicalizes NaNs (x86: fff8000000000000; canonical:
 * 7ff8000000000000).
 *
 * Usage: floats STEPS X
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floats STEPS X\n");
        return 2;
    }
    long n = atol(argv[1]);
    double x = atof(argv[2]), acc = 0.0;
    for (long i = 1; i <= n; i++) {
        x = sqrt(x * x + (double)i) / (1.0 + fabs(x)) + sin(x);
        acc += x / (double)i;
    }
    double nan = sqrt(-1.0 - fabs(acc));
    uint64_t bits;
    memcpy(&bits, &nan, sizeof bits);
    printf("%.9f %016llx\n", acc, (unsigned long long)bits);
    return 0;
}
