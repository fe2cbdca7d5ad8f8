/* A child subreaper (prctl PR_SET_CHILD_SUBREAPER, zdtm `child_subreaper`): orphans of
 * its descendants become its children, the library's detached criu helper included
 * unless the library sees to it.
 *   child_subreaper
 * Prints "ready" once it is a subreaper, then sleeps until killed. */
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(void)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("prctl");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
