/* A test program with four worker threads that busily update shared counters under one
 * mutex while checkpoint requests arrive.
 *   soak_threads LOG
 * Each worker increments its own counter and the shared total under the mutex, checks
 * that the total equals the sum of the four counters, and every 200 increments appends
 * "t<i> <count> <pid> <ok|bad>" to LOG (O_APPEND). The main thread logs "init" once
 * opal_init returns.
 * Built normally it exports the self callbacks: the checkpoint callback takes the
 * mutex and saves all counters to <snapshot dir>/state; the restart callback (called
 * during opal_init of the restarted program) loads them and logs "restored ...".
 * Built with -DSOAK_NO_SELF it exports none (a criu-only program). */
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "say.h"

#define WORKERS 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long counts[WORKERS];
static long total;
static char restart_cmd_line[8192];

#ifndef SOAK_NO_SELF
int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return OPAL_ERROR;
    pthread_mutex_lock(&lock);
    long saved[WORKERS], saved_total = total;
    memcpy(saved, counts, sizeof saved);
    pthread_mutex_unlock(&lock);
    fprintf(f, "%ld %ld %ld %ld %ld\n", saved[0], saved[1], saved[2], saved[3], saved_total);
    fclose(f);
    say("checkpoint %ld %ld %ld %ld %ld", saved[0], saved[1], saved[2], saved[3], saved_total);
    *restart_cmd = strdup(restart_cmd_line);
    return OPAL_SUCCESS;
}

int opal_crs_self_user_continue(void)
{
    say("continue");
    return OPAL_SUCCESS;
}

int opal_crs_self_user_restart(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return OPAL_ERROR;
    long loaded[WORKERS], loaded_total;
    int got = fscanf(f, "%ld %ld %ld %ld %ld", &loaded[0], &loaded[1], &loaded[2], &loaded[3], &loaded_total);
    fclose(f);
    if (got != WORKERS + 1)
        return OPAL_ERROR;
    pthread_mutex_lock(&lock);
    memcpy(counts, loaded, sizeof counts);
    total = loaded_total;
    pthread_mutex_unlock(&lock);
    say("restored %ld %ld %ld %ld %ld", loaded[0], loaded[1], loaded[2], loaded[3], loaded_total);
    return OPAL_SUCCESS;
}
#endif

static void *worker(void *arg)
{
    int me = (int)(long)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        long now = ++counts[me];
        total++;
        long sum = 0;
        for (int i = 0; i < WORKERS; i++)
            sum += counts[i];
        int ok = sum == total;
        pthread_mutex_unlock(&lock);
        if (now % 200 == 0)
            say("t%d %ld %d %s", me, now, (int)getpid(), ok ? "ok" : "bad");
        usleep(100);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log_fd < 0)
        return 3;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    snprintf(restart_cmd_line, sizeof restart_cmd_line, "'%s' '%s'", exe, argv[1]);
    int rc = opal_init(&argc, &argv);
    say("init rc=%d pid=%d", rc, (int)getpid());
    if (rc != OPAL_SUCCESS)
        return 4;
    pthread_t threads[WORKERS];
    for (long i = 0; i < WORKERS; i++)
        if (pthread_create(&threads[i], NULL, worker, (void *)i) != 0)
            return 5;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
