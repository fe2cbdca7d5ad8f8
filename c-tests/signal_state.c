/* Process state a restore must give back exactly: a child stopped with SIGSTOP, a
 * blocked signal pending (SIGUSR1), one waiting on a signalfd (SIGUSR2), a signal sent
 * to the whole process (SIGRTMIN) that the program blocks and no other thread may take,
 * an interval timer (SIGALRM every 10 ms), and no SIGCONT ever seen by its handler.
 *   signal_state GO_FILE
 * Prints "ready <child pid>" once set up, then waits until GO_FILE exists (the test
 * creates it after the checkpoint and restore), checks, prints one line per item and
 * "verdict: ok" or "verdict: changed", and exits 0 or 1. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks, conts, rtmins;

static void on_alarm(int sig) { (void)sig; ticks++; }
static void on_cont(int sig) { (void)sig; conts++; }
static void on_rtmin(int sig) { (void)sig; rtmins++; }

static char state_of(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    char state = '?';
    if (fgets(line, sizeof line, f)) {
        char *end = strrchr(line, ')');
        if (end && end[1] == ' ')
            state = end[2];
    }
    fclose(f);
    return state;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: signal_state GO_FILE\n");
        return 2;
    }
    /* The child is stopped only once it runs its own code: stopped inside fork() it
     * would still hold what fork handlers close (the library's control socket). */
    int started[2];
    if (pipe(started) != 0) {
        perror("pipe");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        close(started[0]);
        if (write(started[1], "", 1) != 1)
            _exit(1);
        close(started[1]);
        for (;;)
            pause();
    }
    close(started[1]);
    char byte;
    if (read(started[0], &byte, 1) != 1)
        return 1;
    close(started[0]);
    kill(child, SIGSTOP);
    int status;
    waitpid(child, &status, WUNTRACED);

    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGUSR2);
    sigaddset(&blocked, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    int sfd = signalfd(-1, &usr2, SFD_NONBLOCK | SFD_CLOEXEC);
    raise(SIGUSR1);
    raise(SIGUSR2);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_rtmin;
    sigaction(SIGRTMIN, &sa, NULL);
    kill(getpid(), SIGRTMIN);
    sa.sa_handler = on_cont;
    sigaction(SIGCONT, &sa, NULL);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = { { 0, 10000 }, { 0, 10000 } };
    setitimer(ITIMER_REAL, &every, NULL);

    printf("ready %d\n", (int)child);
    fflush(stdout);
    while (access(argv[1], F_OK) != 0)
        usleep(10000);

    int ok = 1;
    char child_state = state_of(child);
    printf("child: %c\n", child_state);
    ok &= child_state == 'T';
    sigset_t pending;
    sigpending(&pending);
    printf("pending SIGUSR1: %d\n", sigismember(&pending, SIGUSR1));
    ok &= sigismember(&pending, SIGUSR1) == 1;
    printf("pending SIGRTMIN: %d, handled: %d\n", sigismember(&pending, SIGRTMIN), (int)rtmins);
    ok &= sigismember(&pending, SIGRTMIN) == 1 && rtmins == 0;
    printf("pending SIGCONT: %d\n", sigismember(&pending, SIGCONT));
    ok &= sigismember(&pending, SIGCONT) == 0;
    struct signalfd_siginfo info;
    ssize_t got = read(sfd, &info, sizeof info);
    printf("signalfd: %d\n", got == (ssize_t)sizeof info ? (int)info.ssi_signo : -1);
    ok &= got == (ssize_t)sizeof info && info.ssi_signo == SIGUSR2;
    int before = ticks;
    /* Each tick ends a sleep early (EINTR): sleep until 200 ms have passed. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        usleep(10000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < 200);
    printf("timer ticks in 200 ms: %d\n", ticks - before);
    ok &= ticks - before >= 3;
    printf("SIGCONT seen: %d\n", (int)conts);
    ok &= conts == 0;
    printf("verdict: %s\n", ok ? "ok" : "changed");
    fflush(stdout);
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    return ok ? 0 : 1;
}
