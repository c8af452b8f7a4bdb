/*
 * rate: the native load side of the Switchyard benchmark, in C, so that the load side is not the
 * bottleneck (on CPU 0 the Node generator and backends saturated their core first: at ~7,900
 * connections/s, ~950 MB/s of bulk and under wrk, with no proxy at all): the connection-rate and
 * bulk load generators, and the git-like, sink, source and raw-HTTP backends of bench/backends.ts.
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
 *   rate up --port P [--bytes N] [--timeout-ms T] [--ack HEX] [--sync 1]
 *   rate down --port P [--bytes N] [--timeout-ms T] [--sync 1]
 *     The protocol of bench/load.ts --mode up|down, one connection to 127.0.0.1:P (TCP_NODELAY):
 *     up: sends the request line of the user "bulkup" (gitRequest('bulkup', 'N'): the pkt-line
 *     "XXXXgit-upload-pack /bulkup/N.git\0host=example.com\0"), waits for the sink's ACK (its
 *     first bytes must be exactly --ack, default "0008ACK\n", bench/common.ts sinkReady), then
 *     streams N bytes (the 1 MiB block of load.ts, "up-up-up-" repeated, from offset 0 at every
 *     MiB), sends FIN, and reads the sink's answer until its FIN: the decimal count of the bytes
 *     it got after the request line, which is `transferred` (parseInt, as load.ts).
 *     down: sends the request line of the user "bulkdown" for repository "N" (the source streams
 *     N bytes, then FIN) and counts the bytes until the source's FIN: `transferred` (not checked
 *     byte by byte, as load.ts does not either).
 *     The window: up, from the ACK to the answer's end; down, from the connect to the FIN (as
 *     load.ts's CPU samples). Big writes from a static 1 MiB block, reads into a 256 KiB buffer
 *     that is dropped. Default N 256 MiB and T 120,000 ms, as load.ts.
 *     stdout: "mark start" when the window opens and "mark end" when it closes (as the rate client;
 *     both are printed even when the transfer fails first), then one JSON line with load.ts's
 *     bulk fields but `cpu` (which the parent samples at the marks):
 *       {"mode":"up","bytes":N,"transferred":T,"ok":true|false,["error":"..",]"seconds":S,
 *        "mbPerSecond":M,"windowStartUs":T0,"windowEndUs":T1}
 *     ok: no error and transferred == N; error as load.ts's ("connect ECONNREFUSED 127.0.0.1:P",
 *     "read ECONNRESET", "timed out after T ms", "unexpected answer from the sink: \"..\"",
 *     "transferred X of N bytes", ...); seconds = (T1 - T0) / 1e6, mbPerSecond = T / 1e6 / seconds.
 *     --sync 1: after "mark start", wait for a line on stdin before the window's clock starts (so
 *     the parent samples CPU times before the transfer starts, not while it runs).
 *
 *   rate server [--ports K --answer HEX] [--sink S [--ack HEX]] [--source S]
 *               [--http-raw H [--http-answer HEX]] [--max-lifetime-ms L]
 *     Backends, byte for byte as bench/backends.ts's; each listens on 127.0.0.1, port 0 (backlog
 *     4096), TCP_NODELAY on every connection:
 *     K git-like servers (default 2; --answer required when K > 0): on each connection read until
 *     the first pkt-line is complete, answer the given bytes, send FIN, discard anything more,
 *     and close on the client's FIN.
 *     S sinks (default 0): read until the first pkt-line is complete, answer --ack (default
 *     "0008ACK\n"), count every byte after the pkt-line until the client's FIN, then answer the
 *     count in decimal and "\n", and close (sinkServer).
 *     S sources (default 0): read until the first pkt-line is complete; its first /(\d+)\.git\0
 *     is the byte count (0 without one); stream that many bytes (the 1 MiB chunk of backends.ts,
 *     "switchyard-bench-" repeated, from offset 0 at every MiB), FIN, discard anything the
 *     client sends, close once both sides have sent FIN (sourceServer).
 *     H raw HTTP/1.1 keep-alive servers (default 0): for every complete request, i.e. every
 *     "\r\n\r\n" in the byte stream (GET requests have no body; pipelined requests each count,
 *     also across reads), answer --http-answer (default backends.ts's rawResponse: "HTTP/1.1
 *     200 OK", Content-Type text/plain, Content-Length 32, Connection keep-alive, body "hello
 *     from the switchyard bench\n"); the answers of one read go out in one write; on the
 *     client's FIN, finish the answers owed and close (rawHttpServer).
 *     (A first pkt-line is complete when its 4 hex digits of length are there and that many
 *     bytes; a malformed length, or 64 KiB without a complete line, is taken as complete. A
 *     client FIN before it is complete closes the connection, unanswered.)
 *     stdout: {"ports":[g1,...],"sink":[..],"source":[..],"httpRaw":[..]}. Exits when stdin closes
 *     (so it dies with its parent: stdin must be a pipe or a terminal), on SIGTERM, and after L ms
 *     (default 30 min) in any case.
 *
 * Exit status: 0 (also when connections or the transfer failed: the JSON says so), or 2 for bad
 * arguments or a setup failure (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h> /* NAN, isfinite: macros, no libm */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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
#define MAX_PORTS 16              /* server listeners of one kind */
#define MAX_LISTENERS (4 * MAX_PORTS)
#define MAX_FDS 65536             /* server: connections are indexed by fd, below this */
#define MAX_BLOB 65536            /* longest request, head or answer given in hex */
#define CONN_TIMEOUT_NS (10 * 1000000000LL)
#define MAX_ERRORS 100000
#define MAX_CONNS_LIMIT 50000000L /* bound on --max-conns (the latency array) */
#define EVENTS 256
#define IO_BUF (256 * 1024)       /* bulk reads: into a buffer that is dropped */
#define BLOCK (1 << 20)           /* bulk writes: load.ts's block and backends.ts's chunk, 1 MiB */

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


/* ------------------------------------------------------------------ bulk: shared */

static unsigned char io_buf[IO_BUF]; /* what bulk reads land in; dropped */

/* bench/common.ts sinkReady: pktLine('ACK\n') */
static const unsigned char default_ack[] = "0008ACK\n";
#define DEFAULT_ACK_LEN (sizeof default_ack - 1)

/* Like hex_arg, but the argument is optional: `fallback` (`fallback_len` bytes) when absent. */
static const unsigned char *hex_arg_or(int argc, char **argv, const char *name, const unsigned char *fallback, size_t fallback_len, size_t *len) {
  if (arg(argc, argv, name) == NULL) {
    *len = fallback_len;
    return fallback;
  }
  return hex_arg(argc, argv, name, len);
}

/* Fills `buf` with `word` repeated, as Node's Buffer.alloc(len, word). */
static void fill_block(unsigned char *buf, size_t len, const char *word) {
  size_t w = strlen(word);
  for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)word[i % w];
}

/* The name Node gives an errno in its messages ("read ECONNRESET"), for the usual ones. */
static const char *errno_name(int e) {
  switch (e) {
  case ECONNREFUSED: return "ECONNREFUSED";
  case ECONNRESET: return "ECONNRESET";
  case ECONNABORTED: return "ECONNABORTED";
  case EPIPE: return "EPIPE";
  case ETIMEDOUT: return "ETIMEDOUT";
  case EHOSTUNREACH: return "EHOSTUNREACH";
  case ENETUNREACH: return "ENETUNREACH";
  case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
  default: return strerror(e);
  }
}

/* `n` bytes as a JSON string literal, quotes included, into out (cap > 8); cut short to fit. */
static void json_quote(char *out, size_t cap, const unsigned char *s, size_t n) {
  size_t o = 0;
  out[o++] = '"';
  for (size_t i = 0; i < n && o + 8 < cap; i++) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c == '\n') {
      out[o++] = '\\';
      out[o++] = 'n';
    } else if (c == '\r') {
      out[o++] = '\\';
      out[o++] = 'r';
    } else if (c < 0x20 || c >= 0x7f) { /* latin1, as load.ts decodes it: \u00XX */
      o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  out[o++] = '"';
  out[o] = '\0';
}

/* bench/common.ts gitRequest(user, repo): the pkt-line "XXXXgit-upload-pack /user/repo.git\0host=example.com\0". */
static size_t git_request(unsigned char *out, size_t cap, const char *user, const char *repo) {
  char body[256];
  int n = snprintf(body, sizeof body, "git-upload-pack /%s/%s.git%chost=example.com%c", user, repo, 0, 0);
  if (n < 0 || (size_t)n + 5 > cap || (size_t)n >= sizeof body) die("request line too long");
  char len[8];
  snprintf(len, sizeof len, "%04x", (unsigned)n + 4);
  memcpy(out, len, 4);
  memcpy(out + 4, body, (size_t)n);
  return (size_t)n + 4;
}

/* ------------------------------------------------------------------ bulk client */

enum { B_CONNECTING, B_REQUEST, B_ACK, B_PUMP, B_REPLY, B_DOWN, B_DONE };

static unsigned char up_block[BLOCK]; /* load.ts: Buffer.alloc(1 << 20, 'up-up-up-') */

static struct {
  int fd, epfd, port, up, sync, state, opened;
  long long bytes, sent;
  long long transferred; /* down: bytes read; up: the sink's count, at its FIN */
  size_t ack_got;        /* up: bytes of the ACK read */
  long timeout_ms;
  unsigned char request[256];
  size_t request_len, request_sent;
  const unsigned char *ack;
  size_t ack_len;
  unsigned char first[16];   /* up: the first bytes the sink answered (the ACK, or what came instead) */
  char reply[64];            /* up: the start of the sink's count answer */
  size_t reply_len;
  int64_t t0, t1, deadline;
  char error[512];           /* "" while there is none */
} bk;

static void bulk_fail(const char *fmt, ...) {
  if (bk.error[0] != '\0' || bk.state == B_DONE) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(bk.error, sizeof bk.error, fmt, ap);
  va_end(ap);
  bk.state = B_DONE;
}

/* The window opens: mark it; with --sync, wait for the parent's go-ahead (a line on stdin) first. */
static void bulk_open(void) {
  if (bk.opened) return;
  bk.opened = 1;
  mark("start");
  if (bk.sync) {
    for (;;) {
      int64_t left = bk.deadline - now_ns();
      if (left <= 0) break; /* the timeout reports it */
      struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
      int r = poll(&p, 1, (int)(left / 1000000) + 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      char c;
      ssize_t n = read(STDIN_FILENO, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        bulk_fail("no go-ahead on stdin");
        break;
      }
      if (c == '\n') break;
    }
  }
  bk.t0 = now_ns();
}

/* The window closes (once, after it opened). */
static void bulk_close(void) {
  if (bk.t1 != 0) return;
  if (!bk.opened) {
    bk.opened = 1;
    mark("start");
    bk.t0 = now_ns();
  }
  bk.t1 = now_ns();
  mark("end");
}

/* JS Number.parseInt(s, 10) || 0, for the sink's count: blanks, a sign, then digits. */
static long long parse_int(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\v' || *s == '\f') s++;
  int neg = *s == '-';
  if (*s == '-' || *s == '+') s++;
  long long v = 0;
  for (; *s >= '0' && *s <= '9'; s++) v = v > (LLONG_MAX - 9) / 10 ? LLONG_MAX : v * 10 + (*s - '0');
  return neg ? -v : v;
}

/* Reads what is there, in the current state, until it would block or the transfer is over. */
static void bulk_read(void) {
  while (bk.state == B_ACK || bk.state == B_PUMP || bk.state == B_REPLY || bk.state == B_DOWN) {
    ssize_t n = read(bk.fd, io_buf, IO_BUF);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) bulk_fail("read %s", errno_name(errno));
      return;
    }
    if (n == 0) { /* the server's FIN: load.ts's 'end' */
      if (bk.state == B_ACK) {
        if (bk.ack_got == 0) bulk_fail("connection closed before the sink's ACK");
        else {
          char q[128];
          json_quote(q, sizeof q, bk.first, bk.ack_got);
          bulk_fail("unexpected answer from the sink: %s", q);
        }
        return;
      }
      bulk_close();
      if (bk.up) {
        bk.reply[bk.reply_len] = '\0';
        bk.transferred = parse_int(bk.reply); /* load.ts: transferred = parseInt(reply, 10) || 0 */
      }
      bk.state = B_DONE;
      return;
    }
    if (bk.state == B_DOWN) {
      bk.transferred += n;
    } else if (bk.state == B_ACK) {
      /* load.ts compares the first chunk with the ACK; here the ACK may also come in pieces. */
      size_t room = sizeof bk.first - bk.ack_got, k = (size_t)n < room ? (size_t)n : room;
      memcpy(bk.first + bk.ack_got, io_buf, k);
      bk.ack_got += k;
      if ((size_t)n > room || bk.ack_got > bk.ack_len || memcmp(bk.first, bk.ack, bk.ack_got < bk.ack_len ? bk.ack_got : bk.ack_len) != 0) {
        char q[128];
        json_quote(q, sizeof q, bk.first, bk.ack_got);
        bulk_fail("unexpected answer from the sink: %s", q);
        return;
      }
      if (bk.ack_got == bk.ack_len) {
        bulk_open(); /* load.ts: the CPU sample before the stream */
        if (bk.state == B_DONE) return;
        bk.state = B_PUMP;
        return; /* the caller pumps */
      }
    } else { /* up: the sink's answer (while pumping only if it ends early) */
      size_t room = sizeof bk.reply - 1 - bk.reply_len, k = (size_t)n < room ? (size_t)n : room;
      memcpy(bk.reply + bk.reply_len, io_buf, k);
      bk.reply_len += k;
    }
  }
}

/* Writes what is left: the request line, then (up) the stream and FIN. */
static void bulk_write(void) {
  while (bk.state == B_REQUEST && bk.request_sent < bk.request_len) {
    ssize_t n = send(bk.fd, bk.request + bk.request_sent, bk.request_len - bk.request_sent, MSG_NOSIGNAL);
    if (n > 0) bk.request_sent += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else if (n < 0 && errno == EAGAIN) return;
    else {
      bulk_fail("write %s", errno_name(errno));
      return;
    }
  }
  if (bk.state == B_REQUEST) bk.state = bk.up ? B_ACK : B_DOWN;
  while (bk.state == B_PUMP && bk.sent < bk.bytes) {
    size_t off = (size_t)(bk.sent % BLOCK), len = BLOCK - off;
    if ((long long)len > bk.bytes - bk.sent) len = (size_t)(bk.bytes - bk.sent);
    ssize_t n = send(bk.fd, up_block + off, len, MSG_NOSIGNAL);
    if (n > 0) bk.sent += n;
    else if (n < 0 && errno == EINTR) continue;
    else if (n < 0 && errno == EAGAIN) return;
    else {
      bulk_fail("write %s", errno_name(errno));
      return;
    }
  }
  if (bk.state == B_PUMP) {
    shutdown(bk.fd, SHUT_WR); /* load.ts: socket.end() */
    bk.state = B_REPLY;
  }
}

/* Everything that can be done now, after an event. */
static void bulk_step(uint32_t events) {
  if (bk.state == B_CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(bk.fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0) err = errno;
    if (err != 0) {
      bulk_fail("connect %s 127.0.0.1:%d", errno_name(err), bk.port);
      return;
    }
    if (!bk.up) bulk_open(); /* load.ts down: the CPU sample at connect, before the request */
    if (bk.state == B_DONE) return;
    bk.state = B_REQUEST;
  }
  for (int progress = 1; progress && bk.state != B_DONE;) {
    int before = bk.state;
    bulk_write();
    bulk_read();
    progress = bk.state != before; /* a new state may have more to do at once (ACK -> pump) */
  }
}

static int bulk_main(int argc, char **argv, int up) {
  bk.up = up;
  bk.port = (int)num_arg(argc, argv, "port", -1, 1, 65535);
  bk.bytes = num_arg(argc, argv, "bytes", 256L * 1024 * 1024, 0, 1L << 40);
  bk.timeout_ms = num_arg(argc, argv, "timeout-ms", 120000, 1, 3600000);
  bk.sync = (int)num_arg(argc, argv, "sync", 0, 0, 1);
  bk.ack = hex_arg_or(argc, argv, "ack", default_ack, DEFAULT_ACK_LEN, &bk.ack_len);
  if (bk.ack_len > sizeof bk.first) die("--ack: at most %zu bytes", sizeof bk.first);
  char count[32];
  snprintf(count, sizeof count, "%lld", bk.bytes);
  bk.request_len = git_request(bk.request, sizeof bk.request, up ? "bulkup" : "bulkdown", count);
  if (up) fill_block(up_block, BLOCK, "up-up-up-");

  int64_t start = now_ns();
  bk.deadline = start + bk.timeout_ms * 1000000LL;
  bk.epfd = epoll_create1(EPOLL_CLOEXEC);
  if (bk.epfd < 0) die("epoll_create1: %s", strerror(errno));
  bk.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (bk.fd < 0) die("socket: %s", strerror(errno));
  set_nodelay(bk.fd);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
  if (epoll_ctl(bk.epfd, EPOLL_CTL_ADD, bk.fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bk.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bk.state = B_CONNECTING;
  if (connect(bk.fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
    bulk_fail("connect %s 127.0.0.1:%d", errno_name(errno), bk.port);
  }

  while (bk.state != B_DONE) {
    int64_t left = bk.deadline - now_ns();
    if (left <= 0) {
      bulk_fail("timed out after %ld ms", bk.timeout_ms);
      break;
    }
    struct epoll_event events[4];
    int n = epoll_wait(bk.epfd, events, 4, (int)(left / 1000000) + 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    for (int k = 0; k < n; k++) bulk_step(events[k].events);
  }
  bulk_close();
  close(bk.fd);

  /* load.ts: ok when nothing failed and the count is the size asked; else why not. */
  long long transferred = bk.transferred;
  int ok = bk.error[0] == '\0' && transferred == bk.bytes;
  if (!ok && bk.error[0] == '\0') snprintf(bk.error, sizeof bk.error, "transferred %lld of %lld bytes", transferred, bk.bytes);
  double seconds = (double)(bk.t1 - bk.t0) / 1e9;
  printf("{\"mode\":\"%s\",\"bytes\":%lld,\"transferred\":%lld,\"ok\":%s,", up ? "up" : "down", bk.bytes, transferred, ok ? "true" : "false");
  if (!ok) {
    char q[sizeof bk.error * 6 + 8];
    json_quote(q, sizeof q, (const unsigned char *)bk.error, strlen(bk.error));
    printf("\"error\":%s,", q);
  }
  printf("\"seconds\":%.6f,\"mbPerSecond\":%.3f,\"windowStartUs\":%lld,\"windowEndUs\":%lld}\n", seconds,
         seconds > 0 ? (double)transferred / 1e6 / seconds : 0.0, (long long)(bk.t0 / 1000), (long long)(bk.t1 / 1000));
  fflush(stdout);
  return 0;
}

/* ------------------------------------------------------------------ server */

enum { K_GIT, K_SINK, K_SOURCE, K_HTTP };
/*
 * git: S_REQUEST -> S_ANSWER -> S_DISCARD. sink: S_REQUEST -> S_STREAM (counting). source:
 * S_REQUEST -> S_STREAM (sending) -> S_SENT. http: S_STREAM from the start.
 */
enum { S_FREE, S_REQUEST, S_ANSWER, S_DISCARD, S_STREAM, S_SENT };

/* A connection, indexed by its fd. */
struct sconn {
  uint8_t state;
  uint8_t kind;
  uint8_t peer_fin;      /* sink, source, http: the client's FIN came */
  uint8_t crlf;          /* http: bytes of "\r\n\r\n" matched at the end of what was read */
  uint8_t len_digits[4]; /* the first 4 bytes: the pkt-line length in hex */
  uint8_t small_len;     /* sink: bytes of `small` to write (the ACK, then the count) */
  uint8_t small_sent;
  uint32_t got;          /* request bytes read so far */
  uint32_t sent;         /* git: answer bytes written; http: bytes of the current answer written */
  uint64_t count;        /* sink: bytes after the request line; source: bytes left to send; http: answers owed */
  uint64_t pos;          /* source: bytes sent */
  unsigned char *line;   /* source: the request so far, until its first pkt-line is complete */
  char small[48];
};

static struct sconn conns[MAX_FDS];
static const unsigned char *answer;
static size_t answer_len;
static const unsigned char *sink_ack;
static size_t sink_ack_len;
static unsigned char source_block[BLOCK]; /* backends.ts: Buffer.alloc(1 << 20, 'switchyard-bench-') */
static unsigned char *http_answers;       /* the HTTP answer, repeated, so that owed answers go out in few writes */
static size_t http_answer_len, http_answers_len;
static int epfd_s;

#define LINE_CAP (65536 + 16384) /* a first line is complete at 64 KiB at most, read 16 KiB at a time */

/* backends.ts rawResponse. */
static const unsigned char default_http_answer[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: keep-alive\r\n\r\nhello from the switchyard bench\n";

static void server_close(int fd) {
  close(fd);
  free(conns[fd].line);
  conns[fd].line = NULL;
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

/* Notes a request chunk; returns the length of the first pkt-line once it is complete, else -1. */
static long request_chunk(struct sconn *c, const unsigned char *buf, size_t n) {
  for (size_t i = 0; i < n && c->got + i < 4; i++) c->len_digits[c->got + i] = buf[i];
  if (c->line != NULL) {
    size_t room = c->got < LINE_CAP ? LINE_CAP - c->got : 0, k = room < n ? room : n;
    memcpy(c->line + c->got, buf, k);
  }
  c->got += (uint32_t)n;
  /* backends.ts onFirstLine: complete once the pkt-line is (or 64 KiB came without it); a
     malformed or missing length makes the whole buffer the line. */
  long len = pkt_length(c);
  if (len < 0 && c->got < 65536) return -1;
  return len <= 0 ? (long)c->got : len;
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

/* git: reads what is there: the request until its pkt-line is complete, then anything more until the client's FIN. */
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
    if (request_chunk(c, buf, (size_t)n) >= 0) {
      c->state = S_ANSWER;
      server_answer(fd); /* on to S_DISCARD, reading on in this loop, unless the send blocked */
    }
  }
}

/* backends.ts sourceServer: the first /(\d+)\.git\0 of the request line is the byte count; 0 without one. */
static uint64_t source_bytes(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '/') continue;
    size_t j = i + 1;
    uint64_t v = 0;
    for (; j < n && s[j] >= '0' && s[j] <= '9'; j++) v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(s[j] - '0');
    if (j > i + 1 && j + 5 <= n && memcmp(s + j, ".git", 5) == 0) return v; /* ".git" and its NUL */
  }
  return 0;
}

/* http: counts the complete requests ("\r\n\r\n", not overlapping) in a chunk; the match state carries over. */
static uint64_t http_requests(struct sconn *c, const unsigned char *p, size_t n) {
  unsigned st = c->crlf;
  uint64_t k = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char b = p[i];
    if (b == '\r') st = st == 2 ? 3 : 1;
    else if (b == '\n' && st == 1) st = 2;
    else if (b == '\n' && st == 3) {
      k++;
      st = 0;
    } else st = 0;
  }
  c->crlf = (uint8_t)st;
  return k;
}

/* sink, source, http: writes what is owed; -1 when the connection failed. */
static int stream_flush(int fd) {
  struct sconn *c = &conns[fd];
  for (;;) {
    const unsigned char *p;
    size_t len;
    if (c->small_sent < c->small_len) {
      p = (const unsigned char *)c->small + c->small_sent;
      len = c->small_len - c->small_sent;
    } else if (c->kind == K_SOURCE && c->state == S_STREAM && c->count > 0) {
      size_t off = (size_t)(c->pos % BLOCK);
      p = source_block + off;
      len = BLOCK - off; /* chunk by chunk, as backends.ts writes them */
      if (len > c->count) len = (size_t)c->count;
    } else if (c->kind == K_HTTP && c->count > 0) {
      p = http_answers + c->sent;
      len = http_answers_len - c->sent;
      uint64_t owed = c->count * http_answer_len - c->sent;
      if (len > owed) len = (size_t)owed;
    } else {
      break;
    }
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 0; /* the next EPOLLOUT edge resumes */
    if (n <= 0) return -1;
    if (c->small_sent < c->small_len) {
      c->small_sent = (uint8_t)(c->small_sent + n);
    } else if (c->kind == K_SOURCE) {
      c->pos += (uint64_t)n;
      c->count -= (uint64_t)n;
    } else {
      uint64_t done = c->sent + (uint64_t)n;
      c->count -= done / http_answer_len;
      c->sent = (uint32_t)(done % http_answer_len);
    }
  }
  if (c->kind == K_SOURCE && c->state == S_STREAM && c->count == 0) {
    shutdown(fd, SHUT_WR); /* backends.ts: socket.end() */
    c->state = S_SENT;
  }
  return 0;
}

/* Queues bytes for stream_flush (the sink's ACK and count: a few bytes). */
static void small_queue(struct sconn *c, const void *p, size_t n) {
  memmove(c->small, c->small + c->small_sent, (size_t)(c->small_len - c->small_sent));
  c->small_len = (uint8_t)(c->small_len - c->small_sent);
  c->small_sent = 0;
  if (n > sizeof c->small - c->small_len) n = sizeof c->small - c->small_len;
  memcpy(c->small + c->small_len, p, n);
  c->small_len = (uint8_t)(c->small_len + n);
}

/*
 * sink, source, http: all that can be done now. `readable`: 0, nothing to read; 1, read until a
 * read comes short (the receive queue was empty then: epoll(7) on stream sockets; what comes
 * later is a new edge), which saves a read per HTTP request; 2, until EAGAIN or EOF (the event
 * says the client's FIN or an error came: a short read may have left the EOF unread).
 */
static void stream_conn(int fd, int readable) {
  struct sconn *c = &conns[fd];
  for (;;) {
    if (stream_flush(fd) < 0) {
      server_close(fd);
      return;
    }
    /* Done: the client's FIN came and everything owed is written (source: and its FIN sent). */
    if (c->peer_fin && c->small_sent == c->small_len && (c->kind == K_SINK || (c->kind == K_SOURCE && c->state == S_SENT) || (c->kind == K_HTTP && c->count == 0))) {
      server_close(fd);
      return;
    }
    if (!readable || c->peer_fin) return;
    size_t cap = c->state == S_REQUEST ? 16384 : IO_BUF;
    ssize_t n = read(fd, io_buf, cap);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) server_close(fd); /* a reset */
      return;
    }
    if ((size_t)n < cap && readable == 1) readable = 0; /* handle this chunk, write, then wait for the next edge */
    if (n == 0) {
      if (c->state == S_REQUEST) { /* FIN before a request line: nothing to answer */
        server_close(fd);
        return;
      }
      c->peer_fin = 1;
      if (c->kind == K_SINK) { /* backends.ts: socket.on('end', () => socket.end(`${count}\n`)) */
        char text[24];
        int k = snprintf(text, sizeof text, "%llu\n", (unsigned long long)c->count);
        small_queue(c, text, (size_t)k);
      }
      continue;
    }
    if (c->kind == K_HTTP) {
      c->count += http_requests(c, io_buf, (size_t)n);
    } else if (c->state == S_STREAM) {
      if (c->kind == K_SINK) c->count += (uint64_t)n; /* source: discarded */
    } else {
      long len = request_chunk(c, io_buf, (size_t)n);
      if (len < 0) continue;
      c->state = S_STREAM;
      if (c->kind == K_SINK) {
        c->count = c->got - (uint64_t)len; /* what came after the request line counts */
        small_queue(c, sink_ack, sink_ack_len);
      } else {
        c->count = source_bytes(c->line, c->got < LINE_CAP ? c->got : LINE_CAP);
        free(c->line);
        c->line = NULL;
      }
    }
  }
}

/* Accepts every pending connection. A spare fd lets us shed a connection when out of fds. */
static int spare_fd = -1;
static void server_accept(int lfd, int kind) {
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
    conns[fd] = (struct sconn){.state = kind == K_HTTP ? S_STREAM : S_REQUEST, .kind = (uint8_t)kind};
    if (kind == K_SOURCE && (conns[fd].line = malloc(LINE_CAP)) == NULL) {
      close(fd);
      continue;
    }
    /* git: EPOLLOUT only once its answer blocks; the others write much, or owe answers at any time. */
    uint32_t events = EPOLLIN | EPOLLRDHUP | EPOLLET | (kind == K_GIT ? 0 : EPOLLOUT);
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, fd, &ev) < 0) {
      server_close(fd);
      continue;
    }
    /* the request is usually there already */
    if (kind == K_GIT) server_read(fd);
    else stream_conn(fd, 2);
  }
}

/* Listens on 127.0.0.1, port 0; returns the port. Listeners are told apart from connections by data.u64 >= MAX_FDS. */
static int server_listen(int index, int *lfd) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as Node's listen */
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
    die("listen on 127.0.0.1: %s", strerror(errno));
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)MAX_FDS + (uint64_t)index};
  if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  *lfd = fd;
  return ntohs(sa.sin_port);
}

static int server_main(int argc, char **argv) {
  int counts[4];
  counts[K_GIT] = (int)num_arg(argc, argv, "ports", 2, 0, MAX_PORTS);
  counts[K_SINK] = (int)num_arg(argc, argv, "sink", 0, 0, MAX_PORTS);
  counts[K_SOURCE] = (int)num_arg(argc, argv, "source", 0, 0, MAX_PORTS);
  counts[K_HTTP] = (int)num_arg(argc, argv, "http-raw", 0, 0, MAX_PORTS);
  long lifetime_ms = num_arg(argc, argv, "max-lifetime-ms", 30 * 60000, 1, 24L * 3600000);
  if (counts[K_GIT] > 0) answer = hex_arg(argc, argv, "answer", &answer_len);
  sink_ack = hex_arg_or(argc, argv, "ack", default_ack, DEFAULT_ACK_LEN, &sink_ack_len);
  if (sink_ack_len > 16) die("--ack: at most 16 bytes");
  const unsigned char *http_answer = hex_arg_or(argc, argv, "http-answer", default_http_answer, sizeof default_http_answer - 1, &http_answer_len);
  if (counts[K_HTTP] > 0) {
    /* The answer, repeated to fill ~64 KiB: up to that many owed answers go out in one write. */
    size_t copies = 65536 / http_answer_len > 1 ? 65536 / http_answer_len : 1;
    http_answers_len = copies * http_answer_len;
    http_answers = malloc(http_answers_len);
    if (http_answers == NULL) die("out of memory");
    for (size_t i = 0; i < copies; i++) memcpy(http_answers + i * http_answer_len, http_answer, http_answer_len);
  }
  if (counts[K_SOURCE] > 0) fill_block(source_block, BLOCK, "switchyard-bench-");
  epfd_s = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_s < 0) die("epoll_create1: %s", strerror(errno));
  spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

  int listeners[MAX_LISTENERS], kinds[MAX_LISTENERS], ports[MAX_LISTENERS];
  int k = 0;
  for (int kind = K_GIT; kind <= K_HTTP; kind++) {
    for (int i = 0; i < counts[kind]; i++, k++) {
      kinds[k] = kind;
      ports[k] = server_listen(k, &listeners[k]);
    }
  }
  /* stdin: its end (EOF or error) is our parent's. */
  struct epoll_event sev = {.events = EPOLLIN, .data.u64 = (uint64_t)MAX_FDS + MAX_LISTENERS};
  if (epoll_ctl(epfd_s, EPOLL_CTL_ADD, STDIN_FILENO, &sev) < 0) die("stdin must be a pipe or a terminal (epoll: %s)", strerror(errno));

  static const char *const keys[] = {"ports", "sink", "source", "httpRaw"};
  printf("{");
  for (int kind = K_GIT; kind <= K_HTTP; kind++) {
    printf("%s\"%s\":[", kind == K_GIT ? "" : ",", keys[kind]);
    int first = 1;
    for (int i = 0; i < k; i++) {
      if (kinds[i] != kind) continue;
      printf("%s%d", first ? "" : ",", ports[i]);
      first = 0;
    }
    printf("]");
  }
  printf("}\n");
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
      uint32_t what = events[e].events;
      if (tag == (uint64_t)MAX_FDS + MAX_LISTENERS) {
        char buf[256];
        ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) return 0;
      } else if (tag >= MAX_FDS) {
        server_accept(listeners[tag - MAX_FDS], kinds[tag - MAX_FDS]);
      } else {
        int fd = (int)tag;
        struct sconn *c = &conns[fd];
        if (c->state == S_FREE) continue;
        if (c->kind != K_GIT) {
          stream_conn(fd, (what & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ? 2 : (what & EPOLLIN) ? 1 : 0);
          continue;
        }
        if (c->state == S_ANSWER && (what & EPOLLOUT)) server_answer(fd);
        if (c->state == S_REQUEST || c->state == S_DISCARD) server_read(fd);
        else if (c->state == S_ANSWER && (what & (EPOLLERR | EPOLLHUP))) server_close(fd);
      }
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 2 && strcmp(argv[1], "client") == 0) return client_main(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "up") == 0) return bulk_main(argc, argv, 1);
  if (argc >= 2 && strcmp(argv[1], "down") == 0) return bulk_main(argc, argv, 0);
  if (argc >= 2 && strcmp(argv[1], "server") == 0) return server_main(argc, argv);
  fprintf(stderr, "usage: rate client --port P --concurrency C --warmup-ms W --duration-ms D [--max-conns N]\n"
                  "                   --request-a HEX --request-b HEX --expect-head HEX [--expect-bytes N]\n"
                  "       rate up --port P [--bytes N] [--timeout-ms T] [--ack HEX] [--sync 1]\n"
                  "       rate down --port P [--bytes N] [--timeout-ms T] [--sync 1]\n"
                  "       rate server [--ports K --answer HEX] [--sink S [--ack HEX]] [--source S]\n"
                  "                   [--http-raw H [--http-answer HEX]] [--max-lifetime-ms L]\n");
  return 2;
}
