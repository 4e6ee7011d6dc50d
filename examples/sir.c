/* Stochastic SIR epidemics, for examples/sweep.py.
 *
 * Usage: sir R0 VACCINATED POPULATION RUNS SEED
 * Simulates RUNS outbreaks (Gillespie's algorithm) in a population of POPULATION
 * people of whom a fraction VACCINATED is immune, started by one infected person;
 * infection rate R0 * S * I / N, recovery rate I (time is in mean infectious
 * periods). Prints one line: the mean attack rate (the fraction of the population
 * ever infected), the fraction of runs that were major outbreaks (infecting more
 * than 10% of the susceptibles) and the mean duration, each as %.17g.
 * The same arguments give the same bytes: the random numbers come from SEED alone.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t state;

static uint64_t next(void) { /* splitmix64 */
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform(void) { /* in (0, 1] */
    return ((next() >> 11) + 1) * 0x1.0p-53;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: sir R0 VACCINATED POPULATION RUNS SEED\n");
        return 2;
    }
    double r0 = strtod(argv[1], NULL), vaccinated = strtod(argv[2], NULL);
    long n = atol(argv[3]), runs = atol(argv[4]);
    state = strtoull(argv[5], NULL, 10);
    long immune = lround(vaccinated * n);
    if (n < 2 || runs < 1 || immune < 0 || immune > n - 1) return 2;
    double attack = 0, major = 0, duration = 0;
    for (long run = 0; run < runs; run++) {
        long s = n - immune - 1, i = 1, ever = 1;
        double t = 0;
        while (i > 0) {
            double infect = r0 * s * i / n, recover = i, total = infect + recover;
            t += -log(uniform()) / total;
            if (uniform() * total < infect) {
                s--, i++, ever++;
            } else {
                i--;
            }
        }
        attack += (double)ever / n;
        major += ever > 0.1 * (n - immune);
        duration += t;
    }
    printf("%.17g %.17g %.17g\n", attack / runs, major / runs, duration / runs);
    return 0;
}
