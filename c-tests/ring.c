/* A parallel test job: the ranks of `opal-run -np N ring DIR ROUNDS` pass a token
 * around a ring of Unix stream sockets (rank r listens on DIR/ring.r.sock and sends to
 * rank r+1) for ROUNDS rounds; each rank folds every token it sees into its checksum,
 * and at the end writes "rank R rounds K checksum C" to DIR/ring.R.result.
 *
 * Self checkpoints at a quiescent point: the checkpoint callback (on the library's
 * thread) asks the main thread to park the ring and waits until it is parked. Rank 0
 * parks at a round's end, when it holds the token, and sends PARK around the ring;
 * each rank parks once it has passed PARK on. With nothing in flight, every rank saves
 * (rounds, checksum, token) to the snapshot; the continue callback (or a failed
 * checkpoint, or RING_PARK_LIMIT seconds) lets the ring go on. A restart loads the
 * state and builds the ring anew.
 *   RING_FAIL_RANK=R  rank R's checkpoint callback fails (after the ring is parked).
 *   RING_DELAY_US=N   rank 0 pauses N microseconds per round (default 2000).
 *   RING_STATE_BYTES=N  the state file also holds N bytes of padding (for figures).
 *   RING_TCP_PORT=P   the ring is loopback TCP instead: rank r listens on 127.0.0.1:P+r.
 * A restarted rank creates DIR/ring.R.restarted once its state is loaded. */
#define _GNU_SOURCE
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { TOKEN = 1, PARK = 2, DONE = 3 };
enum { PARK_LIMIT_S = 20 };

struct message {
    uint32_t kind;
    uint32_t pad;
    uint64_t value;
};

static int rank, size;
static long rounds_total;
static const char *dir;
static char restart_line[PATH_MAX * 2];

/* The rank's state, guarded by lock. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static long rounds_done;
static uint64_t checksum, token = 1;
static int want, parked, resume;

static void die(const char *what)
{
    fprintf(stderr, "ring rank %d: %s: %s\n", rank, what, strerror(errno));
    exit(70);
}

static void sock_path(struct sockaddr_un *addr, int r)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    snprintf(addr->sun_path, sizeof addr->sun_path, "%s/ring.%d.sock", dir, r);
}

static void send_msg(int fd, uint32_t kind, uint64_t value)
{
    struct message m = {kind, 0, value};
    if (write(fd, &m, sizeof m) != (ssize_t)sizeof m)
        die("send");
}

static struct message recv_msg(int fd)
{
    struct message m;
    size_t got = 0;
    while (got < sizeof m) {
        ssize_t n = read(fd, (char *)&m + got, sizeof m - got);
        if (n == 0) {
            errno = EPIPE;
            die("the ring closed");
        }
        if (n < 0 && errno != EINTR)
            die("receive");
        if (n > 0)
            got += (size_t)n;
    }
    return m;
}

/* The address rank r listens on: DIR/ring.r.sock, or 127.0.0.1:RING_TCP_PORT+r. */
static socklen_t ring_address(struct sockaddr_storage *addr, int r)
{
    const char *port = getenv("RING_TCP_PORT");
    memset(addr, 0, sizeof *addr);
    if (port != NULL) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)(atoi(port) + r));
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *in;
    }
    sock_path((struct sockaddr_un *)addr, r);
    return sizeof(struct sockaddr_un);
}

/* Listens, connects to the next rank (retrying while it starts), accepts the previous. */
static void build_ring(int *to_next, int *from_prev)
{
    struct sockaddr_storage addr;
    socklen_t len = ring_address(&addr, rank);
    int listener = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (addr.ss_family == AF_UNIX)
        unlink(((struct sockaddr_un *)&addr)->sun_path);
    else
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) != 0 ||
        listen(listener, 4) != 0)
        die("listen");
    if (addr.ss_family == AF_INET) {
        /* The tests wait for these files to know the ring is up. */
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/ring.%d.sock", dir, rank);
        close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    }
    len = ring_address(&addr, (rank + 1) % size);
    for (int tries = 0;; tries++) {
        *to_next = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(*to_next, (struct sockaddr *)&addr, len) == 0)
            break;
        close(*to_next);
        if (tries > 1000)
            die("connect");
        usleep(10000);
    }
    *from_prev = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (*from_prev < 0)
        die("accept");
    close(listener);
}

static void fold(uint64_t value)
{
    pthread_mutex_lock(&lock);
    token = value * 6364136223846793005ULL + (uint64_t)rank + 1;
    checksum = checksum * 31 + token;
    pthread_mutex_unlock(&lock);
}

/* Parks the main thread until the checkpoint is over (or the limit passes). */
static void park(void)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += PARK_LIMIT_S;
    pthread_mutex_lock(&lock);
    parked = 1;
    pthread_cond_broadcast(&changed);
    while (!resume && pthread_cond_timedwait(&changed, &lock, &until) == 0)
        ;
    parked = 0;
    resume = 0;
    want = 0;
    pthread_mutex_unlock(&lock);
}

static int wanted(void)
{
    pthread_mutex_lock(&lock);
    int w = want;
    pthread_mutex_unlock(&lock);
    return w;
}

static void save_state(const char *path)
{
    const char *padding = getenv("RING_STATE_BYTES");
    long bytes = padding ? atol(padding) : 0;
    FILE *f = fopen(path, "w");
    int ok = f != NULL && fprintf(f, "%ld %llu %llu\n", rounds_done, (unsigned long long)checksum,
                                  (unsigned long long)token) > 0;
    for (long i = 0; ok && i < bytes; i++)
        ok = fputc('.', f) != EOF;
    if (f == NULL || !ok || fclose(f) != 0)
        die("saving the state");
}

int opal_crs_self_user_checkpoint(char **restart_cmd);
int opal_crs_self_user_continue(void);
int opal_crs_self_user_restart(void);

int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += PARK_LIMIT_S;
    pthread_mutex_lock(&lock);
    want = 1;
    resume = 0;
    while (!parked && pthread_cond_timedwait(&changed, &lock, &until) == 0)
        ;
    int ok = parked;
    const char *fail = getenv("RING_FAIL_RANK");
    if (fail != NULL && atoi(fail) == rank)
        ok = 0;
    if (ok) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
        save_state(path);
        *restart_cmd = strdup(restart_line);
    } else {
        /* No continue callback follows a failed checkpoint: let the ring go now. */
        resume = 1;
        pthread_cond_broadcast(&changed);
    }
    pthread_mutex_unlock(&lock);
    return ok ? OPAL_SUCCESS : OPAL_ERROR;
}

int opal_crs_self_user_continue(void)
{
    pthread_mutex_lock(&lock);
    resume = 1;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return OPAL_SUCCESS;
}

int opal_crs_self_user_restart(void)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "r");
    unsigned long long sum, tok;
    if (f == NULL || fscanf(f, "%ld %llu %llu", &rounds_done, &sum, &tok) != 3)
        die("loading the state");
    fclose(f);
    checksum = sum;
    token = tok;
    char marker[PATH_MAX + 32];
    snprintf(marker, sizeof marker, "%s/ring.%d.restarted", dir, rank);
    int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        die("marking the restart");
    close(fd);
    return OPAL_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ring DIR ROUNDS (under opal-run -np N)\n");
        return 64;
    }
    dir = argv[1];
    rounds_total = atol(argv[2]);
    const char *r = getenv("OMPI_COMM_WORLD_RANK"), *n = getenv("OMPI_COMM_WORLD_SIZE");
    if (r == NULL || n == NULL) {
        fprintf(stderr, "ring: no OMPI_COMM_WORLD_RANK/SIZE: start it with opal-run -np N\n");
        return 64;
    }
    rank = atoi(r);
    size = atoi(n);
    const char *delay_text = getenv("RING_DELAY_US");
    useconds_t delay = delay_text ? (useconds_t)atoi(delay_text) : 2000;
    snprintf(restart_line, sizeof restart_line, "%s %s %s", argv[0], argv[1], argv[2]);
    if (opal_init(&argc, &argv) != OPAL_SUCCESS)
        return 71;
    int to_next, from_prev;
    build_ring(&to_next, &from_prev);

    if (rank == 0) {
        while (rounds_done < rounds_total) {
            if (wanted()) {
                send_msg(to_next, PARK, 0);
                if (recv_msg(from_prev).kind != PARK)
                    die("the ring lost PARK");
                park();
            }
            send_msg(to_next, TOKEN, token);
            struct message m = recv_msg(from_prev);
            if (m.kind != TOKEN)
                die("rank 0 expected the token");
            fold(m.value);
            pthread_mutex_lock(&lock);
            rounds_done++;
            pthread_mutex_unlock(&lock);
            usleep(delay);
        }
        send_msg(to_next, DONE, 0);
        recv_msg(from_prev);
    } else {
        for (;;) {
            struct message m = recv_msg(from_prev);
            if (m.kind == DONE) {
                send_msg(to_next, DONE, 0);
                break;
            }
            if (m.kind == PARK) {
                send_msg(to_next, PARK, 0);
                park();
                continue;
            }
            fold(m.value);
            pthread_mutex_lock(&lock);
            rounds_done++;
            pthread_mutex_unlock(&lock);
            send_msg(to_next, TOKEN, token);
        }
    }
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/ring.%d.result", dir, rank);
    FILE *f = fopen(path, "w");
    if (f == NULL || fprintf(f, "rank %d rounds %ld checksum %llu\n", rank, rounds_done,
                             (unsigned long long)checksum) < 0 ||
        fclose(f) != 0)
        die("writing the result");
    opal_finalize();
    return 0;
}
