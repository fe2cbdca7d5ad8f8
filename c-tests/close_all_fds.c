/* A program that closes every descriptor but 0-2 once it runs (as some daemons and
 * careful programs do), then opens a data file of its own at numbers the library's
 * descriptors had (1000-1015, where the library keeps them), and waits.
 * Usage: close_all_fds LOG DATA. Logs "ready" once the data file is in place. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>

#include "say.h"

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    close_range(3, ~0U, 0);
    log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    int data = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log_fd < 0 || data < 0)
        return 3;
    for (int n = 1000; n < 1016; n++)
        if (dup2(data, n) < 0)
            return 4;
    say("ready");
    for (;;)
        pause();
}
