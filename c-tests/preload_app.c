/* A program that knows nothing of libopalcrs (not linked with it, no OPAL headers):
 * checkpointed through LD_PRELOAD. Built with -rdynamic so the self callbacks below
 * are exported; built with -DNO_CALLBACKS it has none (criu territory).
 *   preload_app LOG STATE [--children PIDFILE | --limit N [--daemon once|twice]]
 * counts every 50 ms into LOG and sums the counts; the checkpoint callback saves count
 * and sum in STATE; with --children it forks a child that only sleeps and a child that
 * execs `sleep 60`, and writes "<forked> <execed>" to PIDFILE; with --limit it logs
 * "done count=N sum=S" after count N and exits 0; with --daemon it first becomes a
 * daemon: forks and lets its parent exit (twice: the child calls setsid and forks
 * again), then counts on in the last child. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "say.h"

static volatile long counter, sum;
/* The checkpoint callback runs on the library's thread: count and sum change together. */
static pthread_mutex_t step = PTHREAD_MUTEX_INITIALIZER;
static const char *state_path;
static char restart_line[8192];
static int constructor_ran;

__attribute__((constructor)) static void own_constructor(void) { constructor_ran = 1; }

#ifndef NO_CALLBACKS
/* The restart callback runs before main, so it finds LOG and STATE itself. */
static void open_from_cmdline(void)
{
    static char args[8192];
    int fd = open("/proc/self/cmdline", O_RDONLY);
    ssize_t len = fd >= 0 ? read(fd, args, sizeof args - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (len <= 0)
        return;
    args[len] = '\0';
    const char *log = args + strlen(args) + 1;
    if (log >= args + len)
        return;
    const char *state = log + strlen(log) + 1;
    if (log_fd < 0)
        log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (state_path == NULL && state < args + len)
        state_path = state;
}

int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    FILE *f = fopen(state_path, "w");
    if (f == NULL)
        return -1;
    pthread_mutex_lock(&step);
    fprintf(f, "%ld\n%ld\n", counter, sum);
    fclose(f);
    say("checkpoint value=%ld", counter);
    pthread_mutex_unlock(&step);
    *restart_cmd = strdup(restart_line);
    return 0;
}

int opal_crs_self_user_continue(void) { return 0; }

/* Runs in the preloaded library's constructor: before main and before this
 * program's own constructors. */
int opal_crs_self_user_restart(void)
{
    open_from_cmdline();
    FILE *f = fopen(state_path, "r");
    long value = -1, saved_sum = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &value, &saved_sum) != 2)
            value = saved_sum = -1;
        fclose(f);
    }
    counter = value;
    sum = saved_sum;
    say("restart value=%ld own_constructor_ran=%d", value, constructor_ran);
    return 0;
}
#endif

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    if (log_fd < 0)
        log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (state_path == NULL)
        state_path = argv[2];
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    size_t used = (size_t)snprintf(restart_line, sizeof restart_line, "'%s'", exe);
    for (int i = 1; i < argc; i++)
        used += (size_t)snprintf(restart_line + used, sizeof restart_line - used, " '%s'", argv[i]);
    say("main counter=%ld", counter);
    if (argc > 4 && strcmp(argv[3], "--children") == 0) {
        pid_t forked = fork();
        if (forked == 0) {
            for (;;)
                pause();
        }
        pid_t execed = fork();
        if (execed == 0) {
            execlp("sleep", "sleep", "60", (char *)NULL);
            _exit(127);
        }
        FILE *f = fopen(argv[4], "w");
        fprintf(f, "%d %d\n", (int)forked, (int)execed);
        fclose(f);
    }
    long limit = argc > 4 && strcmp(argv[3], "--limit") == 0 ? atol(argv[4]) : -1;
    if (argc > 6 && strcmp(argv[5], "--daemon") == 0) {
        if (fork() != 0)
            exit(0);
        if (strcmp(argv[6], "twice") == 0) {
            setsid();
            if (fork() != 0)
                _exit(0);
        }
    }
    say("main pid=%d", (int)getpid());
    for (;;) {
        if (limit >= 0 && counter >= limit) {
            say("done count=%ld sum=%ld", counter, sum);
            return 0;
        }
        pthread_mutex_lock(&step);
        counter++;
        sum += counter;
        say("count %ld", counter);
        pthread_mutex_unlock(&step);
        usleep(50000);
    }
}
