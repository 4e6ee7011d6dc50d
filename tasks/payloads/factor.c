/* Trial division kernel for borednet's factoring example.
 *
 * Usage: factor N LO HI
 * Prints every d in [LO, HI) with d >= 2 that divides N, one per line, in
 * ascending order. N must be below 2^63. Only 2 and odd candidates are tried,
 * which finds every prime factor in the range (an even d > 2 is never prime).
 */
#include <stdio.h>
#include <stdlib.h>

static int parse(const char *s, unsigned long long *out) {
    char *end;
    if (!s || !*s) return 0;
    *out = strtoull(s, &end, 10);
    return *end == '\0';
}

int main(int argc, char **argv) {
    unsigned long long n, lo, hi, d;
    if (argc != 4 || !parse(argv[1], &n) || !parse(argv[2], &lo) || !parse(argv[3], &hi)) {
        fprintf(stderr, "usage: factor N LO HI\n");
        return 2;
    }
    if (lo < 2) lo = 2;
    if (lo == 2 && hi > 2) {
        if (n % 2 == 0) printf("2\n");
        lo = 3;
    }
    if (lo % 2 == 0) lo++;
    for (d = lo; d < hi; d += 2) {
        if (n % d == 0) printf("%llu\n", d);
    }
    return 0;
}
