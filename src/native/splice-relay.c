/*
 * The native relay: once a connection is routed and its backend connected, Switchyard hands
 * both sockets here, and the bytes flow in C on the proxy's own event loop, not through two
 * net.Socket streams.
 *
 *   - One epoll set of the relay's own, watched by the loop through a single uv_poll handle.
 *     Sockets are registered edge-triggered once; readiness is remembered per socket.
 *   - Bytes move with splice(2) through a pipe (socket -> pipe -> socket, no copy to user
 *     space). A pipe is lent to a direction only while it holds bytes, so an idle relay owns
 *     none; without a pipe, read(2)/write(2) through one shared buffer do the same.
 *   - Backpressure: a direction reads only once everything it read has been written; bytes
 *     the destination cannot take stay in the pipe (or a small heap copy) until EPOLLOUT.
 *   - A FIN is forwarded as shutdown(SHUT_WR) once what came before it is written (a
 *     half-close); when both directions have forwarded theirs, the relay is done. A reset is
 *     passed on as a reset.
 *   - Fairness: one direction moves at most `budget` bytes per turn; a relay with more to do
 *     is queued and resumed from an idle handle, after the loop has polled for other I/O.
 *
 * JavaScript sees (ids are small integers, reused once a relay is gone):
 *   init(onClosed, onDialed, maxPipes?)                         at most maxPipes lent at once
 *   add(clientFd, upstreamFd, toUpstream?, toClient?) -> id   two connected sockets
 *   dial(ip, port) -> id; then onDialed(id, errno)              the upstream connected here,
 *   adopt(clientFd, id, toUpstream?, toClient?)                 with no net.Socket for it,
 *   release(id) -> fd                                           or handed back to Node
 *   bytes(id), idleMs(id), destroy(id, reset), stats()
 * onClosed(id, bytesIn, bytesOut, errno) is called once per relay that ends by itself;
 * destroy() ends one without calling it. Descriptors passed in are duplicated: the caller
 * closes its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h> /* snprintf */
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define CHUNK (64 * 1024)
#define TURN_BUDGET (256 * 1024)
#define SPARE_PIPES 64
#define DEFAULT_MAX_LENT 1024 /* pipes held by directions at once (two descriptors each) */
#define MAX_EVENTS 256

typedef struct {
  int pipe[2];        /* lent from the pool while bytes are in it, else -1 */
  size_t in_pipe;     /* bytes in the pipe */
  char *pending;      /* heap bytes not yet written (initial data, or a short write) */
  size_t pending_off, pending_len;
  uint64_t read, written;
  uint8_t eof;        /* the source sent FIN */
  uint8_t shut;       /* FIN forwarded to the destination */
} direction_t;

typedef struct relay {
  int fd[2];          /* 0 = client, 1 = upstream */
  uint8_t readable[2], writable[2];
  direction_t dir[2]; /* dir[i] reads fd[i] and writes fd[1 - i] */
  uint64_t last_activity;
  uint32_t id;
  uint8_t dialing;    /* connecting the upstream socket; no client yet */
  uint8_t queued;     /* on the more-to-do queue */
  struct relay *next_queued;
} relay_t;

typedef struct {
  napi_env env;
  napi_ref on_closed;
  napi_ref on_dialed;
  napi_async_context async_context;
  uv_loop_t *loop;
  uv_poll_t poll;
  uv_idle_t idle;
  int epfd;
  relay_t **slots;
  uint32_t nslots;
  uint32_t *free_ids;
  uint32_t nfree;
  uint32_t live;      /* relays open; the loop is kept alive while there are any */
  int spare[SPARE_PIPES][2];
  int nspare;
  uint32_t lent, max_lent; /* pipes held by directions now, and the most at once */
  relay_t *queue_head, *queue_tail;
  char buffer[CHUNK];
} state_t;

/* ---- pipes: a small pool, so a busy relay does not pay pipe2() + close() per chunk ---- */

/*
 * Lends a pipe to a direction. At most max_lent at once: relays whose destinations do not read
 * would otherwise hold two descriptors each, which clients could use to exhaust the process's
 * descriptors (every tenant's). Past the cap, or when pipe2() fails, the caller copies instead.
 */
static int pipe_take(state_t *s, direction_t *d) {
  if (d->pipe[0] >= 0) return 1;
  if (s->lent >= s->max_lent) return 0;
  if (s->nspare > 0) {
    s->nspare--;
    d->pipe[0] = s->spare[s->nspare][0];
    d->pipe[1] = s->spare[s->nspare][1];
  } else if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
    d->pipe[0] = d->pipe[1] = -1;
    return 0;
  }
  s->lent++;
  return 1;
}

/* An empty pipe goes back to the pool (or is closed when the pool is full). */
static void pipe_give(state_t *s, direction_t *d) {
  if (d->pipe[0] < 0) return;
  s->lent--;
  if (d->in_pipe == 0 && s->nspare < SPARE_PIPES) {
    s->spare[s->nspare][0] = d->pipe[0];
    s->spare[s->nspare][1] = d->pipe[1];
    s->nspare++;
  } else {
    close(d->pipe[0]);
    close(d->pipe[1]);
  }
  d->pipe[0] = d->pipe[1] = -1;
  d->in_pipe = 0;
}

/* ---- one direction ---- */

typedef enum { MOVED_ALL, WAITING, FAILED } pump_result;

/* Writes what the direction holds to `dst`. MOVED_ALL when nothing is left. */
static pump_result flush(state_t *s, relay_t *r, int i, int *err) {
  direction_t *d = &r->dir[i];
  int dst = r->fd[1 - i];
  while (d->pending_off < d->pending_len) {
    ssize_t n = write(dst, d->pending + d->pending_off, d->pending_len - d->pending_off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { r->writable[1 - i] = 0; return WAITING; }
      *err = errno;
      return FAILED;
    }
    d->pending_off += (size_t)n;
    d->written += (uint64_t)n;
  }
  if (d->pending != NULL) {
    free(d->pending);
    d->pending = NULL;
    d->pending_off = d->pending_len = 0;
  }
  while (d->in_pipe > 0) {
    ssize_t n = splice(d->pipe[0], NULL, dst, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { r->writable[1 - i] = 0; return WAITING; }
      *err = errno;
      return FAILED;
    }
    d->in_pipe -= (size_t)n;
    d->written += (uint64_t)n;
  }
  pipe_give(s, d);
  return MOVED_ALL;
}

/* Keeps a copy of bytes `dst` did not take. */
static int keep(direction_t *d, const char *bytes, size_t len) {
  d->pending = malloc(len);
  if (d->pending == NULL) return 0;
  memcpy(d->pending, bytes, len);
  d->pending_off = 0;
  d->pending_len = len;
  return 1;
}

/*
 * Moves bytes from fd[i] to fd[1 - i] until the source has none, the destination is full,
 * or the turn's budget is spent. Returns FAILED (with *err) when a socket failed, WAITING
 * when it stopped on readiness, MOVED_ALL when it stopped on the budget with more to do.
 */
static pump_result pump(state_t *s, relay_t *r, int i, int *err) {
  direction_t *d = &r->dir[i];
  int src = r->fd[i], dst = r->fd[1 - i];
  size_t moved = 0;
  for (;;) {
    pump_result flushed = flush(s, r, i, err);
    if (flushed != MOVED_ALL) return flushed;
    if (d->eof) {
      if (!d->shut) {
        d->shut = 1;
        if (shutdown(dst, SHUT_WR) < 0 && errno != ENOTCONN) { *err = errno; return FAILED; }
      }
      return WAITING;
    }
    if (!r->readable[i] || !r->writable[1 - i]) return WAITING;
    if (moved >= TURN_BUDGET) return MOVED_ALL;
    ssize_t n;
    if (pipe_take(s, d)) {
      n = splice(src, NULL, d->pipe[1], NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) d->in_pipe = (size_t)n;
    } else {
      n = read(src, s->buffer, CHUNK);
      if (n > 0) {
        ssize_t w = write(dst, s->buffer, (size_t)n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) { *err = errno; return FAILED; }
        if (w < 0) w = 0;
        d->written += (uint64_t)w;
        if (w < n && !keep(d, s->buffer + w, (size_t)(n - w))) { *err = ENOMEM; return FAILED; }
      }
    }
    if (n < 0) {
      int e = errno;
      pipe_give(s, d);
      if (e == EINTR) continue;
      if (e == EAGAIN) { r->readable[i] = 0; return WAITING; }
      *err = e;
      return FAILED;
    }
    if (n == 0) {
      pipe_give(s, d);
      d->eof = 1;
      continue;
    }
    d->read += (uint64_t)n;
    moved += (size_t)n;
    r->last_activity = uv_now(s->loop);
  }
}

/* ---- relays ---- */

static void on_idle(uv_idle_t *handle);

static void enqueue(state_t *s, relay_t *r) {
  if (r->queued) return;
  r->queued = 1;
  r->next_queued = NULL;
  if (s->queue_tail != NULL) s->queue_tail->next_queued = r;
  else s->queue_head = r;
  s->queue_tail = r;
  if (!uv_is_active((uv_handle_t *)&s->idle)) uv_idle_start(&s->idle, on_idle);
}

static void dequeue(state_t *s, relay_t *r) {
  if (!r->queued) return;
  relay_t **p = &s->queue_head, *prev = NULL;
  while (*p != NULL && *p != r) { prev = *p; p = &(*p)->next_queued; }
  if (*p == r) {
    *p = r->next_queued;
    if (s->queue_tail == r) s->queue_tail = prev;
  }
  r->queued = 0;
}

/* Closes both sockets (a reset when asked) and frees the relay. */
static void release(state_t *s, relay_t *r, int reset) {
  dequeue(s, r);
  for (int k = 0; k < 2; k++) {
    if (reset && r->fd[k] >= 0) {
      struct linger lg = { 1, 0 };
      setsockopt(r->fd[k], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (r->fd[k] >= 0) close(r->fd[k]); /* the last reference: this also leaves the epoll set */
    direction_t *d = &r->dir[k];
    free(d->pending);
    pipe_give(s, d); /* closed if bytes are still in it */
  }
  s->slots[r->id] = NULL;
  s->free_ids[s->nfree++] = r->id;
  free(r);
  if (--s->live == 0) uv_unref((uv_handle_t *)&s->poll);
}

/* Calls a JavaScript callback with numbers, from the event loop (microtasks run after it). */
static void call_js(state_t *s, napi_ref ref, size_t argc, const double *args) {
  napi_env env = s->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[4], result;
  napi_get_reference_value(env, ref, &cb);
  napi_get_global(env, &recv); /* napi_make_callback wants an object */
  for (size_t k = 0; k < argc && k < 4; k++) napi_create_double(env, args[k], &argv[k]);
  if (napi_make_callback(env, s->async_context, recv, cb, argc, argv, &result) == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

static void report_closed(state_t *s, uint32_t id, uint64_t bytes_in, uint64_t bytes_out, int err) {
  double args[4] = { id, (double)bytes_in, (double)bytes_out, err };
  call_js(s, s->on_closed, 4, args);
}

/* A connect finished: onDialed(id, 0), or onDialed(id, errno) with the relay already gone. */
static void finish_dial(state_t *s, relay_t *r) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(r->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  r->dialing = 0;
  uint32_t id = r->id;
  if (err != 0) release(s, r, 0);
  double args[2] = { id, err };
  call_js(s, s->on_dialed, 2, args);
}

/* Moves what can move both ways; ends the relay when both FINs are through or a socket failed. */
static void service(state_t *s, relay_t *r) {
  if (r->fd[0] < 0) return; /* dialed, not adopted yet */
  int err = 0;
  pump_result a = pump(s, r, 0, &err);
  pump_result b = a == FAILED ? FAILED : pump(s, r, 1, &err);
  if (a == FAILED || b == FAILED || (r->dir[0].shut && r->dir[1].shut)) {
    /* err is 0 unless a socket failed; a reset is passed on as a reset. */
    uint32_t id = r->id;
    uint64_t in = r->dir[0].read, out = r->dir[1].written;
    release(s, r, err == ECONNRESET);
    report_closed(s, id, in, out, err);
    return;
  }
  if (a == MOVED_ALL || b == MOVED_ALL) enqueue(s, r);
}

static void on_epoll(uv_poll_t *handle, int status, int events) {
  (void)events;
  state_t *s = handle->data;
  if (status < 0) return;
  struct epoll_event ev[MAX_EVENTS];
  int n = epoll_wait(s->epfd, ev, MAX_EVENTS, 0);
  for (int k = 0; k < n; k++) {
    uint32_t id = (uint32_t)(ev[k].data.u64 >> 1);
    int side = (int)(ev[k].data.u64 & 1);
    relay_t *r = id < s->nslots ? s->slots[id] : NULL;
    if (r == NULL) continue; /* ended earlier in this batch */
    uint32_t e = ev[k].events;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) r->readable[side] = 1;
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) r->writable[side] = 1;
    if (r->dialing) finish_dial(s, r);
    else service(s, r);
  }
}

/* Resumes the relays that stopped on their budget, each once, in the order they stopped. */
static void on_idle(uv_idle_t *handle) {
  state_t *s = handle->data;
  size_t count = 0;
  for (relay_t *r = s->queue_head; r != NULL; r = r->next_queued) count++;
  /* One at a time off the live queue: a relay may end, or be destroyed, during another's turn. */
  while (count-- > 0 && s->queue_head != NULL) {
    relay_t *r = s->queue_head;
    s->queue_head = r->next_queued;
    if (s->queue_head == NULL) s->queue_tail = NULL;
    r->queued = 0;
    service(s, r); /* may queue it again, at the tail */
  }
  if (s->queue_head == NULL) uv_idle_stop(&s->idle);
}

/* ---- JavaScript bindings ---- */

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, "ERR_RELAY", "native relay: " #call " failed"); \
      return NULL;                                                      \
    }                                                                   \
  } while (0)

static state_t *state_of(napi_env env) {
  state_t *s = NULL;
  napi_get_instance_data(env, (void **)&s);
  return s;
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "native relay: %s: %s", what, strerror(err));
  napi_throw_error(env, "ERR_RELAY", message);
  return NULL;
}

static relay_t *relay_arg(napi_env env, state_t *s, napi_value v) {
  uint32_t id;
  if (s == NULL || napi_get_value_uint32(env, v, &id) != napi_ok || id >= s->nslots || s->slots[id] == NULL) {
    napi_throw_error(env, "ERR_RELAY", "native relay: no such relay");
    return NULL;
  }
  return s->slots[id];
}

/* Reads a call's arguments (up to `max`; missing ones are undefined) and the relay the first names. */
static relay_t *relay_call(napi_env env, napi_callback_info info, size_t max, napi_value *argv, state_t **state) {
  size_t argc = max;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, "ERR_RELAY", "native relay: bad arguments");
    return NULL;
  }
  *state = state_of(env);
  return relay_arg(env, *state, argc > 0 ? argv[0] : NULL);
}

static void on_poll_closed(uv_handle_t *handle) { (void)handle; }

static void cleanup(void *data) {
  state_t *s = data;
  for (uint32_t k = 0; k < s->nslots; k++) if (s->slots[k] != NULL) release(s, s->slots[k], 0);
  while (s->nspare > 0) {
    s->nspare--;
    close(s->spare[s->nspare][0]);
    close(s->spare[s->nspare][1]);
  }
  uv_close((uv_handle_t *)&s->poll, on_poll_closed);
  uv_close((uv_handle_t *)&s->idle, on_poll_closed);
  close(s->epfd);
  /* The handles' memory must outlive their close callbacks, which run after this hook: keep it. */
}

/* init(onClosed, onDialed, maxPipes?) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (state_of(env) != NULL) {
    napi_throw_error(env, "ERR_RELAY", "native relay: already initialised");
    return NULL;
  }
  napi_valuetype t0, t1;
  if (argc < 2 || napi_typeof(env, argv[0], &t0) != napi_ok || napi_typeof(env, argv[1], &t1) != napi_ok ||
      t0 != napi_function || t1 != napi_function) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: init(onClosed, onDialed) takes two functions");
    return NULL;
  }
  state_t *s = calloc(1, sizeof *s);
  if (s == NULL) return throw_errno(env, "init", ENOMEM);
  s->env = env;
  s->max_lent = DEFAULT_MAX_LENT;
  if (argc > 2) {
    uint32_t max_lent;
    if (napi_get_value_uint32(env, argv[2], &max_lent) == napi_ok) s->max_lent = max_lent;
  }
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (s->epfd < 0) { int e = errno; free(s); return throw_errno(env, "epoll_create1", e); }
  CHECK(napi_get_uv_event_loop(env, &s->loop));
  CHECK(napi_create_reference(env, argv[0], 1, &s->on_closed));
  CHECK(napi_create_reference(env, argv[1], 1, &s->on_dialed));
  CHECK(napi_create_string_utf8(env, "SwitchyardRelay", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &s->async_context));
  uv_poll_init(s->loop, &s->poll, s->epfd);
  s->poll.data = s;
  uv_idle_init(s->loop, &s->idle);
  s->idle.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_epoll);
  /* Like a socket, an open relay keeps the process alive (a graceful stop waits for it); the
     poll handle is referenced only while there is one. */
  uv_unref((uv_handle_t *)&s->poll);
  uv_unref((uv_handle_t *)&s->idle);
  CHECK(napi_set_instance_data(env, s, NULL, NULL));
  napi_add_env_cleanup_hook(env, cleanup, s);
  return NULL;
}

static int grow(state_t *s) {
  uint32_t n = s->nslots == 0 ? 1024 : s->nslots * 2;
  relay_t **slots = realloc(s->slots, n * sizeof *slots);
  if (slots == NULL) return 0;
  s->slots = slots;
  uint32_t *free_ids = realloc(s->free_ids, n * sizeof *free_ids);
  if (free_ids == NULL) return 0;
  s->free_ids = free_ids;
  for (uint32_t k = n; k > s->nslots; k--) {
    slots[k - 1] = NULL;
    free_ids[s->nfree++] = k - 1;
  }
  s->nslots = n;
  return 1;
}

static state_t *live_state(napi_env env) {
  state_t *s = state_of(env);
  if (s == NULL) napi_throw_error(env, "ERR_RELAY", "native relay: not initialised");
  return s;
}

/* A relay with no sockets yet, in a slot of its own (it counts as open from now on). */
static relay_t *new_relay(state_t *s) {
  if (s->nfree == 0 && !grow(s)) return NULL;
  relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  for (int k = 0; k < 2; k++) r->dir[k].pipe[0] = r->dir[k].pipe[1] = r->fd[k] = -1;
  r->id = s->free_ids[--s->nfree];
  s->slots[r->id] = r;
  if (s->live++ == 0) uv_ref((uv_handle_t *)&s->poll);
  r->last_activity = uv_now(s->loop);
  return r;
}

/* Edge-triggered, once: registering reports the socket's present state (data, FIN, room). */
static int watch(state_t *s, relay_t *r, int k) {
  struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = ((uint64_t)r->id << 1) | (uint64_t)k };
  return epoll_ctl(s->epfd, EPOLL_CTL_ADD, r->fd[k], &ev);
}

/* Copies an optional Buffer argument as the direction's first bytes. */
static int initial_bytes(napi_env env, napi_value v, direction_t *d) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok) return 0;
  if (type == napi_undefined || type == napi_null) return 1;
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  if (!is_buffer) return 0;
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return 0;
  return len == 0 || keep(d, data, len);
}

/* The bytes owed to each side (arguments 2 and 3); false, with an exception, if they are not Buffers. */
static int owed_bytes(napi_env env, size_t argc, napi_value *argv, relay_t *r) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (initial_bytes(env, argc > 2 ? argv[2] : undefined, &r->dir[0]) &&
      initial_bytes(env, argc > 3 ? argv[3] : undefined, &r->dir[1]))
    return 1;
  napi_throw_type_error(env, "ERR_RELAY", "native relay: the bytes owed to each side must be Buffers");
  return 0;
}

/*
 * Writes the bytes owed to each side now rather than at the sockets' first EPOLLOUT, a turn of
 * the loop later: the backend gets the request sooner. Failures are left for that turn to
 * find, so that JavaScript is not called back from inside add() or adopt().
 */
static void send_owed(state_t *s, relay_t *r) {
  int err = 0;
  for (int k = 0; k < 2; k++) if (r->dir[k].pending != NULL) flush(s, r, k, &err);
}

static napi_value id_value(napi_env env, relay_t *r) {
  napi_value result;
  CHECK(napi_create_uint32(env, r->id, &result));
  return result;
}

/* Duplicates the caller's descriptor as side k and watches it; false, with an exception, if it fails. */
static int take_fd(napi_env env, state_t *s, relay_t *r, int k, int32_t given) {
  r->fd[k] = fcntl(given, F_DUPFD_CLOEXEC, 0);
  if (r->fd[k] < 0) {
    throw_errno(env, "dup", errno);
    return 0;
  }
  if (watch(s, r, k) < 0) {
    throw_errno(env, "epoll_ctl", errno);
    return 0;
  }
  return 1;
}

/* add(clientFd, upstreamFd, toUpstream?, toClient?) -> id: relays two connected sockets. */
static napi_value js_add(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  state_t *s = live_state(env);
  if (s == NULL) return NULL;
  int32_t given[2];
  if (argc < 2 || napi_get_value_int32(env, argv[0], &given[0]) != napi_ok ||
      napi_get_value_int32(env, argv[1], &given[1]) != napi_ok || given[0] < 0 || given[1] < 0) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: add() takes two file descriptors");
    return NULL;
  }
  relay_t *r = new_relay(s);
  if (r == NULL) return throw_errno(env, "add", ENOMEM);
  if (!owed_bytes(env, argc, argv, r) || !take_fd(env, s, r, 0, given[0]) || !take_fd(env, s, r, 1, given[1])) {
    release(s, r, 0);
    return NULL;
  }
  send_owed(s, r);
  return id_value(env, r);
}

/*
 * dial(ip, port) -> id: starts a non-blocking connect (TCP_NODELAY) to an IPv4 or IPv6
 * address; onDialed(id, errno) follows. On success the id waits for adopt(); on failure it is
 * gone. Errors the connect reports at once (EADDRNOTAVAIL, say) throw.
 */
static napi_value js_dial(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  state_t *s = live_state(env);
  if (s == NULL) return NULL;
  char ip[64];
  size_t len = 0;
  uint32_t port = 0;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], ip, sizeof ip, &len) != napi_ok ||
      napi_get_value_uint32(env, argv[1], &port) != napi_ok || port == 0 || port > 65535) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: dial() takes an IP address and a port");
    return NULL;
  }
  struct sockaddr_storage addr;
  memset(&addr, 0, sizeof addr);
  socklen_t addrlen;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
  if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    addrlen = sizeof *v4;
  } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    addrlen = sizeof *v6;
  } else {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: dial() takes an IP address");
    return NULL;
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    return throw_errno(env, "connect", e);
  }
  relay_t *r = new_relay(s);
  if (r == NULL) {
    close(fd);
    return throw_errno(env, "dial", ENOMEM);
  }
  r->fd[1] = fd;
  r->dialing = 1;
  if (watch(s, r, 1) < 0) {
    int e = errno;
    release(s, r, 0);
    return throw_errno(env, "epoll_ctl", e);
  }
  return id_value(env, r);
}

/* The relay must be dialed and not yet adopted (NULL, with an exception, if not). */
static relay_t *dialed(napi_env env, relay_t *r) {
  if (r != NULL && (r->dialing || r->fd[0] >= 0)) {
    napi_throw_error(env, "ERR_RELAY", "native relay: that relay is not a connected, unadopted dial");
    return NULL;
  }
  return r;
}

/* adopt(clientFd, id, toUpstream?, toClient?): relays a dialed upstream with a client. */
static napi_value js_adopt(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  state_t *s = live_state(env);
  if (s == NULL) return NULL;
  int32_t given;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &given) != napi_ok || given < 0) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: adopt() takes a file descriptor and a relay");
    return NULL;
  }
  relay_t *r = dialed(env, relay_arg(env, s, argv[1]));
  if (r == NULL) return NULL;
  if (!owed_bytes(env, argc, argv, r)) return NULL;
  if (!take_fd(env, s, r, 0, given)) {
    for (int k = 0; k < 2; k++) {
      free(r->dir[k].pending);
      r->dir[k].pending = NULL;
      r->dir[k].pending_off = r->dir[k].pending_len = 0;
    }
    if (r->fd[0] >= 0) close(r->fd[0]);
    r->fd[0] = -1;
    return NULL;
  }
  r->last_activity = uv_now(s->loop);
  send_owed(s, r);
  return NULL;
}

/* release(id) -> fd: gives a dialed, unadopted upstream socket to the caller, who must close it. */
static napi_value js_release(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  state_t *s;
  relay_t *r = dialed(env, relay_call(env, info, 1, argv, &s));
  if (r == NULL) return NULL;
  int fd = r->fd[1];
  struct epoll_event dummy;
  epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, &dummy); /* it stays open: leave the set explicitly */
  r->fd[1] = -1;
  release(s, r, 0);
  CHECK(napi_create_int32(env, fd, &result));
  return result;
}

/* [bytesIn, bytesOut]: from the client, to the client. */
static napi_value bytes_value(napi_env env, relay_t *r) {
  napi_value result, v;
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_create_double(env, (double)r->dir[0].read, &v));
  CHECK(napi_set_element(env, result, 0, v));
  CHECK(napi_create_double(env, (double)r->dir[1].written, &v));
  CHECK(napi_set_element(env, result, 1, v));
  return result;
}

/* bytes(id) -> [bytesIn, bytesOut] */
static napi_value js_bytes(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  state_t *s;
  relay_t *r = relay_call(env, info, 1, argv, &s);
  return r == NULL ? NULL : bytes_value(env, r);
}

/* idleMs(id) -> milliseconds since bytes last moved (or since add()). */
static napi_value js_idle_ms(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  state_t *s;
  relay_t *r = relay_call(env, info, 1, argv, &s);
  if (r == NULL) return NULL;
  uint64_t now = uv_now(s->loop);
  CHECK(napi_create_double(env, now > r->last_activity ? (double)(now - r->last_activity) : 0, &result));
  return result;
}

/* destroy(id, reset) -> [bytesIn, bytesOut]: closes both sockets now; onClosed is not called. */
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  state_t *s;
  relay_t *r = relay_call(env, info, 2, argv, &s);
  if (r == NULL) return NULL;
  bool reset = false;
  napi_get_value_bool(env, argv[1], &reset); /* absent or not a boolean: no reset */
  napi_value result = bytes_value(env, r);
  if (result == NULL) return NULL;
  release(s, r, reset);
  return result;
}

/* stats() -> { relays, lentPipes, sparePipes }: open relays, pipes holding bytes, pipes kept for reuse. */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, v;
  state_t *s = state_of(env);
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_uint32(env, s == NULL ? 0 : s->live, &v));
  CHECK(napi_set_named_property(env, result, "relays", v));
  CHECK(napi_create_uint32(env, s == NULL ? 0 : s->lent, &v));
  CHECK(napi_set_named_property(env, result, "lentPipes", v));
  CHECK(napi_create_uint32(env, s == NULL ? 0 : (uint32_t)s->nspare, &v));
  CHECK(napi_set_named_property(env, result, "sparePipes", v));
  return result;
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "init", NULL, js_init, NULL, NULL, NULL, napi_enumerable, NULL },
    { "add", NULL, js_add, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dial", NULL, js_dial, NULL, NULL, NULL, napi_enumerable, NULL },
    { "adopt", NULL, js_adopt, NULL, NULL, NULL, napi_enumerable, NULL },
    { "release", NULL, js_release, NULL, NULL, NULL, napi_enumerable, NULL },
    { "bytes", NULL, js_bytes, NULL, NULL, NULL, napi_enumerable, NULL },
    { "idleMs", NULL, js_idle_ms, NULL, NULL, NULL, napi_enumerable, NULL },
    { "destroy", NULL, js_destroy, NULL, NULL, NULL, napi_enumerable, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
