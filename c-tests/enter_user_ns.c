/* Enters user namespaces the way sandboxes and `unshare --user` do, which the kernel
 * allows only to a single-threaded process: first a forked child (then ended), then
 * the program itself, which then waits for its uid map and runs on.
 * Usage: enter_user_ns LOG. Logs "child <status>", "unshared <0 or errno>",
 * "mapped <uid>", each as it happens. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "say.h"

static int enter(void)
{
    return unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    pid_t child = fork();
    if (child == 0)
        _exit(enter());
    int status = 0;
    waitpid(child, &status, 0);
    say("child %d", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    say("unshared %d", enter());
    /* The test writes the namespace's maps; until then getuid() is the overflow uid. */
    while (getuid() != 0)
        usleep(10000);
    say("mapped %d", (int)getuid());
    for (;;)
        pause();
}
