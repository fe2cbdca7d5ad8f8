/* Counts the SIGCHLD it gets, and reaps any child, as a program with children would.
 *   sigchld_count GO_FILE
 * Prints "ready", waits until GO_FILE exists (the test creates it after a checkpoint),
 * then prints "sigchld: N reaped: M". It has no children: both should stay 0. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t sigchlds, reaped;

static void on_child(int sig)
{
    (void)sig;
    sigchlds++;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        reaped++;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sigchld_count GO_FILE\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_child;
    sigaction(SIGCHLD, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    while (access(argv[1], F_OK) != 0)
        usleep(10000);
    printf("sigchld: %d reaped: %d\n", (int)sigchlds, (int)reaped);
    fflush(stdout);
    return 0;
}
