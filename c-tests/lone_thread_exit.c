/* Forked children whose only thread ends alone, as CRIU's zdtm seccomp tests end
 * theirs: the raw exit system call (which ends a thread, not the process), the same
 * under SECCOMP_MODE_STRICT, and a seccomp filter that kills the calling thread
 * (SECCOMP_RET_KILL_THREAD). Without any other thread, each ends the process. And a
 * child that confines itself with a seccomp filter has no thread beside its own (CRIU
 * restores threads sharing a filter as one, which a later TSYNC call relies on). Prints
 * one line per child and exits 0 when every child ended as it would without the library. */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void kill_thread_on_getpriority(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD + BPF_W + BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP + BPF_JEQ + BPF_K, __NR_getpriority, 0, 1),
        BPF_STMT(BPF_RET + BPF_K, SECCOMP_RET_KILL_THREAD),
        BPF_STMT(BPF_RET + BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program))
        _exit(90);
    syscall(__NR_getpriority, 0, 0);
    _exit(91);
}

/* Exits 0 when this process has a single thread 0.5 s after installing an allow-all
 * filter. */
static void confine_and_count_threads(void)
{
    struct sock_filter filter[] = {BPF_STMT(BPF_RET + BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog program = {.len = 1, .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program))
        _exit(90);
    struct timespec wait = {0, 500 * 1000 * 1000};
    nanosleep(&wait, NULL);
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    int threads = 0;
    while (status && fgets(line, sizeof line, status))
        sscanf(line, "Threads: %d", &threads);
    _exit(threads == 1 ? 0 : 10 + threads);
}

/* 0: ended as expected; 1: ended otherwise; 2: still there after 3 s (killed). */
static int check(const char *what, pid_t pid, int expect_exit, int expect_signal)
{
    int status = 0;
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 300; i++) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            int ok = expect_signal ? WIFSIGNALED(status) && WTERMSIG(status) == expect_signal
                                   : WIFEXITED(status) && WEXITSTATUS(status) == expect_exit;
            printf("%s: %s (status %#x)\n", what, ok ? "ended" : "ended unexpectedly", status);
            return !ok;
        }
        nanosleep(&tick, NULL);
    }
    printf("%s: still running after 3 s\n", what);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 2;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int failed = 0;

    pid_t pid = fork();
    if (pid == 0)
        syscall(__NR_exit, 7);
    failed |= check("raw exit", pid, 7, 0);

    pid = fork();
    if (pid == 0) {
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0)
            _exit(90);
        syscall(__NR_exit, 8);
    }
    failed |= check("strict mode, raw exit", pid, 8, 0);

    pid = fork();
    if (pid == 0)
        kill_thread_on_getpriority();
    failed |= check("filter killing the thread", pid, 0, SIGSYS);

    pid = fork();
    if (pid == 0)
        confine_and_count_threads();
    failed |= check("confined, one thread", pid, 0, 0);

    return failed;
}
