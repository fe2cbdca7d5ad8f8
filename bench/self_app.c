/* A program for the self component with a trivial checkpoint callback: it writes a
 * tiny state file into the snapshot being written and returns a restart command.
 * It then sleeps until killed; the library's listener thread serves the requests. */
#include <opal/runtime/opal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long checkpoints;
static char exe[PATH_MAX];

int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/app.state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return OPAL_ERROR;
    fprintf(f, "%ld\n", ++checkpoints);
    if (fclose(f) != 0)
        return OPAL_ERROR;
    char cmd[PATH_MAX + 8];
    snprintf(cmd, sizeof cmd, "'%s'", exe);
    *restart_cmd = strdup(cmd);
    return *restart_cmd != NULL ? OPAL_SUCCESS : OPAL_ERROR;
}

int opal_crs_self_user_continue(void) { return OPAL_SUCCESS; }
int opal_crs_self_user_restart(void) { return OPAL_SUCCESS; }

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    if (opal_init(&argc, &argv) != OPAL_SUCCESS) {
        fprintf(stderr, "opal_init failed\n");
        return 1;
    }
    printf("pid %d ready\n", (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}
