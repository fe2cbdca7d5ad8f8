/* Prints the dump statistics CRIU leaves in an images directory (the `stats-dump`
 * image), without `crit`:
 *   criu_stats DIR
 * The image is IMG_SERVICE_MAGIC, STATS_MAGIC, then one entry: a 32-bit length and a
 * protobuf `stats_entry` whose field 1 is `dump_stats_entry` (criu images/stats.proto).
 * Output: one line of name=value pairs, times in microseconds as CRIU records them. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define IMG_SERVICE_MAGIC 0x55105940u
#define STATS_MAGIC 0x57093306u

static int varint(const unsigned char **p, const unsigned char *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: criu_stats IMAGES_DIR\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/stats-dump", argv[1]);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint32_t magic[3];
    if (n < sizeof magic) {
        fprintf(stderr, "%s: too short\n", path);
        return 1;
    }
    memcpy(magic, buf, sizeof magic);
    if (magic[0] != IMG_SERVICE_MAGIC || magic[1] != STATS_MAGIC || magic[2] > n - sizeof magic) {
        fprintf(stderr, "%s: not a CRIU stats image\n", path);
        return 1;
    }
    const unsigned char *p = buf + sizeof magic, *end = p + magic[2];
    static const char *names[] = {NULL, "freezing_time_us", "frozen_time_us", "memdump_time_us",
                                  "memwrite_time_us", "pages_scanned", "pages_skipped_parent",
                                  "pages_written"};
    int found = 0;
    while (p < end) {
        uint64_t key, len;
        if (varint(&p, end, &key) != 0)
            break;
        if ((key & 7) != 2) { /* stats_entry has only embedded messages */
            fprintf(stderr, "%s: unexpected field\n", path);
            return 1;
        }
        if (varint(&p, end, &len) != 0 || len > (uint64_t)(end - p))
            break;
        const unsigned char *sub = p, *subend = p + len;
        p = subend;
        if (key >> 3 != 1)
            continue; /* restore stats */
        while (sub < subend) {
            uint64_t k, v;
            if (varint(&sub, subend, &k) != 0 || (k & 7) != 0 || varint(&sub, subend, &v) != 0)
                break;
            if ((k >> 3) < sizeof names / sizeof *names && names[k >> 3] != NULL) {
                printf("%s%s=%llu", found ? " " : "", names[k >> 3], (unsigned long long)v);
                found = 1;
            }
        }
    }
    if (!found) {
        fprintf(stderr, "%s: no dump statistics\n", path);
        return 1;
    }
    printf("\n");
    return 0;
}
