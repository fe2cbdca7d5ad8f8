/* What a program sees of descriptor numbers with the library preloaded.
 *   fd_numbers GO_FILE
 * Waits until GO_FILE exists (the test creates it once the library's control socket
 * answers), then prints the descriptors below 1000 other than its directory stream's
 * ("low: 0 1 2"), the number open() returns ("open: N"), and whether dup2 onto 12
 * and 13 gives back those numbers and leaves the library working ("dup2: ok"). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fd_numbers GO_FILE\n");
        return 2;
    }
    while (access(argv[1], F_OK) != 0)
        usleep(10000);
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) {
        perror("opendir");
        return 1;
    }
    printf("low:");
    for (struct dirent *entry; (entry = readdir(dir));) {
        int fd = atoi(entry->d_name);
        if (entry->d_name[0] != '.' && fd != dirfd(dir) && fd < 1000)
            printf(" %d", fd);
    }
    printf("\n");
    closedir(dir);
    int opened = open("/dev/null", O_RDONLY);
    printf("open: %d\n", opened);
    int ok = dup2(opened, 12) == 12 && dup2(opened, 13) == 13;
    printf("dup2: %s\n", ok ? "ok" : "failed");
    fflush(stdout);
    /* Stays alive so that the test can check that the library still answers. */
    pause();
    return 0;
}
