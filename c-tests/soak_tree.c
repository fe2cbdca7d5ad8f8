/* A plain program (no checkpoint callbacks) that forks a child after opal_init; both
 * count, each into its own file.
 *   soak_tree PARENT_FILE CHILD_FILE [--fork-first]
 * Each step appends "<count> <pid>" to the process's file (O_APPEND) every 100 ms.
 * With --fork-first the child is forked before opal_init (it never uses libopalcrs). */
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void count_into(const char *file)
{
    int out = open(file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0)
        _exit(6);
    for (long count = 1;; count++) {
        char line[64];
        int n = snprintf(line, sizeof line, "%ld %d\n", count, (int)getpid());
        if (write(out, line, (size_t)n) < 0)
            _exit(7);
        usleep(100000);
    }
}

static void start_child(const char *file)
{
    pid_t child = fork();
    if (child < 0)
        _exit(8);
    if (child == 0)
        count_into(file);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: soak_tree PARENT_FILE CHILD_FILE [--fork-first]\n");
        return 2;
    }
    int fork_first = argc > 3 && !strcmp(argv[3], "--fork-first");
    const char *parent_file = argv[1], *child_file = argv[2];
    if (fork_first)
        start_child(child_file);
    if (opal_init(&argc, &argv) != OPAL_SUCCESS)
        return 4;
    if (!fork_first)
        start_child(child_file);
    count_into(parent_file);
    return 0;
}
