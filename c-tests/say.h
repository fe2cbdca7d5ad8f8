/* The test programs' log: one line per call to log_fd, written with a single write(2)
 * so that lines of concurrent threads (and of a restarted copy appending to the same
 * file) never interleave. Long lines are cut. Nothing is written while log_fd < 0. */
#ifndef OPALCRS_TEST_SAY_H
#define OPALCRS_TEST_SAY_H

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int log_fd = -1;

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (log_fd >= 0 && write(log_fd, line, (size_t)n) < 0)
        _exit(90);
}

#endif
