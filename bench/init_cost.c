/* Cost of one opal_init + opal_finalize pair, measured in-process.
 *   init_cost [N]     (default N = 1000)
 * Built twice by run.sh: with -DSELF_CALLBACKS the program exports the self
 * component's callbacks (so `self` is selected); without, `criu` or `none` is selected
 * depending on OMPI_MCA_crs and on whether a CRIU binary is found.
 * Prints the first pair on its own (it includes one-time work, e.g. finding and
 * probing the CRIU binary, which the library caches for the life of the process), then
 * the median, p90, min and max of pairs 2..N in microseconds, then the component
 * that `opal-checkpoint --status` reports (if OPAL_CHECKPOINT names the tool). */
#include <opal/runtime/opal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef SELF_CALLBACKS
int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    *restart_cmd = strdup("true");
    return OPAL_SUCCESS;
}
int opal_crs_self_user_continue(void) { return OPAL_SUCCESS; }
int opal_crs_self_user_restart(void) { return OPAL_SUCCESS; }
#endif

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    if (n < 2)
        n = 2;
    double *t = malloc(sizeof *t * (size_t)n);
    if (t == NULL)
        return 3;
    for (int i = 0; i < n; i++) {
        double start = now_us();
        if (opal_init(NULL, NULL) != OPAL_SUCCESS) {
            fprintf(stderr, "opal_init failed at iteration %d\n", i);
            return 1;
        }
        if (opal_finalize() != OPAL_SUCCESS) {
            fprintf(stderr, "opal_finalize failed at iteration %d\n", i);
            return 1;
        }
        t[i] = now_us() - start;
    }
    /* Which component was selected: ask the tool while initialised (the listener
     * thread answers it); after the timed loop, so the first pair stays first. */
    const char *tool = getenv("OPAL_CHECKPOINT");
    if (tool != NULL) {
        if (opal_init(NULL, NULL) != OPAL_SUCCESS) {
            fprintf(stderr, "opal_init failed\n");
            return 1;
        }
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "'%s' --status %d 2>&1", tool, (int)getpid());
        FILE *p = popen(cmd, "r");
        char line[512];
        while (p != NULL && fgets(line, sizeof line, p) != NULL)
            printf("status: %s", line);
        if (p != NULL)
            pclose(p);
        opal_finalize();
    }
    double first = t[0];
    qsort(t + 1, (size_t)n - 1, sizeof *t, cmp);
    int m = n - 1;
    printf("pairs=%d first_us=%.1f median_us=%.1f p90_us=%.1f min_us=%.1f max_us=%.1f\n", n, first,
           t[1 + m / 2], t[1 + (m * 9) / 10], t[1], t[n - 1]);
    free(t);
    return 0;
}
