/* A signal sent to the whole process right after opal_init, which the program blocks in
 * every thread of its own, stays pending until the program unblocks it: no thread of the
 * library takes it, also one just created and not yet run (zdtm sigpending: the listener
 * thread kept the program's open mask until it first ran). The process runs SCHED_FIFO
 * on one CPU, so the library's new thread runs only once the main thread sleeps.
 * Exits 0 when the main thread took the signal after unblocking it, 1 when another thread
 * took it, 2 when it could not set up (not root). */
#define _GNU_SOURCE
#include <opal_crs.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t taken_by;

static void on_usr2(int sig)
{
    (void)sig;
    taken_by = (pid_t)syscall(SYS_gettid);
}

int main(void)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    struct sched_param fifo = {.sched_priority = 1};
    if (sched_setaffinity(0, sizeof one, &one) || sched_setscheduler(0, SCHED_FIFO, &fifo)) {
        perror("SCHED_FIFO on one CPU");
        return 2;
    }
    signal(SIGUSR2, on_usr2);
    if (opal_init(NULL, NULL) != 0) {
        fprintf(stderr, "opal_init failed\n");
        return 2;
    }
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    kill(getpid(), SIGUSR2);
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
    pid_t before_unblocking = taken_by;
    sigprocmask(SIG_UNBLOCK, &usr2, NULL);
    pid_t me = (pid_t)syscall(SYS_gettid);
    printf("taken before unblocking by %d, finally by %d, main thread %d\n", before_unblocking,
           taken_by, me);
    opal_finalize();
    return before_unblocking == 0 && taken_by == me ? 0 : 1;
}
