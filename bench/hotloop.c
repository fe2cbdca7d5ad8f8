/* The hot path a preloaded library must not slow down: malloc/free and open/close in
 * a loop. Prints the nanoseconds per iteration.
 *   hotloop ITERATIONS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *p = malloc((size_t)(16 + (i & 255)));
        *(volatile char *)p = 1;
        free(p);
        int fd = open("/dev/null", O_RDONLY);
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n;
    printf("%.1f\n", ns);
    return 0;
}
