/* A plain program (no self callbacks) that holds MIB MiB of incompressible memory:
 *   mem_hold MIB
 * It fills the memory with xorshift64 output, calls opal_init (run.sh starts it with
 * OMPI_MCA_crs=criu), prints "pid N ready", then sleeps until killed. The fill is
 * done before opal_init so that "ready" means the whole image is in place. */
#include <opal/runtime/opal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    size_t words = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *memory = mmap(NULL, words * sizeof *memory, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        perror("mmap");
        return 3;
    }
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memory[i] = x;
    }
    if (opal_init(&argc, &argv) != OPAL_SUCCESS) {
        fprintf(stderr, "opal_init failed\n");
        return 1;
    }
    printf("pid %d ready: %zu MiB filled\n", (int)getpid(), mib);
    fflush(stdout);
    for (;;)
        pause();
}
