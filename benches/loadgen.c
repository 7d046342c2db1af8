/*
 * loadgen: a minimal wrk-like HTTP/1.1 keep-alive load generator that can also send HEAD.
 *
 * wrk 4.1 (Debian 12) cannot benchmark HEAD: its response parser waits for the body that a
 * HEAD response announces in Content-Length but never sends (wg/wrk issue 198), so every
 * connection stalls.  The benchmark uses wrk for GET and this tool, with the same shape
 * (threads x connections, fixed duration, latency measured from send to complete response),
 * for HEAD.  Plain http:// only; responses must carry Content-Length (no chunked bodies).
 *
 *   loadgen -t 2 -c 64 -d 10 -m HEAD -H 'Accept: x' http://127.0.0.1:5000/v2/...
 *
 * Output (one "key: value" per line): requests, seconds, rps, p50_ms, p90_ms, p99_ms,
 * max_ms, non2xx, errors, reconnects (keep-alive connections the server closed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256 * 1024)

static struct sockaddr_in g_addr;
static char g_req[8192];
static size_t g_req_len;
static int g_head;
static double g_deadline;

typedef struct {
    int fd;
    int sending;          /* 1: request not fully written yet */
    size_t sent;
    size_t have;          /* bytes in buf */
    int hdr_done;
    long long body_left;
    int status;
    double t0;
    char buf[RBUF];
} conn_t;

typedef struct {
    int nconns;
    uint32_t *lat;        /* microseconds */
    size_t nlat, cap;
    unsigned long long non2xx, errors, reconnects;
} worker_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *m) { perror(m); exit(2); }

static int open_conn(int ep, conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->sending = 1; c->sent = 0; c->have = 0; c->hdr_done = 0; c->body_left = 0;
    c->t0 = now();
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return 0;
}

static void reopen(int ep, conn_t *c, worker_t *w, int is_error) {
    if (is_error) w->errors++; else w->reconnects++;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (now() < g_deadline) {
        usleep(1000);
        open_conn(ep, c);
    }
}

static void record(worker_t *w, double secs) {
    if (w->nlat == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 65536;
        w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
        if (!w->lat) die("realloc");
    }
    double us = secs * 1e6;
    w->lat[w->nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static void start_request(int ep, conn_t *c) {
    c->sending = 1; c->sent = 0; c->have = 0; c->hdr_done = 0; c->body_left = 0;
    c->t0 = now();
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* returns 1 when the response is complete, 0 when more is needed, -1 on a parse error */
static int parse(conn_t *c) {
    if (!c->hdr_done) {
        char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
        if (!end) return c->have >= RBUF ? -1 : 0;
        size_t hlen = (size_t)(end - c->buf) + 4;
        if (c->have < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
        c->status = atoi(c->buf + 9);
        long long cl = -1;
        for (char *p = c->buf; p < end;) {
            char *nl = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
            if (!nl) break;
            if ((size_t)(nl - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
                cl = atoll(p + 15);
            if ((size_t)(nl - p) > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
                return -1;  /* chunked bodies are not supported */
            p = nl + 2;
        }
        c->hdr_done = 1;
        long long body = (g_head || c->status == 204 || c->status == 304) ? 0 : (cl < 0 ? 0 : cl);
        c->body_left = body - (long long)(c->have - hlen);
        c->have = 0;
    } else {
        c->body_left -= (long long)c->have;
        c->have = 0;
    }
    return c->body_left <= 0 ? 1 : 0;
}

static void *run(void *arg) {
    worker_t *w = arg;
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    conn_t *conns = calloc((size_t)w->nconns, sizeof(conn_t));
    if (!conns) die("calloc");
    for (int i = 0; i < w->nconns; i++)
        if (open_conn(ep, &conns[i]) < 0) die("connect");
    struct epoll_event evs[256];
    while (now() < g_deadline) {
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (c->sending) {
                ssize_t k = write(c->fd, g_req + c->sent, g_req_len - c->sent);
                if (k < 0) {
                    if (errno == EAGAIN) continue;
                    reopen(ep, c, w, 1);
                    continue;
                }
                c->sent += (size_t)k;
                if (c->sent == g_req_len) {
                    c->sending = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
                continue;
            }
            ssize_t k = read(c->fd, c->buf + c->have, RBUF - c->have);
            if (k < 0 && errno == EAGAIN) continue;
            /* a keep-alive connection the server closed before answering: reconnect, resend */
            if (k <= 0 && c->have == 0 && !c->hdr_done) { reopen(ep, c, w, 0); continue; }
            if (k <= 0) { reopen(ep, c, w, 1); continue; }
            c->have += (size_t)k;
            int r = parse(c);
            if (r < 0) { reopen(ep, c, w, 1); continue; }
            if (r == 1) {
                double t = now();
                if (t <= g_deadline) {
                    record(w, t - c->t0);
                    if (c->status < 200 || c->status > 399) w->non2xx++;
                }
                start_request(ep, c);
            }
        }
    }
    for (int i = 0; i < w->nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    free(conns);
    close(ep);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int threads = 2, conns = 64;
    double dur = 10;
    const char *method = "GET";
    char hdrs[4096] = "";
    int opt;
    while ((opt = getopt(argc, argv, "t:c:d:m:H:")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 'm': method = optarg; break;
        case 'H':
            if (strlen(hdrs) + strlen(optarg) + 3 >= sizeof hdrs) { fputs("headers too long\n", stderr); return 2; }
            strcat(hdrs, optarg); strcat(hdrs, "\r\n");
            break;
        default:
            fputs("usage: loadgen [-t N] [-c N] [-d SECS] [-m METHOD] [-H 'K: V']... http://IP:PORT/PATH\n", stderr);
            return 2;
        }
    }
    if (optind >= argc || strncmp(argv[optind], "http://", 7) != 0) { fputs("need http://IP:PORT/PATH\n", stderr); return 2; }
    if (threads < 1 || conns < threads) { fputs("need conns >= threads >= 1\n", stderr); return 2; }
    char host[256];
    const char *u = argv[optind] + 7, *slash = strchr(u, '/'), *path = slash ? slash : "/";
    size_t hl = slash ? (size_t)(slash - u) : strlen(u);
    if (hl >= sizeof host) return 2;
    memcpy(host, u, hl); host[hl] = 0;
    char *colon = strrchr(host, ':');
    int port = 80;
    if (colon) { *colon = 0; port = atoi(colon + 1); }
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1) { fputs("host must be an IPv4 address\n", stderr); return 2; }
    if (colon) *colon = ':';
    int n = snprintf(g_req, sizeof g_req, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: regcache-bench-loadgen\r\n%s\r\n",
                     method, path, host, hdrs);
    if (n < 0 || (size_t)n >= sizeof g_req) return 2;
    g_req_len = (size_t)n;
    g_head = strcmp(method, "HEAD") == 0;

    double t0 = now();
    g_deadline = t0 + dur;
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    worker_t *ws = calloc((size_t)threads, sizeof *ws);
    for (int i = 0; i < threads; i++) {
        ws[i].nconns = conns / threads + (i < conns % threads);
        pthread_create(&tids[i], NULL, run, &ws[i]);
    }
    size_t total = 0;
    unsigned long long non2xx = 0, errors = 0, reconnects = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        total += ws[i].nlat; non2xx += ws[i].non2xx; errors += ws[i].errors;
        reconnects += ws[i].reconnects;
    }
    double secs = now() - t0;
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, ws[i].lat, ws[i].nlat * sizeof *all);
        k += ws[i].nlat;
    }
    qsort(all, total, sizeof *all, cmp_u32);
#define PCT(p) (total ? all[(size_t)((double)(total - 1) * (p))] / 1000.0 : 0.0)
    printf("requests: %zu\nseconds: %.3f\nrps: %.1f\np50_ms: %.3f\np90_ms: %.3f\np99_ms: %.3f\nmax_ms: %.3f\n"
           "non2xx: %llu\nerrors: %llu\nreconnects: %llu\n",
           total, secs, total / (secs < dur ? secs : dur), PCT(0.50), PCT(0.90), PCT(0.99),
           total ? all[total - 1] / 1000.0 : 0.0, non2xx, errors, reconnects);
    return 0;
}
