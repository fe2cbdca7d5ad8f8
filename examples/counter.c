/* A sequential program written for OPAL CRS's self component: it counts, and saves
 * its counter when checkpointed. Restarted, it continues from the saved value.
 *   counter [LIMIT]   counts to LIMIT (default 100), one step every 100 ms */
#include <opal/runtime/opal.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long counter;
static long limit = 100;
static char exe[PATH_MAX];

/* Called on a checkpoint (by the library's thread): save the state next to the
 * snapshot and say how to restart. */
int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/counter.state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return OPAL_ERROR;
    fprintf(f, "%ld\n", atomic_load(&counter));
    fclose(f);
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "'%s' %ld", exe, limit);
    *restart_cmd = strdup(cmd);
    printf("checkpoint at %ld\n", atomic_load(&counter));
    fflush(stdout);
    return OPAL_SUCCESS;
}

int opal_crs_self_user_continue(void)
{
    return OPAL_SUCCESS;
}

/* Called inside opal_init of the restarted program. */
int opal_crs_self_user_restart(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/counter.state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "r");
    long saved = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld", &saved) != 1)
            saved = 0;
        fclose(f);
    }
    atomic_store(&counter, saved);
    printf("restarted at %ld\n", saved);
    fflush(stdout);
    return OPAL_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        limit = atol(argv[1]);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    if (opal_init(&argc, &argv) != OPAL_SUCCESS) {
        fprintf(stderr, "opal_init failed\n");
        return 1;
    }
    printf("pid %d counting to %ld\n", (int)getpid(), limit);
    fflush(stdout);
    while (atomic_load(&counter) < limit) {
        long now = atomic_fetch_add(&counter, 1) + 1;
        printf("count %ld\n", now);
        fflush(stdout);
        usleep(100000);
    }
    printf("done at %ld\n", atomic_load(&counter));
    opal_finalize();
    return 0;
}
