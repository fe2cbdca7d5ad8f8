/* The same computation as sum.c, written for the self component: the self example of
 * examples/slurm/. The checkpoint callback saves (step, value) into the snapshot being
 * written and names the command that restarts the program; the restart callback,
 * which runs inside opal_init() of the restarted program, loads them back.
 *   sum_self STEPS STEP_MS RESULT
 * Build: cc -O2 -o sum_self sum_self.c $(pkg-config --cflags --libs opalcrs) */
#include <opal/runtime/opal.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t fold(uint64_t value, long step)
{
    return value * 6364136223846793005ull + (uint64_t)step * 1442695040888963407ull + 1;
}

/* The state. The checkpoint callback runs on the library's thread while main() goes
 * on, so both take the lock: a snapshot never holds a step without its value. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long done_steps;
static uint64_t value;
static char restart_cmd_line[3 * PATH_MAX];

/* Appends a word, quoted for the shell-word splitting opal-restart does. */
static void append_word(const char *word)
{
    size_t used = strlen(restart_cmd_line);
    char *out = restart_cmd_line + used, *end = restart_cmd_line + sizeof restart_cmd_line - 6;
    if (used > 0)
        *out++ = ' ';
    *out++ = '\'';
    for (; *word && out < end; word++) {
        if (*word == '\'') { memcpy(out, "'\\''", 4); out += 4; }
        else *out++ = *word;
    }
    *out++ = '\'';
    *out = '\0';
}

static int state_file(char *path, size_t size)
{
    return snprintf(path, size, "%s/sum.state", opalcrs_snapshot_dir()) < (int)size ? 0 : -1;
}

int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    char path[PATH_MAX];
    if (state_file(path, sizeof path) != 0)
        return OPAL_ERROR;
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return OPAL_ERROR;
    pthread_mutex_lock(&lock);
    long steps = done_steps;
    uint64_t saved = value;
    pthread_mutex_unlock(&lock);
    int bad = fprintf(f, "%ld %llu\n", steps, (unsigned long long)saved) < 0;
    if (fclose(f) != 0 || bad)
        return OPAL_ERROR;
    *restart_cmd = strdup(restart_cmd_line);
    printf("checkpoint after step %ld\n", steps);
    fflush(stdout);
    return *restart_cmd ? OPAL_SUCCESS : OPAL_ERROR;
}

int opal_crs_self_user_continue(void)
{
    return OPAL_SUCCESS;
}

int opal_crs_self_user_restart(void)
{
    char path[PATH_MAX];
    long steps;
    unsigned long long saved;
    if (state_file(path, sizeof path) != 0)
        return OPAL_ERROR;
    FILE *f = fopen(path, "r");
    int ok = f != NULL && fscanf(f, "%ld %llu", &steps, &saved) == 2;
    if (f != NULL)
        fclose(f);
    if (!ok)
        return OPAL_ERROR;
    pthread_mutex_lock(&lock);
    done_steps = steps;
    value = saved;
    pthread_mutex_unlock(&lock);
    printf("restarted after step %ld\n", steps);
    fflush(stdout);
    return OPAL_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sum_self STEPS STEP_MS RESULT\n");
        return 2;
    }
    long steps = atol(argv[1]);
    useconds_t pause = (useconds_t)atol(argv[2]) * 1000;
    /* The restart command: this executable with the same arguments. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    restart_cmd_line[0] = '\0';
    append_word(exe);
    for (int i = 1; i < argc; i++)
        append_word(argv[i]);
    /* A restarted program gets its state back in here. */
    if (opal_init(&argc, &argv) != OPAL_SUCCESS) {
        fprintf(stderr, "sum_self: opal_init failed\n");
        return 1;
    }
    for (;;) {
        pthread_mutex_lock(&lock);
        int finished = done_steps >= steps;
        if (!finished) {
            done_steps++;
            value = fold(value, done_steps);
            printf("step %ld pid %d\n", done_steps, (int)getpid());
            fflush(stdout);
        }
        pthread_mutex_unlock(&lock);
        if (finished)
            break;
        usleep(pause);
    }
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "steps %ld value %llu\n", steps, (unsigned long long)value) < 0 ||
        fclose(f) != 0 || rename(tmp, argv[3]) != 0) {
        perror(argv[3]);
        return 1;
    }
    printf("done: steps %ld value %llu\n", steps, (unsigned long long)value);
    opal_finalize();
    return 0;
}
