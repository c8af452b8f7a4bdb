/*
 * The native data path: Switchyard's tenant ports are accepted here, clients are read here
 * until their router decides, and once a backend is connected the bytes flow in C on the
 * proxy's own event loop. No net.Socket is built for either side.
 *
 *   - One epoll set of the data path's own, watched by the loop through a single uv_poll
 *     handle. Listening sockets are level-triggered; connections are registered
 *     edge-triggered once, and their readiness is remembered per socket.
 *   - A client is accepted with its first bytes when they are already there, and every chunk
 *     before the decision goes to JavaScript, which routes it. Replies are written from here.
 *   - Once relaying, bytes move with splice(2) through a pipe (socket -> pipe -> socket, no
 *     copy to user space). A pipe is lent to a direction only while it holds bytes, so an idle
 *     relay owns none; without a pipe, read(2)/write(2) through one shared buffer do the same.
 *   - Backpressure: a direction reads only once everything it read has been written; bytes
 *     the destination cannot take stay in the pipe (or a small heap copy) until EPOLLOUT.
 *   - A FIN is forwarded as shutdown(SHUT_WR) once what came before it is written (a
 *     half-close); when both directions have forwarded theirs, the relay is done. A reset is
 *     passed on as a reset.
 *   - Fairness: one direction moves at most `budget` bytes per turn, and a listener accepts
 *     at most ACCEPT_BATCH clients; an entry with more to do is queued and resumed from an
 *     idle handle, after the loop has polled for other I/O.
 *
 * An entry (a small integer id, reused once it is gone) lives through these states:
 *
 *   RECEIVING --end()--> CLOSING --client's FIN--> gone                   a client
 *       \--join() or attach()--> RELAYING --both FINs, or a failure--> gone
 *   DIALING --connected--> DIALED --consumed by join()                     an upstream
 *
 * JavaScript sees:
 *   init(onAccepted, onReceived, onClosed, onDialed, maxPipes?)
 *   listen(fd) -> listener; unlisten(listener)       a bound, listening socket (duplicated)
 *     onAccepted(listener, id, remoteAddress, remotePort, localAddress, localPort, chunk?)
 *     onReceived(id, chunk | null)                   a chunk before the decision; null = FIN
 *   send(id, bytes), pause(id), end(id, bytes?)      replies, backpressure, closing the client
 *   dial(ip, port) -> id; then onDialed(id, errno)   an upstream connected here, for join()
 *   join(id, dialed, toUpstream?, toClient?)         relay the client with its dialed upstream
 *   attach(id, fd, toUpstream?, toClient?)           ... or with a socket connected elsewhere
 *   bytes(id), idleMs(id), destroy(id, reset), stats()
 * onClosed(id, bytesIn, bytesOut, errno) is called once per client or relay that ends by
 * itself; destroy() ends one without calling it. Descriptors passed in are duplicated: the
 * caller closes its own.
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
#define ACCEPT_BATCH 64      /* clients one listener accepts per turn */
#define LISTENER_TAG (1ULL << 63)

typedef struct {
  int pipe[2];        /* lent from the pool while bytes are in it, else -1 */
  size_t in_pipe;     /* bytes in the pipe */
  char *pending;      /* heap bytes not yet written (owed bytes, or a short write) */
  size_t pending_off, pending_len;
  uint64_t read, written;
  uint8_t eof;        /* the source sent FIN */
  uint8_t shut;       /* FIN forwarded to the destination */
  uint8_t streaming;  /* reads fill the buffer: splice, rather than copy message by message */
} direction_t;

typedef enum { RECEIVING, CLOSING, DIALING, DIALED, RELAYING } entry_state;

typedef struct relay {
  int fd[2];          /* 0 = client, 1 = upstream */
  uint8_t readable[2], writable[2];
  uint8_t hangup[2];  /* a FIN or an error was reported: a short read does not mean drained */
  uint8_t error;      /* an error was reported on the client (a reset): noticed even while paused */
  direction_t dir[2]; /* dir[i] reads fd[i] and writes fd[1 - i]; dir[1] also carries replies */
  uint64_t last_activity;
  uint32_t id;
  uint32_t serial;    /* tells this entry from an earlier one with the same id */
  uint8_t state;      /* entry_state */
  uint8_t paused;     /* RECEIVING: do not read (the client waits in the kernel) */
  uint8_t queued;     /* on the more-to-do queue */
  struct relay *next_queued;
} relay_t;

typedef struct {
  napi_env env;
  napi_ref on_accepted, on_received, on_closed, on_dialed;
  napi_async_context async_context;
  uv_loop_t *loop;
  uv_poll_t poll;
  uv_idle_t idle;
  int epfd;
  relay_t **slots;
  uint32_t nslots;
  uint32_t *free_ids;
  uint32_t nfree;
  uint32_t live;      /* entries open; the loop is kept alive while there are any, */
  uint32_t listening; /* or any listener */
  uint32_t serial;
  int *listeners;     /* listening descriptors by listener id, -1 when free */
  uint32_t nlisteners;
  int reserve_fd;     /* given up to accept-and-close a client when descriptors run out */
  uint64_t shed;      /* clients so closed */
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

/* Appends bytes the destination has not taken yet (owed bytes, or the rest of a short write). */
static int keep(direction_t *d, const char *bytes, size_t len) {
  size_t left = d->pending_len - d->pending_off;
  char *pending = malloc(left + len);
  if (pending == NULL) return 0;
  if (left > 0) memcpy(pending, d->pending + d->pending_off, left);
  memcpy(pending + left, bytes, len);
  free(d->pending);
  d->pending = pending;
  d->pending_off = 0;
  d->pending_len = left + len;
  return 1;
}

/*
 * Moves bytes from fd[i] to fd[1 - i] until the source has none, the destination is full,
 * or the turn's budget is spent. Returns FAILED (with *err) when a socket failed, WAITING
 * when it stopped on readiness, MOVED_ALL when it stopped on the budget with more to do.
 *
 * Two ways, chosen per direction as it goes. Messages (a request, a response) are copied:
 * read(2) into the shared buffer and write(2) out, and a read shorter than the buffer means
 * the socket is drained (edge-triggered, anything newer is a new event), so no third call
 * meets EAGAIN. A read that fills the buffer means a stream: splice(2) through a pipe from
 * then on, with no copy, until the source goes quiet again. A splice's length cannot tell
 * drained (the pipe may have stopped it), so a stream reads on until EAGAIN.
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
    int copied = !d->streaming || !pipe_take(s, d);
    if (!copied) {
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
      if (e == EAGAIN) {
        r->readable[i] = 0;
        if (moved < CHUNK) d->streaming = 0; /* quiet again: messages */
        return WAITING;
      }
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
    if (!copied) continue;
    if ((size_t)n == CHUNK) d->streaming = 1;
    else if (!r->hangup[i]) r->readable[i] = 0; /* a short read: drained */
  }
}

/* ---- entries ---- */

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

/* The entry `id` if it is still the one with `serial` (JavaScript may have ended it meanwhile). */
static relay_t *still(state_t *s, uint32_t id, uint32_t serial) {
  relay_t *r = id < s->nslots ? s->slots[id] : NULL;
  return r != NULL && r->serial == serial ? r : NULL;
}

/* Like a socket or a server, an open connection or listener keeps the process alive (a graceful
   stop waits for connections); the poll handle is referenced only while there is one. */
static void hold_loop(state_t *s) {
  if (s->live + s->listening > 0) uv_ref((uv_handle_t *)&s->poll);
  else uv_unref((uv_handle_t *)&s->poll);
}

/* Closes the entry's sockets (a reset when asked) and frees it. */
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
  s->live--;
  hold_loop(s);
}

/* ---- calling JavaScript, from the event loop (microtasks run after each call) ---- */

static napi_value number(napi_env env, double value) {
  napi_value v = NULL;
  napi_create_double(env, value, &v);
  return v;
}

/* Calls `ref` with argv; the caller has opened a handle scope. */
static void invoke(state_t *s, napi_ref ref, size_t argc, napi_value *argv) {
  napi_env env = s->env;
  napi_value cb, recv, result;
  napi_get_reference_value(env, ref, &cb);
  napi_get_global(env, &recv); /* napi_make_callback wants an object */
  if (napi_make_callback(env, s->async_context, recv, cb, argc, argv, &result) == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
}

/* Calls `ref` with up to four numbers. */
static void call_numbers(state_t *s, napi_ref ref, size_t argc, const double *args) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(s->env, &scope) != napi_ok) return;
  napi_value argv[4];
  for (size_t k = 0; k < argc && k < 4; k++) argv[k] = number(s->env, args[k]);
  invoke(s, ref, argc, argv);
  napi_close_handle_scope(s->env, scope);
}

/* A copy of `len` bytes as a Buffer (null when len is 0), valid while the scope is open. */
static napi_value chunk_value(napi_env env, const char *bytes, size_t len) {
  napi_value v = NULL;
  if (len == 0) napi_get_null(env, &v);
  else napi_create_buffer_copy(env, len, bytes, NULL, &v);
  return v;
}

/* onReceived(id, chunk): a chunk before the decision, or null for the client's FIN. */
static void report_received(state_t *s, uint32_t id, const char *bytes, size_t len) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(s->env, &scope) != napi_ok) return;
  napi_value argv[2] = { number(s->env, id), chunk_value(s->env, bytes, len) };
  invoke(s, s->on_received, 2, argv);
  napi_close_handle_scope(s->env, scope);
}

/* The entry is done: freed, then onClosed(id, bytesIn, bytesOut, errno). A reset is passed on. */
static void end_entry(state_t *s, relay_t *r, int err) {
  uint32_t id = r->id;
  double args[4] = { id, (double)r->dir[0].read, (double)r->dir[1].written, err };
  release(s, r, err == ECONNRESET);
  call_numbers(s, s->on_closed, 4, args);
}

/* ---- a client before its relay ---- */

/*
 * RECEIVING: owed replies are written and each chunk read goes to JavaScript, until it pauses
 * the client (connecting), joins it to an upstream, or ends it. CLOSING: the replies, then
 * FIN, then what the client still sends is read and dropped until its own FIN (closing with
 * unread bytes would send a reset, and the client could lose the reply).
 */
static void receive(state_t *s, relay_t *r) {
  uint32_t id = r->id, serial = r->serial;
  int err = 0;
  if (r->error && r->paused) {
    /* A client that resets while its backend is being connected: the connect is cancelled. */
    socklen_t len = sizeof err;
    if (getsockopt(r->fd[0], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) { end_entry(s, r, err); return; }
  }
  if (flush(s, r, 1, &err) == FAILED) { end_entry(s, r, err); return; }
  if (r->state == CLOSING && r->dir[1].pending == NULL && !r->dir[1].shut) {
    r->dir[1].shut = 1;
    if (shutdown(r->fd[0], SHUT_WR) < 0 && errno != ENOTCONN) { end_entry(s, r, errno); return; }
  }
  size_t moved = 0;
  while (r->readable[0] && !r->dir[0].eof && !(r->state == RECEIVING && r->paused)) {
    if (moved >= TURN_BUDGET) { enqueue(s, r); return; }
    ssize_t n = recv(r->fd[0], s->buffer, CHUNK, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { r->readable[0] = 0; break; }
      end_entry(s, r, errno);
      return;
    }
    if (n == 0) r->dir[0].eof = 1;
    else {
      r->dir[0].read += (uint64_t)n;
      moved += (size_t)n;
      r->last_activity = uv_now(s->loop);
      /* A short read drained the socket: edge-triggered, more data (or a FIN) is a new event. */
      if ((size_t)n < CHUNK && !r->hangup[0]) r->readable[0] = 0;
    }
    if (r->state != RECEIVING) continue; /* CLOSING: dropped */
    report_received(s, id, s->buffer, (size_t)n);
    r = still(s, id, serial);
    if (r == NULL || r->state == RELAYING) return; /* ended, or joined (its turn is queued) */
  }
  if (r->state == CLOSING && r->dir[0].eof && r->dir[1].shut) end_entry(s, r, 0);
}

/* ---- a relay ---- */

/* Moves what can move both ways; ends the relay when both FINs are through or a socket failed. */
static void relay(state_t *s, relay_t *r) {
  int err = 0;
  pump_result a = pump(s, r, 0, &err);
  pump_result b = a == FAILED ? FAILED : pump(s, r, 1, &err);
  if (a == FAILED || b == FAILED || (r->dir[0].shut && r->dir[1].shut)) end_entry(s, r, err);
  else if (a == MOVED_ALL || b == MOVED_ALL) enqueue(s, r);
}

/* A connect finished: onDialed(id, 0), or onDialed(id, errno) with the entry already gone. */
static void finish_dial(state_t *s, relay_t *r) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(r->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  uint32_t id = r->id;
  if (err != 0) release(s, r, 0);
  else r->state = DIALED;
  double args[2] = { id, err };
  call_numbers(s, s->on_dialed, 2, args);
}

static void service(state_t *s, relay_t *r) {
  switch ((entry_state)r->state) {
    case RECEIVING:
    case CLOSING: receive(s, r); return;
    case DIALING: finish_dial(s, r); return;
    case DIALED: return; /* waits for join(); its readiness is remembered */
    case RELAYING: relay(s, r); return;
  }
}

/* ---- listeners ---- */

static int address_of(const struct sockaddr_storage *addr, char *text, size_t size, int *port) {
  if (addr->ss_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)addr;
    *port = ntohs(v4->sin_port);
    return inet_ntop(AF_INET, &v4->sin_addr, text, (socklen_t)size) != NULL;
  }
  if (addr->ss_family == AF_INET6) {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)addr;
    *port = ntohs(v6->sin6_port);
    return inet_ntop(AF_INET6, &v6->sin6_addr, text, (socklen_t)size) != NULL;
  }
  return 0;
}

static relay_t *new_relay(state_t *s);
static int watch(state_t *s, relay_t *r, int k);

/*
 * A client accepted on `listener`: read once (a client usually sends at once, and its first
 * bytes then come with the accept), watch it, and tell JavaScript its addresses.
 */
static void accepted(state_t *s, uint32_t listener, int fd, const struct sockaddr_storage *peer) {
  char remote[INET6_ADDRSTRLEN], local[INET6_ADDRSTRLEN];
  int remote_port, local_port;
  struct sockaddr_storage here;
  socklen_t len = sizeof here;
  relay_t *r;
  if (getsockname(fd, (struct sockaddr *)&here, &len) < 0 || !address_of(peer, remote, sizeof remote, &remote_port) ||
      !address_of(&here, local, sizeof local, &local_port) || (r = new_relay(s)) == NULL) {
    close(fd); /* gone before it was seen, or no memory */
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  r->fd[0] = fd;
  r->state = RECEIVING;
  r->writable[0] = 1;
  ssize_t n = recv(fd, s->buffer, CHUNK, 0);
  /* Nothing, or a short read: registering reports anything newer. Else read on (FIN, error). */
  r->readable[0] = n < 0 ? errno != EAGAIN : (size_t)n == CHUNK || n == 0;
  if (n > 0) r->dir[0].read = (uint64_t)n;
  if (watch(s, r, 0) < 0) {
    release(s, r, 0);
    return;
  }
  napi_env env = s->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value argv[7] = { number(env, listener), number(env, r->id), NULL, number(env, remote_port), NULL, number(env, local_port),
                         chunk_value(env, s->buffer, n > 0 ? (size_t)n : 0) };
  napi_create_string_latin1(env, remote, NAPI_AUTO_LENGTH, &argv[2]);
  napi_create_string_latin1(env, local, NAPI_AUTO_LENGTH, &argv[4]);
  invoke(s, s->on_accepted, 7, argv);
  napi_close_handle_scope(env, scope);
}

/*
 * Out of descriptors: the reserve one is given up to accept the first waiting client and close
 * it at once (as libuv does), rather than leave the listener readable and the loop spinning.
 */
static void shed(state_t *s, int listening) {
  if (s->reserve_fd < 0) return;
  close(s->reserve_fd);
  int fd = accept4(listening, NULL, NULL, SOCK_CLOEXEC);
  if (fd >= 0) {
    close(fd);
    s->shed++;
  }
  s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* A listener is readable: accept up to ACCEPT_BATCH clients (level-triggered: the rest next turn). */
static void on_listener(state_t *s, uint32_t listener) {
  for (int k = 0; k < ACCEPT_BATCH; k++) {
    if (listener >= s->nlisteners || s->listeners[listener] < 0) return; /* closed meanwhile */
    int listening = s->listeners[listener];
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int fd = accept4(listening, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      accepted(s, listener, fd, &peer);
      continue;
    }
    switch (errno) {
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
      case EPERM: continue;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        shed(s, listening);
        if (s->reserve_fd < 0) return;
        continue;
      default: return; /* EAGAIN: none waiting */
    }
  }
}

/* ---- the loop ---- */

static void on_epoll(uv_poll_t *handle, int status, int events) {
  (void)events;
  state_t *s = handle->data;
  if (status < 0) return;
  struct epoll_event ev[MAX_EVENTS];
  int n = epoll_wait(s->epfd, ev, MAX_EVENTS, 0);
  for (int k = 0; k < n; k++) {
    uint64_t tag = ev[k].data.u64;
    if (tag & LISTENER_TAG) {
      on_listener(s, (uint32_t)(tag & ~LISTENER_TAG));
      continue;
    }
    uint32_t id = (uint32_t)(tag >> 1), side = (uint32_t)(tag & 1);
    relay_t *r = still(s, id, (uint32_t)(tag >> 33));
    if (r == NULL) continue; /* ended earlier in this batch */
    uint32_t e = ev[k].events;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) r->readable[side] = 1;
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) r->writable[side] = 1;
    if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) r->hangup[side] = 1;
    if (side == 0 && (e & EPOLLERR)) r->error = 1;
    service(s, r);
  }
}

/* Resumes the entries that stopped on their budget (or were queued by a call), each once. */
static void on_idle(uv_idle_t *handle) {
  state_t *s = handle->data;
  size_t count = 0;
  for (relay_t *r = s->queue_head; r != NULL; r = r->next_queued) count++;
  /* One at a time off the live queue: an entry may end, or be destroyed, during another's turn. */
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

static napi_value fail(napi_env env, const char *message) {
  napi_throw_error(env, "ERR_RELAY", message);
  return NULL;
}

static relay_t *relay_arg(napi_env env, state_t *s, napi_value v) {
  uint32_t id;
  if (s == NULL || v == NULL || napi_get_value_uint32(env, v, &id) != napi_ok || id >= s->nslots || s->slots[id] == NULL) {
    fail(env, "native relay: no such connection");
    return NULL;
  }
  return s->slots[id];
}

static state_t *live_state(napi_env env);

/*
 * Reads a call's arguments (up to *argc; missing ones are undefined, and *argc is how many
 * were given) and returns the initialised state (NULL, with an exception, if not).
 */
static state_t *call_args(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  size_t max = *argc;
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  for (size_t k = 0; k < max; k++) argv[k] = undefined;
  if (napi_get_cb_info(env, info, argc, argv, NULL, NULL) != napi_ok) {
    fail(env, "native relay: bad arguments");
    return NULL;
  }
  return live_state(env);
}

/* Reads a call's arguments (up to `max`) and the entry the first names. */
static relay_t *relay_call(napi_env env, napi_callback_info info, size_t max, napi_value *argv, state_t **state) {
  size_t argc = max;
  *state = call_args(env, info, &argc, argv);
  return *state == NULL ? NULL : relay_arg(env, *state, argc > 0 ? argv[0] : NULL);
}

/* The entry must be in `state` (NULL, with an exception, if not). */
static relay_t *in_state(napi_env env, relay_t *r, entry_state state, const char *message) {
  if (r != NULL && r->state != state) {
    fail(env, message);
    return NULL;
  }
  return r;
}

static void on_handle_closed(uv_handle_t *handle) { (void)handle; }

static void cleanup(void *data) {
  state_t *s = data;
  for (uint32_t k = 0; k < s->nslots; k++) if (s->slots[k] != NULL) release(s, s->slots[k], 0);
  for (uint32_t k = 0; k < s->nlisteners; k++) if (s->listeners[k] >= 0) close(s->listeners[k]);
  while (s->nspare > 0) {
    s->nspare--;
    close(s->spare[s->nspare][0]);
    close(s->spare[s->nspare][1]);
  }
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  uv_close((uv_handle_t *)&s->poll, on_handle_closed);
  uv_close((uv_handle_t *)&s->idle, on_handle_closed);
  close(s->epfd);
  /* The handles' memory must outlive their close callbacks, which run after this hook: keep it. */
}

/* init(onAccepted, onReceived, onClosed, onDialed, maxPipes?) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (state_of(env) != NULL) return fail(env, "native relay: already initialised");
  for (size_t k = 0; k < 4; k++) {
    napi_valuetype type;
    if (k >= argc || napi_typeof(env, argv[k], &type) != napi_ok || type != napi_function) {
      napi_throw_type_error(env, "ERR_RELAY", "native relay: init() takes four functions");
      return NULL;
    }
  }
  state_t *s = calloc(1, sizeof *s);
  if (s == NULL) return throw_errno(env, "init", ENOMEM);
  s->env = env;
  s->max_lent = DEFAULT_MAX_LENT;
  if (argc > 4) {
    uint32_t max_lent;
    if (napi_get_value_uint32(env, argv[4], &max_lent) == napi_ok) s->max_lent = max_lent;
  }
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (s->epfd < 0) { int e = errno; free(s); return throw_errno(env, "epoll_create1", e); }
  s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  CHECK(napi_get_uv_event_loop(env, &s->loop));
  CHECK(napi_create_reference(env, argv[0], 1, &s->on_accepted));
  CHECK(napi_create_reference(env, argv[1], 1, &s->on_received));
  CHECK(napi_create_reference(env, argv[2], 1, &s->on_closed));
  CHECK(napi_create_reference(env, argv[3], 1, &s->on_dialed));
  CHECK(napi_create_string_utf8(env, "SwitchyardRelay", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &s->async_context));
  uv_poll_init(s->loop, &s->poll, s->epfd);
  s->poll.data = s;
  uv_idle_init(s->loop, &s->idle);
  s->idle.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_epoll);
  hold_loop(s);
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
  if (s == NULL) fail(env, "native relay: not initialised");
  return s;
}

/* An entry with no sockets yet, in a slot of its own (it counts as open from now on). */
static relay_t *new_relay(state_t *s) {
  if (s->nfree == 0 && !grow(s)) return NULL;
  relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  for (int k = 0; k < 2; k++) r->dir[k].pipe[0] = r->dir[k].pipe[1] = r->fd[k] = -1;
  r->id = s->free_ids[--s->nfree];
  r->serial = ++s->serial & 0x3fffffff; /* 30 bits, in the epoll tag above the id */
  s->slots[r->id] = r;
  s->live++;
  hold_loop(s);
  r->last_activity = uv_now(s->loop);
  return r;
}

/* Edge-triggered: registering (or re-registering) reports the socket's present state. */
static int watch_as(state_t *s, relay_t *r, int k, int op) {
  struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                            .data.u64 = ((uint64_t)r->serial << 33) | ((uint64_t)r->id << 1) | (uint64_t)k };
  return epoll_ctl(s->epfd, op, r->fd[k], &ev);
}

static int watch(state_t *s, relay_t *r, int k) { return watch_as(s, r, k, EPOLL_CTL_ADD); }

/* The bytes of an optional Buffer argument: 1 with *len 0 when absent, 0 when not a Buffer. */
static int buffer_arg(napi_env env, napi_value v, void **data, size_t *len) {
  napi_valuetype type;
  *data = NULL;
  *len = 0;
  if (napi_typeof(env, v, &type) != napi_ok) return 0;
  if (type == napi_undefined || type == napi_null) return 1;
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  return is_buffer && napi_get_buffer_info(env, v, data, len) == napi_ok;
}

/* Appends an optional Buffer argument to what the direction owes; false, with an exception, if it fails. */
static int owe(napi_env env, napi_value v, direction_t *d) {
  void *data;
  size_t len;
  if (!buffer_arg(env, v, &data, &len)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: bytes to send must be a Buffer");
    return 0;
  }
  if (len > 0 && !keep(d, data, len)) {
    throw_errno(env, "owe", ENOMEM);
    return 0;
  }
  return 1;
}

/*
 * Writes what is owed to each side now rather than at the sockets' next event: the backend
 * gets the request sooner. Failures are left for the entry's next turn (queued by the caller
 * when no event may come), so that JavaScript is not called back from inside a call.
 */
static void send_owed(state_t *s, relay_t *r) {
  int err = 0;
  for (int k = 0; k < 2; k++) if (r->dir[k].pending != NULL && r->fd[1 - k] >= 0) flush(s, r, k, &err);
}

static napi_value id_value(napi_env env, uint32_t id) {
  napi_value result;
  CHECK(napi_create_uint32(env, id, &result));
  return result;
}

/* listen(fd) -> listener: accepts on a duplicate of a bound, listening socket. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  state_t *s = call_args(env, info, &argc, argv);
  if (s == NULL) return NULL;
  int32_t given;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &given) != napi_ok || given < 0) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: listen() takes a file descriptor");
    return NULL;
  }
  uint32_t id = 0;
  while (id < s->nlisteners && s->listeners[id] >= 0) id++;
  if (id == s->nlisteners) {
    uint32_t n = s->nlisteners == 0 ? 16 : s->nlisteners * 2;
    int *listeners = realloc(s->listeners, n * sizeof *listeners);
    if (listeners == NULL) return throw_errno(env, "listen", ENOMEM);
    for (uint32_t k = s->nlisteners; k < n; k++) listeners[k] = -1;
    s->listeners = listeners;
    s->nlisteners = n;
  }
  int fd = fcntl(given, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "dup", errno);
  int flags = fcntl(fd, F_GETFL);
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = LISTENER_TAG | id };
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "listen", e);
  }
  s->listeners[id] = fd;
  s->listening++;
  hold_loop(s);
  return id_value(env, id);
}

/* unlisten(listener): closes it; clients that connect from now on are refused. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  state_t *s = call_args(env, info, &argc, argv);
  uint32_t id;
  if (s == NULL) return NULL;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &id) != napi_ok || id >= s->nlisteners || s->listeners[id] < 0)
    return fail(env, "native relay: no such listener");
  close(s->listeners[id]); /* the last reference: it leaves the epoll set */
  s->listeners[id] = -1;
  s->listening--;
  hold_loop(s);
  return NULL;
}

/* The client being received that argument 0 names, now owing it the bytes of argument 1. */
static relay_t *replying(napi_env env, napi_callback_info info, state_t **s, const char *message) {
  napi_value argv[2];
  relay_t *r = in_state(env, relay_call(env, info, 2, argv, s), RECEIVING, message);
  return r != NULL && owe(env, argv[1], &r->dir[1]) ? r : NULL;
}

/* send(id, bytes): writes to a client that is being received (a reply). */
static napi_value js_send(napi_env env, napi_callback_info info) {
  state_t *s;
  relay_t *r = replying(env, info, &s, "native relay: send() is for a client being received");
  int err = 0;
  if (r != NULL && flush(s, r, 1, &err) == FAILED) enqueue(s, r); /* its turn reports the failure */
  return NULL;
}

/* pause(id): stops reading a client that is being received; what it sends waits in the kernel. */
static napi_value js_pause(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 1, argv, &s), RECEIVING, "native relay: pause() is for a client being received");
  if (r != NULL) r->paused = 1;
  return NULL;
}

/* end(id, bytes?): sends the bytes, then FIN; onClosed follows once the client has closed too. */
static napi_value js_end(napi_env env, napi_callback_info info) {
  state_t *s;
  relay_t *r = replying(env, info, &s, "native relay: end() is for a client being received");
  if (r == NULL) return NULL;
  r->state = CLOSING;
  enqueue(s, r);
  return NULL;
}

/*
 * dial(ip, port) -> id: starts a non-blocking connect (TCP_NODELAY) to an IPv4 or IPv6
 * address; onDialed(id, errno) follows. On success the id waits for join(); on failure it is
 * gone. Errors the connect reports at once (EADDRNOTAVAIL, say) throw.
 */
static napi_value js_dial(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  state_t *s = call_args(env, info, &argc, argv);
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
  r->state = DIALING;
  if (watch(s, r, 1) < 0) {
    int e = errno;
    release(s, r, 0);
    return throw_errno(env, "epoll_ctl", e);
  }
  return id_value(env, r->id);
}

/* Starts relaying a client that now has its upstream as fd[1], with what is owed to each side. */
static void start_relay(state_t *s, relay_t *r) {
  r->state = RELAYING;
  r->last_activity = uv_now(s->loop);
  send_owed(s, r);
  enqueue(s, r); /* the client may have bytes waiting (it was paused): no event would come */
}

/*
 * Takes what join() or attach() owes each side (arguments 2 and 3), then relays. Out of
 * memory, it throws and relays nothing: the caller destroys the entry (both sockets).
 */
static napi_value owed(napi_env env, state_t *s, relay_t *r, napi_value *argv) {
  if (!owe(env, argv[2], &r->dir[0]) || !owe(env, argv[3], &r->dir[1])) return NULL;
  start_relay(s, r);
  return NULL;
}

/*
 * join(id, dialed, toUpstream?, toClient?): relays a client being received with a dialed
 * upstream, whose entry is consumed. toClient follows any reply not yet written.
 */
static napi_value js_join(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 4, argv, &s), RECEIVING, "native relay: join() is for a client being received");
  if (r == NULL) return NULL;
  relay_t *u = in_state(env, relay_arg(env, s, argv[1]), DIALED, "native relay: join() takes a connected, unjoined dial");
  if (u == NULL) return NULL;
  void *data;
  size_t len;
  if (!buffer_arg(env, argv[2], &data, &len) || !buffer_arg(env, argv[3], &data, &len)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: bytes to send must be a Buffer");
    return NULL;
  }
  r->fd[1] = u->fd[1];
  if (watch_as(s, r, 1, EPOLL_CTL_MOD) < 0) {
    r->fd[1] = -1;
    return throw_errno(env, "epoll_ctl", errno);
  }
  r->readable[1] = u->readable[1];
  r->writable[1] = u->writable[1];
  r->hangup[1] = u->hangup[1];
  u->fd[1] = -1;
  release(s, u, 0);
  return owed(env, s, r, argv);
}

/* attach(id, fd, toUpstream?, toClient?): as join(), with a socket connected elsewhere (duplicated). */
static napi_value js_attach(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 4, argv, &s), RECEIVING, "native relay: attach() is for a client being received");
  if (r == NULL) return NULL;
  int32_t given;
  void *data;
  size_t len;
  if (napi_get_value_int32(env, argv[1], &given) != napi_ok || given < 0 || !buffer_arg(env, argv[2], &data, &len) ||
      !buffer_arg(env, argv[3], &data, &len)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: attach() takes a file descriptor and Buffers");
    return NULL;
  }
  r->fd[1] = fcntl(given, F_DUPFD_CLOEXEC, 0);
  if (r->fd[1] < 0) return throw_errno(env, "dup", errno);
  if (watch(s, r, 1) < 0) {
    int e = errno;
    close(r->fd[1]);
    r->fd[1] = -1;
    return throw_errno(env, "epoll_ctl", e);
  }
  return owed(env, s, r, argv);
}

/* [bytesIn, bytesOut]: from the client, to the client. */
static napi_value bytes_value(napi_env env, relay_t *r) {
  napi_value result;
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_set_element(env, result, 0, number(env, (double)r->dir[0].read)));
  CHECK(napi_set_element(env, result, 1, number(env, (double)r->dir[1].written)));
  return result;
}

/* bytes(id) -> [bytesIn, bytesOut] */
static napi_value js_bytes(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  state_t *s;
  relay_t *r = relay_call(env, info, 1, argv, &s);
  return r == NULL ? NULL : bytes_value(env, r);
}

/* idleMs(id) -> milliseconds since bytes last moved (or since the relay started). */
static napi_value js_idle_ms(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  state_t *s;
  relay_t *r = relay_call(env, info, 1, argv, &s);
  if (r == NULL) return NULL;
  uint64_t now = uv_now(s->loop);
  return number(env, now > r->last_activity ? (double)(now - r->last_activity) : 0);
}

/* destroy(id, reset) -> [bytesIn, bytesOut]: closes its sockets now; onClosed is not called. */
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

/* stats() -> { connections, lentPipes, sparePipes, shed } */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  state_t *s = state_of(env);
  CHECK(napi_create_object(env, &result));
  CHECK(napi_set_named_property(env, result, "connections", number(env, s == NULL ? 0 : s->live)));
  CHECK(napi_set_named_property(env, result, "lentPipes", number(env, s == NULL ? 0 : s->lent)));
  CHECK(napi_set_named_property(env, result, "sparePipes", number(env, s == NULL ? 0 : s->nspare)));
  CHECK(napi_set_named_property(env, result, "shed", number(env, s == NULL ? 0 : (double)s->shed)));
  return result;
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "init", NULL, js_init, NULL, NULL, NULL, napi_enumerable, NULL },
    { "listen", NULL, js_listen, NULL, NULL, NULL, napi_enumerable, NULL },
    { "unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_enumerable, NULL },
    { "send", NULL, js_send, NULL, NULL, NULL, napi_enumerable, NULL },
    { "pause", NULL, js_pause, NULL, NULL, NULL, napi_enumerable, NULL },
    { "end", NULL, js_end, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dial", NULL, js_dial, NULL, NULL, NULL, napi_enumerable, NULL },
    { "join", NULL, js_join, NULL, NULL, NULL, napi_enumerable, NULL },
    { "attach", NULL, js_attach, NULL, NULL, NULL, napi_enumerable, NULL },
    { "bytes", NULL, js_bytes, NULL, NULL, NULL, napi_enumerable, NULL },
    { "idleMs", NULL, js_idle_ms, NULL, NULL, NULL, napi_enumerable, NULL },
    { "destroy", NULL, js_destroy, NULL, NULL, NULL, napi_enumerable, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
