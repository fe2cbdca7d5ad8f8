/* A program without self callbacks that checkpoints itself with opalcrs_checkpoint()
 * (criu): the call returns OPAL_CRS_CONTINUE in the original and OPAL_CRS_RESTART in
 * the restored image. Each outcome is appended to LOG; then it counts.
 *   criu_api LOG */
#include <opal/runtime/opal.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log < 0 || opal_init(&argc, &argv) != OPAL_SUCCESS)
        return 3;
    int state = -1;
    int rc = opalcrs_checkpoint(&state);
    char line[128];
    int n = snprintf(line, sizeof line, "rc=%d state=%d pid=%d dir=%s\n", rc, state, (int)getpid(), opalcrs_snapshot_dir());
    if (write(log, line, (size_t)n) < 0)
        return 4;
    for (long count = 1;; count++) {
        n = snprintf(line, sizeof line, "count %ld\n", count);
        if (write(log, line, (size_t)n) < 0)
            return 5;
        usleep(50000);
    }
}
