#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* argv: STEPS EVERY [close|rename] [PAD]: STEPS steps of a chain, its state saved every
   EVERY steps (by a rename, or with "close" by writing state itself), PAD bytes of
   padding after it (a big state); resumes from a saved state. */
int main(int argc, char **argv) {
    long steps = atol(argv[1]), every = atol(argv[2]);
    int by_close = argc > 3 && !strcmp(argv[3], "close");
    long pad = argc > 4 ? atol(argv[4]) : 0;
    int64_t i = 0;
    uint64_t x = 88172645463325252ULL;
    FILE *f = fopen("/checkpoint/state", "rb");
    if (f) {
        if (fread(&i, sizeof i, 1, f) != 1 || fread(&x, sizeof x, 1, f) != 1) return 3;
        fclose(f);
        fprintf(stderr, "resumed at %lld\n", (long long)i);
    }
    for (; i < steps; i++) {
        if (i && i % every == 0) {
            const char *path = by_close ? "/checkpoint/state" : "/checkpoint/state.tmp";
            FILE *t = fopen(path, "wb");
            if (t) {
                fwrite(&i, sizeof i, 1, t);
                fwrite(&x, sizeof x, 1, t);
                for (long k = 0; k < pad; k++) fputc((int)((i + k) & 0xff), t);
                fclose(t);
                if (!by_close && rename("/checkpoint/state.tmp", "/checkpoint/state")) return 4;
            }
        }
        for (int k = 0; k < 2000; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    printf("%llu\n", (unsigned long long)x);
    return 0;
}
