/* A plain program without checkpoint callbacks that counts both into a file and on its
 * standard output, so that a test can give it a stdout that grows after a dump:
 *   criu_stdout_counter COUNT_FILE
 * Each step appends "<count> <pid> ok" to COUNT_FILE (O_APPEND, plain_counter's
 * format) and prints "stdout <count>" on stdout (flushed at once). */
#include <opal/runtime/opal.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: criu_stdout_counter COUNT_FILE\n");
        return 2;
    }
    const char *count_file = argv[1];
    if (opal_init(&argc, &argv) != OPAL_SUCCESS)
        return 4;
    int out = open(count_file, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) {
        perror(count_file);
        return 3;
    }
    for (long count = 1;; count++) {
        char line[128];
        int n = snprintf(line, sizeof line, "%ld %d ok\n", count, (int)getpid());
        if (write(out, line, (size_t)n) < 0)
            return 5;
        printf("stdout %ld\n", count);
        fflush(stdout);
        usleep(100000);
    }
}
