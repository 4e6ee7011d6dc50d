/* One job of examples/mcmc.py: a Metropolis chain on Haario's banana-shaped density,
   log p(x, y) = -x^2/200 - (y + 0.1 x^2 - 10)^2 / 2, that saves its state as it goes.

   argv: SEED STEPS SAVE_EVERY [STEP_SIZE]
   /checkpoint/state: the state it resumes from, if any (written every SAVE_EVERY steps
   to state.tmp and renamed onto state: the sandbox keeps the latest, and a jobber sends
   it to the dealer, so a chain whose machine goes away goes on elsewhere).

   Prints, with every digit (%.17g), the chain's means of x and y, their variances, the
   acceptance rate and the steps run. Everything that decides them is in the state (the
   position, its log density, the sums, the generator's four words), so a chain resumed
   from a state prints what it prints run straight through. A state that is not one of
   ours (wrong size, wrong magic, a step count out of range, numbers that are not
   finite) is ignored: the chain starts over. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAGIC 0x6d636d6373746174ULL /* "mcmcstat" */

typedef struct {
    uint64_t magic;
    int64_t i, accepted;
    double x, y, lp, sx, sy, sxx, syy;
    uint64_t s[4];
} State;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next(uint64_t *s) { /* xoshiro256** */
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}

static double uniform(uint64_t *s) { return (double)(next(s) >> 11) * 0x1.0p-53; }

static double gauss(uint64_t *s) { /* Box-Muller, one of the pair */
    double u = uniform(s), v = uniform(s);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

static double logp(double x, double y) {
    double b = y + 0.1 * x * x - 10.0;
    return -x * x / 200.0 - 0.5 * b * b;
}

static int usable(const State *st, int64_t steps) {
    return st->magic == MAGIC && st->i >= 0 && st->i <= steps && st->accepted >= 0 &&
           st->accepted <= st->i && isfinite(st->x) && isfinite(st->y) && isfinite(st->lp) &&
           isfinite(st->sx) && isfinite(st->sy) && isfinite(st->sxx) && isfinite(st->syy);
}

static void save(const State *st) {
    FILE *f = fopen("/checkpoint/state.tmp", "wb");
    if (!f) return; /* no checkpoint directory (an older jobber): run straight through */
    size_t n = fwrite(st, sizeof *st, 1, f);
    if (fclose(f) == 0 && n == 1) rename("/checkpoint/state.tmp", "/checkpoint/state");
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: mcmc SEED STEPS SAVE_EVERY [STEP_SIZE]\n");
        return 2;
    }
    uint64_t seed = strtoull(argv[1], 0, 10);
    int64_t steps = atoll(argv[2]), every = atoll(argv[3]);
    double h = argc > 4 ? atof(argv[4]) : 2.0;
    State st = {MAGIC, 0, 0, 0.0, 5.0, 0, 0, 0, 0, 0, {0, 0, 0, 0}};
    FILE *f = fopen("/checkpoint/state", "rb");
    State saved;
    if (f && fread(&saved, sizeof saved, 1, f) == 1 && usable(&saved, steps)) {
        st = saved;
        fprintf(stderr, "resumed at step %lld\n", (long long)st.i);
    } else {
        uint64_t z = seed; /* splitmix64 seeds the four words */
        for (int k = 0; k < 4; k++) {
            z += 0x9e3779b97f4a7c15ULL;
            uint64_t w = z;
            w = (w ^ (w >> 30)) * 0xbf58476d1ce4e5b9ULL;
            w = (w ^ (w >> 27)) * 0x94d049bb133111ebULL;
            st.s[k] = w ^ (w >> 31);
        }
        st.lp = logp(st.x, st.y);
    }
    if (f) fclose(f);
    for (; st.i < steps; st.i++) {
        if (every > 0 && st.i > 0 && st.i % every == 0) save(&st);
        double nx = st.x + h * gauss(st.s), ny = st.y + h * gauss(st.s);
        double nlp = logp(nx, ny);
        if (log(1.0 - uniform(st.s)) < nlp - st.lp) {
            st.x = nx, st.y = ny, st.lp = nlp;
            st.accepted++;
        }
        st.sx += st.x, st.sy += st.y, st.sxx += st.x * st.x, st.syy += st.y * st.y;
    }
    double n = (double)(steps > 0 ? steps : 1), mx = st.sx / n, my = st.sy / n;
    printf("%.17g %.17g %.17g %.17g %.17g %lld\n", mx, my, st.sxx / n - mx * mx,
           st.syy / n - my * my, (double)st.accepted / n, (long long)steps);
    return 0;
}
