/*
 * rate: the connection-rate load generator and git-like backend of the Switchyard benchmark,
 * in C, so that the load side is not the bottleneck of the connection-rate scenario (the Node
 * generator and backends saturated their core at ~7,900 connections/s with no proxy at all).
 * Linux only: epoll, non-blocking sockets, one thread, libc only, 127.0.0.1 only.
 *
 *   cc -O2 -Wall -Wextra -o rate rate.c
 *
 *   rate client --port P --concurrency C --warmup-ms W --duration-ms D [--max-conns N]
 *               --request-a HEX --request-b HEX --expect-head HEX [--expect-bytes N]
 *     The protocol of bench/load.ts --mode rate: C loops; each connects to 127.0.0.1:P
 *     (TCP_NODELAY), sends a request (loop i's n-th connection sends request (n + i) & 1, as
 *     load.ts does), reads the answer until the server's FIN, checks that it starts with the
 *     expected head (and, with --expect-bytes, that it is exactly N bytes long), closes, and
 *     starts over. Connections finished inside the measured window count; latency is connect
 *     start to the end of the answer (CLOCK_MONOTONIC). A failed connection (refused, reset,
 *     wrong answer, no answer within 10 s) counts as an error and its loop goes on; after
 *     100,000 errors no new connection starts.
 *     stdout: "mark start" at the start of the measured window, "mark end" at its end (each
 *     flushed at once, so that the parent can sample CPU times at the edges), then, once every
 *     loop has finished its last connection, one JSON line:
 *       {"connections":N,"windowMs":X,"errors":E,"warmupConnections":W,
 *        "latencyUs":{"p50":..,"p90":..,"p99":..,"max":..,"mean":..},
 *        "windowStartUs":T0,"windowEndUs":T1}
 *     (percentiles as bench/common.ts `percentile`; null when nothing was measured;
 *     windowStartUs/windowEndUs are CLOCK_MONOTONIC, the clock of Node's process.hrtime).
 *
 *   rate server --ports K --answer HEX [--max-lifetime-ms L]
 *     K git-like servers, as bench/backends.ts's: listen on 127.0.0.1, port 0 each (backlog
 *     4096); on each connection read until the first pkt-line is complete, answer the given
 *     bytes, send FIN, discard anything more, and close on the client's FIN.
 *     stdout: {"ports":[p1,...]}. Exits when stdin closes (so it dies with its parent: stdin
 *     must be a pipe or a terminal), on SIGTERM, and after L ms (default 30 min) in any case.
 *
 * Exit status: 0, or 2 for bad arguments or a setup failure (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h> /* NAN, isfinite: macros, no libm */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONCURRENCY 4096      /* client loops */
#define MAX_PORTS 16              /* server listeners */
#define MAX_FDS 65536             /* server: connections are indexed by fd, below this */
#define MAX_BLOB 65536            /* longest request, head or answer given in hex */
#define CONN_TIMEOUT_NS (10 * 1000000000LL)
#define MAX_ERRORS 100000
#define MAX_CONNS_LIMIT 50000000L /* bound on --max-conns (the latency array) */
#define EVENTS 256

/* ------------------------------------------------------------------ helpers */

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("rate: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The value of `--name` in argv, or NULL. */
static const char *arg(int argc, char **argv, const char *name) {
  for (int i = 2; i + 1 < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1] == '-' && strcmp(argv[i] + 2, name) == 0) return argv[i + 1];
  }
  return NULL;
}

/* A non-negative integer argument within [lo, hi]; `fallback` when absent (-1: required). */
static long num_arg(int argc, char **argv, const char *name, long fallback, long lo, long hi) {
  const char *v = arg(argc, argv, name);
  if (v == NULL) {
    if (fallback < 0) die("--%s is required", name);
    return fallback;
  }
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || n < lo || n > hi) die("--%s: expected an integer in [%ld, %ld], got %s", name, lo, hi, v);
  return n;
}

static int hex_digit(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes the required hex argument `--name` into a new buffer; its length in *len (> 0). */
static unsigned char *hex_arg(int argc, char **argv, const char *name, size_t *len) {
  const char *v = arg(argc, argv, name);
  if (v == NULL) die("--%s is required", name);
  size_t n = strlen(v);
  if (n == 0 || n % 2 != 0 || n / 2 > MAX_BLOB) die("--%s: expected 1 to %d bytes in hex", name, MAX_BLOB);
  unsigned char *out = malloc(n / 2);
  if (out == NULL) die("out of memory");
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hex_digit((unsigned char)v[2 * i]), lo = hex_digit((unsigned char)v[2 * i + 1]);
    if (hi < 0 || lo < 0) die("--%s: not hex", name);
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  *len = n / 2;
  return out;
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ------------------------------------------------------------------ client */

enum { C_IDLE, C_CONNECTING, C_READING };

struct loop {
  int fd;      /* -1 when no connection is open */
  int state;
  int64_t t0;  /* connect start, ns */
  size_t sent; /* bytes of the request written */
  size_t got;  /* bytes of the answer read */
  int head_ok; /* the answer's first bytes so far match the expected head */
  const unsigned char *req;
  size_t req_len;
};

static struct {
  int port, concurrency, epfd;
  long max_conns;
  const unsigned char *request[2];
  size_t request_len[2];
  const unsigned char *head;
  size_t head_len;
  long expect_bytes; /* -1: any length */
  enum { WARMUP, MEASURE, DRAIN } phase;
  int64_t window_start, window_end; /* ns; planned until the phase gets there */
  long started, counted, warmup_conns, errors;
  int active; /* loops with a connection open */
  double *latencies_us;
  struct loop loops[MAX_CONCURRENCY];
} cl;

static void mark(const char *what) {
  printf("mark %s\n", what);
  fflush(stdout);
}

/* The measured window opens (warmup -> measure) and closes (-> drain), each once, in order. */
static void window_open(int64_t now) {
  if (cl.phase != WARMUP) return;
  cl.window_start = now;
  cl.phase = MEASURE;
  mark("start");
}
static void window_close(int64_t now) {
  window_open(now);
  if (cl.phase != MEASURE) return;
  cl.window_end = now;
  cl.phase = DRAIN;
  mark("end");
}

static void count_error(void) {
  if (++cl.errors == MAX_ERRORS) {
    fprintf(stderr, "rate: %d failed connections, stopping\n", MAX_ERRORS);
    window_close(now_ns()); /* no new connection starts */
  }
}

/* Closes the loop's connection, if one is open. */
static void client_close(struct loop *l) {
  if (l->fd >= 0) {
    close(l->fd); /* also leaves the epoll set */
    l->fd = -1;
    cl.active--;
  }
  l->state = C_IDLE;
}

static void client_start(int id);

/* Ends the loop's connection (`end`: when the answer ended, ns); then the loop starts over. */
static void client_done(int id, int ok, int64_t end) {
  struct loop *l = &cl.loops[id];
  client_close(l);
  if (!ok) count_error();
  else if (cl.phase == MEASURE && cl.counted < cl.max_conns) cl.latencies_us[cl.counted++] = (double)(end - l->t0) / 1000.0;
  else if (cl.phase == WARMUP) cl.warmup_conns++;
  client_start(id);
}

/* Reads what is there; at the server's FIN the connection is done. */
static void client_read(int id) {
  struct loop *l = &cl.loops[id];
  unsigned char buf[16384];
  for (;;) {
    ssize_t n = read(l->fd, buf, sizeof buf);
    if (n > 0) {
      /* The head may come split over reads: compare the part of it in this chunk. */
      if (l->got < cl.head_len) {
        size_t k = cl.head_len - l->got < (size_t)n ? cl.head_len - l->got : (size_t)n;
        if (memcmp(buf, cl.head + l->got, k) != 0) l->head_ok = 0;
      }
      l->got += (size_t)n;
      continue;
    }
    if (n == 0) {
      int64_t end = now_ns();
      int ok = l->head_ok && l->got >= cl.head_len && (cl.expect_bytes < 0 || l->got == (size_t)cl.expect_bytes);
      client_done(id, ok, end);
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) client_done(id, 0, 0); /* ECONNRESET and the like */
    return;
  }
}

/* Writes what is left of the request, then reads (the answer may be there already). */
static void client_write(int id) {
  struct loop *l = &cl.loops[id];
  while (l->sent < l->req_len) {
    ssize_t n = send(l->fd, l->req + l->sent, l->req_len - l->sent, MSG_NOSIGNAL);
    if (n > 0) {
      l->sent += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return; /* the next EPOLLOUT edge resumes */
    client_done(id, 0, 0);                /* ECONNREFUSED and the like */
    return;
  }
  l->state = C_READING;
  client_read(id);
}

/* Starts the loop's next connection, unless draining or --max-conns were started. */
static void client_start(int id) {
  struct loop *l = &cl.loops[id];
  /* A connect that fails at once retries in this loop, not recursively (bounded by MAX_ERRORS). */
  while (cl.phase != DRAIN && cl.started < cl.max_conns) {
    cl.started++;
    l->t0 = now_ns();
    l->req = cl.request[(cl.started + id) & 1]; /* load.ts: requests[(started + id) & 1] */
    l->req_len = cl.request_len[(cl.started + id) & 1];
    l->sent = l->got = 0;
    l->head_ok = 1;
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) die("socket: %s", strerror(errno));
    cl.active++;
    set_nodelay(l->fd);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cl.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(l->fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc < 0 && errno != EINPROGRESS) {
      client_close(l);
      count_error();
      continue;
    }
    /* Edge-triggered: one registration serves the connect (EPOLLOUT) and the answer (EPOLLIN). */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u32 = (uint32_t)id};
    if (epoll_ctl(cl.epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    l->state = C_CONNECTING;
    if (rc == 0) client_write(id); /* connected at once */
    return;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* bench/common.ts percentile(): the ceil(p/100 * n)-th smallest, clamped to [1, n]. */
static double percentile(const double *sorted, long n, double p) {
  if (n == 0) return NAN;
  double x = p / 100.0 * (double)n;
  long i = (long)x; /* Math.ceil(x) - 1, without libm */
  if ((double)i < x) i++;
  i--;
  if (i < 0) i = 0;
  if (i > n - 1) i = n - 1;
  return sorted[i];
}

/* "key":number, or null where JSON.stringify writes NaN as null. */
static void json_num(const char *key, double v, const char *after) {
  if (isfinite(v)) printf("\"%s\":%.3f%s", key, v, after);
  else printf("\"%s\":null%s", key, after);
}

static int client_main(int argc, char **argv) {
  cl.port = (int)num_arg(argc, argv, "port", -1, 1, 65535);
  cl.concurrency = (int)num_arg(argc, argv, "concurrency", 1, 1, MAX_CONCURRENCY);
  long warmup_ms = num_arg(argc, argv, "warmup-ms", 1000, 0, 600000);
  long duration_ms = num_arg(argc, argv, "duration-ms", 5000, 1, 600000);
  cl.max_conns = num_arg(argc, argv, "max-conns", 2000000, 1, MAX_CONNS_LIMIT);
  cl.expect_bytes = arg(argc, argv, "expect-bytes") == NULL ? -1 : num_arg(argc, argv, "expect-bytes", -1, 1, MAX_BLOB);
  cl.request[0] = hex_arg(argc, argv, "request-a", &cl.request_len[0]);
  cl.request[1] = hex_arg(argc, argv, "request-b", &cl.request_len[1]);
  cl.head = hex_arg(argc, argv, "expect-head", &cl.head_len);
  /* Reserved, not touched: only the pages of measured connections become resident. */
  cl.latencies_us = malloc((size_t)cl.max_conns * sizeof(double));
  if (cl.latencies_us == NULL) die("out of memory");
  cl.epfd = epoll_create1(EPOLL_CLOEXEC);
  if (cl.epfd < 0) die("epoll_create1: %s", strerror(errno));

  int64_t t_start = now_ns();
  const int64_t duration_ns = duration_ms * 1000000LL;
  cl.window_start = t_start + warmup_ms * 1000000LL;
  /* Hard bound, as load.ts: report after warmup + duration + the connection timeout + 1 s. */
  const int64_t hard_end = cl.window_start + duration_ns + CONN_TIMEOUT_NS + 1000000000LL;
  int64_t next_scan = t_start + 100000000LL;
  cl.phase = WARMUP;
  if (warmup_ms == 0) window_open(t_start);
  for (int i = 0; i < cl.concurrency; i++) {
    cl.loops[i].fd = -1;
    client_start(i);
  }

  struct epoll_event events[EVENTS];
  for (;;) {
    int64_t now = now_ns();
    if (cl.phase == WARMUP && now >= cl.window_start) window_open(now);
    if (cl.phase == MEASURE && now >= cl.window_start + duration_ns) window_close(now);
    /* Done: drained, or every loop stopped early (--max-conns): then the window ends here. */
    if (cl.active == 0 || now >= hard_end) {
      window_close(now);
      break;
    }
    /* Connections older than the timeout fail: a scan every 100 ms (at most 4096 loops). */
    if (now >= next_scan) {
      next_scan = now + 100000000LL;
      for (int i = 0; i < cl.concurrency; i++) {
        if (cl.loops[i].fd >= 0 && now - cl.loops[i].t0 > CONN_TIMEOUT_NS) client_done(i, 0, 0);
      }
    }
    int64_t next = next_scan;
    if (cl.phase == WARMUP && cl.window_start < next) next = cl.window_start;
    if (cl.phase == MEASURE && cl.window_start + duration_ns < next) next = cl.window_start + duration_ns;
    int timeout_ms = next <= now ? 0 : (int)((next - now + 999999) / 1000000);
    int n = epoll_wait(cl.epfd, events, EVENTS, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    for (int k = 0; k < n; k++) {
      int id = (int)events[k].data.u32;
      struct loop *l = &cl.loops[id];
      if (l->fd < 0) continue; /* defensive: an fd appears once per batch, and a closed one leaves the set */
      if (l->state == C_CONNECTING) {
        if (events[k].events & EPOLLERR) client_done(id, 0, 0); /* refused */
        else client_write(id);
      } else if (l->state == C_READING) {
        client_read(id);
      }
    }
  }
  /* Whatever is still open at the hard bound failed. */
  for (int i = 0; i < cl.concurrency; i++) {
    if (cl.loops[i].fd >= 0) {
      client_close(&cl.loops[i]);
      cl.errors++;
    }
  }

  long n = cl.counted;
  qsort(cl.latencies_us, (size_t)n, sizeof(double), cmp_double);
  double sum = 0;
  for (long i = 0; i < n; i++) sum += cl.latencies_us[i];
  printf("{\"connections\":%ld,\"windowMs\":%.3f,\"errors\":%ld,\"warmupConnections\":%ld,\"latencyUs\":{", n,
         (double)(cl.window_end - cl.window_start) / 1e6, cl.errors, cl.warmup_conns);
  json_num("p50", percentile(cl.latencies_us, n, 50), ",");
  json_num("p90", percentile(cl.latencies_us, n, 90), ",");
  json_num("p99", percentile(cl.latencies_us, n, 99), ",");
  json_num("max", n > 0 ? cl.latencies_us[n - 1] : NAN, ",");
  json_num("mean", n > 0 ? sum / (double)n : NAN, "");
  printf("},\"windowStartUs\":%lld,\"windowEndUs\":%lld}\n", (long long)(cl.window_start / 1000), (long long)(cl.window_end / 1000));
  fflush(stdout);
  free(cl.latencies_us);
  return 0;
}

/* ------------------------------------------------------------------ server */

enum { S_FREE, S_REQUEST, S_ANSWER, S_DISCARD };

/* A connection, indexed by its fd. */
struct sconn {
  uint8_t state;
  uint8_t len_digits[4]; /* the first 4 bytes: the pkt-line length in hex */
  uint32_t got;          /* request bytes read so far */
  uint32_t sent;         /* answer bytes written */
};

static struct sconn conns[MAX_FDS];
static const unsigned char *answer;
static size_t answer_len;
static int epfd_s;

static void server_close(int fd) {
  close(fd);
  conns[fd].state = S_FREE;
}

/*
 * bench/common.ts pktLength() on the first `got` bytes: -1 while the first pkt-line is incomplete,
 * else its length (0: malformed, answer anyway). Like Number.parseInt(.., 16), the length is
 * the leading hex digits of the 4 (parseInt's leading blanks, sign and 0x are not copied).
 */
static long pkt_length(const struct sconn *c) {
  if (c->got < 4) return -1;
  long n = 0;
  int digits = 0;
  for (; digits < 4; digits++) {
    int d = hex_digit(c->len_digits[digits]);
    if (d < 0) break;
    n = n * 16 + d;
  }
  if (digits == 0 || n < 4) return 0;
  return c->got >= (uint32_t)n ? n : -1;
}

/* Writes what is left of the answer, then FIN (as Node's socket.end(answer)); then discards. */
static void server_answer(int fd) {
  struct sconn *c = &conns[fd];
  while (c->sent < answer_len) {
    ssize_t n = send(fd, answer + c->sent, answer_len - c->sent, MSG_NOSIGNAL);
    if (n > 0) {
      c->sent += (uint32_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
      epoll_ctl(epfd_s, EPOLL_CTL_MOD, fd, &ev);
      return;
    }
    server_close(fd);
    return;
  }
  shutdown(fd, SHUT_WR);
  c->state = S_DISCARD;
}

/* Reads what is there: the request until its pkt-line is complete, then anything more until the client's FIN. */
static void server_read(int fd) {
  struct sconn *c = &conns[fd];
  unsigned char buf[16384];
  while (c->state == S_REQUEST || c->state == S_DISCARD) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
      server_close(fd); /* the client's FIN (or a reset): Node closes then too */
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return; /* EAGAIN: wait for more */
    }
    if (c->state == S_DISCARD) continue;
    for (ssize_t i = 0; i < n && c->got + (uint32_t)i < 4; i++) c->len_digits[c->got + i] = buf[i];
    c->got += (uint32_t)n;
    /* backends.ts onFirstLine: answer once the pkt-line is complete (or 64 KiB came without it). */
    if (pkt_length(c) >= 0 || c->got >= 65536) {
      c->state = S_ANSWER;
      server_answer(fd); /* on to S_DISCARD, reading on in this loop, unless the send blocked */
    }
  }
}

/* Accepts every pending connection. A spare fd lets us shed a connection when out of fds. */
static int spare_fd = -1;
static void server_accept(int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
        close(spare_fd); /* accept it and close it at once, rather than spin on a readable listener */
        fd = accept(lfd, NULL, NULL);
        if (fd >= 0) close(fd);
        spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        continue;
      }
      return; /* EAGAIN, or out of fds with no spare */
    }
    if (fd >= MAX_FDS) {
      close(fd);
      continue;
    }
    set_nodelay(fd);
    conns[fd] = (struct sconn){.state = S_REQUEST};
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, fd, &ev) < 0) {
      server_close(fd);
      continue;
    }
    server_read(fd); /* the request is usually there already */
  }
}

static int server_main(int argc, char **argv) {
  int k = (int)num_arg(argc, argv, "ports", 2, 1, MAX_PORTS);
  long lifetime_ms = num_arg(argc, argv, "max-lifetime-ms", 30 * 60000, 1, 24L * 3600000);
  answer = hex_arg(argc, argv, "answer", &answer_len);
  epfd_s = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_s < 0) die("epoll_create1: %s", strerror(errno));
  spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

  int listeners[MAX_PORTS];
  int ports[MAX_PORTS];
  for (int i = 0; i < k; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as Node's listen */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
      die("listen on 127.0.0.1: %s", strerror(errno));
    }
    listeners[i] = fd;
    ports[i] = ntohs(sa.sin_port);
    /* Listeners are told apart from connections by data.u64 >= MAX_FDS. */
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)MAX_FDS + (uint64_t)i};
    if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  }
  /* stdin: its end (EOF or error) is our parent's. */
  struct epoll_event sev = {.events = EPOLLIN, .data.u64 = (uint64_t)MAX_FDS + MAX_PORTS};
  if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, STDIN_FILENO, &sev) < 0) die("stdin must be a pipe or a terminal (epoll: %s)", strerror(errno));

  printf("{\"ports\":[");
  for (int i = 0; i < k; i++) printf("%s%d", i == 0 ? "" : ",", ports[i]);
  printf("]}\n");
  fflush(stdout);

  int64_t deadline = now_ns() + lifetime_ms * 1000000LL;
  struct epoll_event events[EVENTS];
  for (;;) {
    int64_t left = deadline - now_ns();
    if (left <= 0) break;
    int n = epoll_wait(epfd_s, events, EVENTS, left > 60000000000LL ? 60000 : (int)(left / 1000000) + 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    for (int e = 0; e < n; e++) {
      uint64_t tag = events[e].data.u64;
      if (tag == (uint64_t)MAX_FDS + MAX_PORTS) {
        char buf[256];
        ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) return 0;
      } else if (tag >= MAX_FDS) {
        server_accept(listeners[tag - MAX_FDS]);
      } else {
        int fd = (int)tag;
        if (conns[fd].state == S_ANSWER && (events[e].events & EPOLLOUT)) server_answer(fd);
        if (conns[fd].state == S_REQUEST || conns[fd].state == S_DISCARD) server_read(fd);
        else if (conns[fd].state == S_ANSWER && (events[e].events & (EPOLLERR | EPOLLHUP))) server_close(fd);
      }
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 2 && strcmp(argv[1], "client") == 0) return client_main(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "server") == 0) return server_main(argc, argv);
  fprintf(stderr, "usage: rate client --port P --concurrency C --warmup-ms W --duration-ms D [--max-conns N]\n"
                  "                   --request-a HEX --request-b HEX --expect-head HEX [--expect-bytes N]\n"
                  "       rate server --ports K --answer HEX [--max-lifetime-ms L]\n");
  return 2;
}
