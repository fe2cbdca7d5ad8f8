/* An OpenMP program that knows nothing of checkpointing, for the real-program tests:
 * STEPS parallel reductions over N items, each seeded by the previous step's result.
 *   omp_checksum STEPS N [OUT]
 * Prints "step <i> <checksum> threads <t>" after each step and "result <checksum>" at
 * the end, to OUT (opened with fopen "w", like a program's own output file) or stdout.
 * Integer sums wrap and commute, so the output does not depend on how the threads are
 * scheduled: any run with the same arguments prints the same bytes. */
#include <inttypes.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A few rounds of splitmix64, to give each item some work. */
static uint64_t mix(uint64_t x)
{
    for (int round = 0; round < 8; round++) {
        x += 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        x ^= x >> 31;
    }
    return x;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s STEPS N [OUT]\n", argv[0]);
        return 2;
    }
    long steps = atol(argv[1]), n = atol(argv[2]);
    FILE *out = argc == 4 ? fopen(argv[3], "w") : stdout;
    if (!out) {
        perror(argv[3]);
        return 1;
    }
    uint64_t state = 0;
    for (long step = 0; step < steps; step++) {
        uint64_t sum = 0;
        int threads = 0;
#pragma omp parallel reduction(+ : sum)
        {
#pragma omp single
            threads = omp_get_num_threads();
#pragma omp for schedule(static)
            for (long i = 0; i < n; i++)
                sum += mix(state ^ (uint64_t)i);
        }
        state = mix(state + sum);
        fprintf(out, "step %ld %016" PRIx64 " threads %d\n", step, state, threads);
        fflush(out);
    }
    fprintf(out, "result %016" PRIx64 "\n", state);
    return fclose(out) == 0 ? 0 : 1;
}
