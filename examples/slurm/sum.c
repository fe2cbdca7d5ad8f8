/* A long computation with no checkpoint code at all: the criu example of
 * examples/slurm/. It runs STEPS steps of STEP_MS milliseconds each, folding the step
 * number into a 64-bit value, and writes "steps <STEPS> value <value>" to RESULT when
 * done. Every step prints "step <n> pid <pid>" on stdout, so a job's output shows
 * where each run started and stopped.
 *   sum STEPS STEP_MS RESULT
 * Its whole state is in memory: started with the library preloaded
 * (LD_PRELOAD=libopalcrs.so), it is checkpointed by CRIU, and a restored copy simply
 * goes on with the next step. Build: cc -O2 -o sum sum.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* One step of the computation: any step lost or done twice changes the result. */
static uint64_t fold(uint64_t value, long step)
{
    return value * 6364136223846793005ull + (uint64_t)step * 1442695040888963407ull + 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sum STEPS STEP_MS RESULT\n");
        return 2;
    }
    long steps = atol(argv[1]);
    useconds_t pause = (useconds_t)atol(argv[2]) * 1000;
    uint64_t value = 0;
    for (long step = 1; step <= steps; step++) {
        value = fold(value, step);
        printf("step %ld pid %d\n", step, (int)getpid());
        fflush(stdout);
        usleep(pause);
    }
    /* Write the result under a temporary name, then rename: never half a result. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "steps %ld value %llu\n", steps, (unsigned long long)value) < 0 ||
        fclose(f) != 0 || rename(tmp, argv[3]) != 0) {
        perror(argv[3]);
        return 1;
    }
    printf("done: steps %ld value %llu\n", steps, (unsigned long long)value);
    return 0;
}
