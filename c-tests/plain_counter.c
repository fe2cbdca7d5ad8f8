/* A plain program with no checkpoint callbacks: its state lives only in memory, so
 * only a whole-process checkpoint (criu) can save it. It holds MIB MiB of memory
 * filled from a seed and checks the fill on every step, and counts.
 *   plain_counter COUNT_FILE [MIB]
 * Each step writes "<count> <pid> <state>" to COUNT_FILE (O_APPEND), where state is
 * "ok" while the memory checks out. It registers an INC callback that notes the
 * phase it saw in PHASE_FILE=<COUNT_FILE>.phase. */
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char phase_file[4096];

static int on_inc(opal_cr_user_inc_callback_event_t event, opal_cr_user_inc_callback_state_t state)
{
    if (event == OPAL_CR_INC_POST_CRS_POST_MPI) {
        int fd = open(phase_file, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            const char *what = state == OPAL_CR_INC_STATE_RESTART ? "restart\n"
                             : state == OPAL_CR_INC_STATE_CONTINUE ? "continue\n" : "error\n";
            if (write(fd, what, strlen(what)) < 0)
                perror("write");
            close(fd);
        }
    }
    return OPAL_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: plain_counter COUNT_FILE [MIB]\n");
        return 2;
    }
    size_t words = (argc > 2 ? (size_t)atol(argv[2]) : 1) * (1u << 20) / sizeof(uint64_t);
    uint64_t *memory = malloc(words * sizeof *memory);
    if (memory == NULL)
        return 3;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memory[i] = x;
    }
    snprintf(phase_file, sizeof phase_file, "%s.phase", argv[1]);
    if (opal_init(&argc, &argv) != OPAL_SUCCESS)
        return 4;
    opal_cr_user_inc_register_callback(OPAL_CR_INC_POST_CRS_POST_MPI, on_inc, NULL);
    int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    for (long count = 1;; count++) {
        uint64_t y = 88172645463325252ull;
        int ok = 1;
        for (size_t i = 0; i < words; i++) {
            y ^= y << 13; y ^= y >> 7; y ^= y << 17;
            if (memory[i] != y) { ok = 0; break; }
        }
        char line[128];
        int n = snprintf(line, sizeof line, "%ld %d %s\n", count, (int)getpid(), ok ? "ok" : "corrupt");
        if (write(out, line, (size_t)n) < 0)
            return 5;
        usleep(100000);
    }
}
