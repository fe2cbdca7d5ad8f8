/* A child stopped before it ran anything of its own, as `pid = fork(); kill(pid,
 * SIGSTOP);` leaves it when the signal comes first (zdtm `stopped`): no fork handler
 * has run in it, so it still holds the library's control socket. The raw fork system
 * call skips the handlers every time, which makes that case certain.
 *   stopped_in_fork
 * Prints "ready <child pid>" once the child is stopped, then sleeps until killed. */
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
    pid_t child = (pid_t)syscall(SYS_fork);
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        for (;;)
            pause();
    }
    kill(child, SIGSTOP);
    int status;
    if (waitpid(child, &status, WUNTRACED) != child || !WIFSTOPPED(status)) {
        fprintf(stderr, "the child did not stop\n");
        return 1;
    }
    printf("ready %d\n", (int)child);
    fflush(stdout);
    for (;;)
        pause();
}
