/* Count the primes in [LO, HI) with a sieve of Eratosthenes, for examples/primes.py.
 *
 * Usage: sieve LO HI
 * Prints the count. Needs about (HI - LO) / 2 bytes of memory, one byte per odd
 * number in the range, plus sqrt(HI) / 2 for the primes that sieve it: the memory
 * limit of the task says how much, and only jobbers that offer it get the jobs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *s, unsigned long long *out) {
    char *end;
    *out = strtoull(s, &end, 10);
    return *s && !*end;
}

int main(int argc, char **argv) {
    unsigned long long lo, hi;
    if (argc != 3 || !parse(argv[1], &lo) || !parse(argv[2], &hi) || hi > 1ULL << 50) {
        fprintf(stderr, "usage: sieve LO HI (HI at most 2^50)\n");
        return 2;
    }
    unsigned long long count = lo <= 2 && hi > 2; /* the one even prime */
    if (lo < 3) lo = 3;
    if (hi <= lo) {
        printf("%llu\n", count);
        return 0;
    }
    unsigned long long root = 1;
    while (root * root < hi) root++;
    /* small[k]: 2k + 1 is composite, for the odd numbers up to root */
    size_t n_small = root / 2 + 1, n_odd = (hi - (lo | 1) + 1) / 2;
    unsigned char *small = calloc(n_small, 1), *odd = calloc(n_odd, 1);
    if (!small || !odd) {
        fprintf(stderr, "out of memory\n");
        return 3;
    }
    unsigned long long first = lo | 1; /* odd[k]: first + 2k is composite */
    for (unsigned long long p = 3; p * p < hi; p += 2) {
        if (small[p / 2]) continue;
        for (unsigned long long m = p * p; m <= root; m += 2 * p) small[m / 2] = 1;
        unsigned long long m = p * p;
        if (m < first) m = first + (p - (first % p)) % p; /* the first multiple >= first */
        if (m % 2 == 0) m += p;                           /* ...that is odd */
        for (; m < hi; m += 2 * p) odd[(m - first) / 2] = 1;
    }
    for (unsigned long long x = first; x < hi; x += 2) count += !odd[(x - first) / 2];
    printf("%llu\n", count);
    return 0;
}
