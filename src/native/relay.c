/*
 * The native data path's core: sockets, pipes and the loop. See relay.h for the states, the
 * contract with JavaScript and how it works; the N-API glue is splice-relay.c.
 */
#define _GNU_SOURCE
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define ACCEPT_BATCH 64 /* clients one listener accepts per turn */
#define LISTENER_TAG (1ULL << 63)
#define FIRST_PENDING 4096 /* the first heap buffer a direction's owed bytes get */

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

/* ---- owed bytes: one buffer per direction, grown geometrically ---- */

size_t relay_owed(const direction_t *d) { return d->pending_len - d->pending_off; }

/*
 * Room for `len` more bytes at the end. The written part at the front is reclaimed by moving
 * what is left only when that is at most half the buffer; otherwise the buffer doubles. Either
 * way each byte is moved a bounded number of times: appending is linear in what is appended.
 */
int relay_reserve(direction_t *d, size_t len) {
  size_t left = relay_owed(d);
  if (d->pending_cap - d->pending_len >= len) return 1;
  if (left > SIZE_MAX - len) return 0;
  if (d->pending != NULL && left + len <= d->pending_cap && left <= d->pending_cap / 2) {
    memmove(d->pending, d->pending + d->pending_off, left);
    d->pending_off = 0;
    d->pending_len = left;
    return 1;
  }
  size_t cap = d->pending_cap > 0 ? d->pending_cap : FIRST_PENDING;
  while (cap < left + len) {
    if (cap > SIZE_MAX / 2) return 0;
    cap *= 2;
  }
  char *pending = malloc(cap);
  if (pending == NULL) return 0;
  if (left > 0) memcpy(pending, d->pending + d->pending_off, left);
  free(d->pending);
  d->pending = pending;
  d->pending_cap = cap;
  d->pending_off = 0;
  d->pending_len = left;
  return 1;
}

int relay_keep(direction_t *d, const void *bytes, size_t len) {
  if (len == 0) return 1;
  if (!relay_reserve(d, len)) return 0;
  memcpy(d->pending + d->pending_len, bytes, len);
  d->pending_len += len;
  return 1;
}

/* Everything owed is written: the buffer is freed (an idle direction holds no heap). */
static void pending_free(direction_t *d) {
  free(d->pending);
  d->pending = NULL;
  d->pending_off = d->pending_len = d->pending_cap = 0;
}

/* ---- one direction ---- */

typedef enum { MOVED_ALL, WAITING, FAILED } pump_result;

/* Writes what the direction holds to `dst`. MOVED_ALL when nothing is left. */
static pump_result flush(state_t *s, relay_t *r, int i, int *err) {
  direction_t *d = &r->dir[i];
  int dst = r->fd[1 - i];
  while (d->pending_off < d->pending_len) {
    ssize_t n = send(dst, d->pending + d->pending_off, d->pending_len - d->pending_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { r->writable[1 - i] = 0; return WAITING; }
      *err = errno;
      return FAILED;
    }
    d->pending_off += (size_t)n;
    d->written += (uint64_t)n;
  }
  if (d->pending != NULL) pending_free(d);
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

/*
 * Moves bytes from fd[i] to fd[1 - i] until the source has none, the destination is full,
 * or the turn's budget is spent. Returns FAILED (with *err) when a socket failed, WAITING
 * when it stopped on readiness, MOVED_ALL when it stopped on the budget with more to do.
 *
 * Two ways, chosen per direction as it goes. Messages (a request, a response) are copied:
 * recv(2) into the shared buffer and send(2) out, and a read shorter than the buffer means
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
      n = recv(src, s->buffer, CHUNK, 0);
      if (n > 0) {
        ssize_t w = send(dst, s->buffer, (size_t)n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) { *err = errno; return FAILED; }
        if (w < 0) w = 0;
        d->written += (uint64_t)w;
        if (w < n && !relay_keep(d, s->buffer + w, (size_t)(n - w))) { *err = ENOMEM; return FAILED; }
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

relay_t *relay_get(state_t *s, uint32_t id) { return id < s->nslots ? s->slots[id] : NULL; }

relay_t *relay_still(state_t *s, uint32_t id, uint32_t serial) {
  relay_t *r = relay_get(s, id);
  return r != NULL && r->serial == serial ? r : NULL;
}

/* Like a socket or a server, an open connection or listener keeps the process alive (a graceful
   stop waits for connections); the poll handle is referenced only while there is one. */
static void hold_loop(state_t *s) {
  if (s->live + s->listening > 0) uv_ref((uv_handle_t *)&s->poll);
  else uv_unref((uv_handle_t *)&s->poll);
}

/* The reserve descriptor, opened again if it was given up (or could not be opened before). */
static void reserve(state_t *s) {
  if (s->reserve_fd < 0) s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void relay_release(state_t *s, relay_t *r, int reset) {
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
  reserve(s); /* descriptors were freed: shedding can go on */
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

/* The entry is done: freed, then onClosed(id, bytesIn, bytesOut, errno). A reset is passed on. */
static void end_entry(state_t *s, relay_t *r, int err) {
  uint32_t id = r->id;
  uint64_t bytes_in = r->dir[0].read, bytes_out = r->dir[1].written;
  relay_release(s, r, err == ECONNRESET);
  relay_on_closed(s, id, bytes_in, bytes_out, err);
}

/* ---- a client before its relay ---- */

/* Not to be read now: paused (connecting) or, while received, read as far as allowed. */
static int held_back(const relay_t *r) { return r->state == RECEIVING && (r->paused || r->allow == 0); }

/*
 * RECEIVING: owed replies are written and each chunk read goes to JavaScript, as far as it
 * allows, until it pauses the client (connecting), joins it to an upstream, or ends it.
 * CLOSING: the replies, then FIN, then what the client still sends is read and dropped until
 * its own FIN (closing with unread bytes would send a reset, and the client could lose the
 * reply).
 */
static void receive(state_t *s, relay_t *r) {
  uint32_t id = r->id, serial = r->serial;
  int err = 0;
  if (r->error && held_back(r)) {
    /* A client that resets while it is not read (its backend is being connected, or its router
       is deciding on a full buffer): noticed now, not at the decision. */
    socklen_t len = sizeof err;
    if (getsockopt(r->fd[0], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) { end_entry(s, r, err); return; }
  }
  if (flush(s, r, 1, &err) == FAILED) { end_entry(s, r, err); return; }
  if (r->state == RECEIVING && r->drain_wanted && relay_owed(&r->dir[1]) == 0) {
    r->drain_wanted = 0;
    relay_on_drained(s, id);
    r = relay_still(s, id, serial);
    if (r == NULL || r->state == RELAYING) return; /* ended, or joined (its turn is queued) */
  }
  if (r->state == CLOSING && r->dir[1].pending == NULL && !r->dir[1].shut) {
    r->dir[1].shut = 1;
    if (shutdown(r->fd[0], SHUT_WR) < 0 && errno != ENOTCONN) { end_entry(s, r, errno); return; }
  }
  size_t moved = 0;
  while (r->readable[0] && !r->dir[0].eof && !held_back(r)) {
    if (moved >= TURN_BUDGET) { enqueue(s, r); return; }
    size_t want = r->state == RECEIVING && r->allow < CHUNK ? r->allow : CHUNK;
    ssize_t n = recv(r->fd[0], s->buffer, want, 0);
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
      if ((size_t)n < want && !r->hangup[0]) r->readable[0] = 0;
    }
    if (r->state != RECEIVING) continue; /* CLOSING: dropped */
    r->allow -= (size_t)n;
    relay_on_received(s, id, s->buffer, (size_t)n);
    r = relay_still(s, id, serial);
    if (r == NULL || r->state == RELAYING) return; /* ended, or joined (its turn is queued) */
  }
  if (r->state == CLOSING && r->dir[0].eof && r->dir[1].shut) end_entry(s, r, 0);
}

void relay_read(state_t *s, relay_t *r, size_t allow) {
  r->allow = allow;
  if (allow > 0 && r->readable[0] && !r->paused) enqueue(s, r); /* edge-triggered: no new event */
}

int relay_send(state_t *s, relay_t *r, const void *bytes, size_t len, size_t *owed_out) {
  direction_t *d = &r->dir[1];
  size_t sent = 0;
  int direct = relay_owed(d) == 0 && r->writable[0];
  if (direct) {
    /* Nothing waits before it: straight from the caller's bytes, and only the rest is kept. */
    ssize_t n;
    do n = send(r->fd[0], bytes, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
      sent = (size_t)n;
      d->written += (uint64_t)n;
    } else if (errno == EAGAIN) {
      r->writable[0] = 0;
    } else {
      enqueue(s, r); /* its turn meets the failure again, and reports it */
    }
  }
  if (!relay_keep(d, (const char *)bytes + sent, len - sent)) return ENOMEM;
  int err = 0;
  if (!direct && flush(s, r, 1, &err) == FAILED) enqueue(s, r); /* its turn reports the failure */
  size_t owed = relay_owed(d);
  *owed_out = owed;
  if (owed > 0) r->drain_wanted = 1;
  return 0;
}

void relay_end(state_t *s, relay_t *r) {
  r->state = CLOSING;
  r->drain_wanted = 0;
  enqueue(s, r);
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

int relay_dial(state_t *s, const struct sockaddr *addr, socklen_t len, relay_t **out) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, addr, len) < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    return e;
  }
  relay_t *r = new_relay(s);
  if (r == NULL) {
    close(fd);
    return ENOMEM;
  }
  r->fd[1] = fd;
  r->state = DIALING;
  if (watch_as(s, r, 1, EPOLL_CTL_ADD) < 0) {
    int e = errno;
    relay_release(s, r, 0);
    return e;
  }
  *out = r;
  return 0;
}

/* A connect finished: onDialed(id, 0), or onDialed(id, errno) with the entry already gone. */
static void finish_dial(state_t *s, relay_t *r) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(r->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  uint32_t id = r->id;
  if (err != 0) relay_release(s, r, 0);
  else r->state = DIALED;
  relay_on_dialed(s, id, err);
}

int relay_join(state_t *s, relay_t *r, relay_t *u) {
  r->fd[1] = u->fd[1];
  if (watch_as(s, r, 1, EPOLL_CTL_MOD) < 0) {
    r->fd[1] = -1;
    return errno;
  }
  r->readable[1] = u->readable[1];
  r->writable[1] = u->writable[1];
  r->hangup[1] = u->hangup[1];
  u->fd[1] = -1;
  relay_release(s, u, 0);
  return 0;
}

/*
 * Writes what is owed to each side now rather than at the sockets' next event (the backend
 * gets the request sooner), then queues the relay's turn: the client may have bytes waiting
 * (it was paused), and a failure is reported there, not from inside a call from JavaScript.
 */
void relay_start(state_t *s, relay_t *r) {
  r->state = RELAYING;
  r->drain_wanted = 0;
  r->last_activity = uv_now(s->loop);
  int err = 0;
  for (int k = 0; k < 2; k++) if (r->dir[k].pending != NULL && r->fd[1 - k] >= 0) flush(s, r, k, &err);
  enqueue(s, r);
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
  size_t first = s->listeners[listener].first_read < CHUNK ? s->listeners[listener].first_read : CHUNK;
  ssize_t n = first == 0 ? -1 : recv(fd, s->buffer, first, 0);
  if (first == 0) {
    r->readable[0] = 1; /* not tried: registering reports what is there */
  } else {
    /* Nothing, or a short read: registering reports anything newer. Else read on (FIN, error). */
    r->readable[0] = n < 0 ? errno != EAGAIN : (size_t)n == first || n == 0;
  }
  if (n > 0) r->dir[0].read = (uint64_t)n;
  r->allow = s->listeners[listener].first_read - (n > 0 ? (size_t)n : 0);
  if (watch_as(s, r, 0, EPOLL_CTL_ADD) < 0 ||
      !relay_on_accepted(s, listener, r, remote, remote_port, local, local_port, s->buffer, n > 0 ? (size_t)n : 0)) {
    relay_release(s, r, 0); /* JavaScript never heard of it: nobody else would */
  }
}

/*
 * Out of descriptors: the reserve one is given up to accept the first waiting client and close
 * it at once (as libuv does), rather than leave the listener readable and the loop spinning.
 * The reserve is opened again at once, and again whenever an entry frees descriptors, so that
 * one failure to reopen it does not end shedding for good. Returns whether it shed a client.
 */
static int shed(state_t *s, int listening) {
  reserve(s);
  if (s->reserve_fd < 0) return 0;
  close(s->reserve_fd);
  s->reserve_fd = -1;
  int fd = accept4(listening, NULL, NULL, SOCK_CLOEXEC);
  int shed = fd >= 0;
  if (shed) {
    close(fd);
    s->shed++;
  }
  reserve(s);
  return shed;
}

/* A listener is readable: accept up to ACCEPT_BATCH clients (level-triggered: the rest next turn). */
static void on_listener(state_t *s, uint32_t listener) {
  for (int k = 0; k < ACCEPT_BATCH; k++) {
    if (listener >= s->nlisteners || s->listeners[listener].fd < 0) return; /* closed meanwhile */
    int listening = s->listeners[listener].fd;
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
        if (!shed(s, listening)) return;
        continue;
      default: return; /* EAGAIN: none waiting */
    }
  }
}

int relay_listen(state_t *s, int given, uint32_t first_read, uint32_t *out) {
  uint32_t id = 0;
  while (id < s->nlisteners && s->listeners[id].fd >= 0) id++;
  if (id == s->nlisteners) {
    uint32_t n = s->nlisteners == 0 ? 16 : s->nlisteners * 2;
    listener_t *listeners = realloc(s->listeners, n * sizeof *listeners);
    if (listeners == NULL) return ENOMEM;
    for (uint32_t k = s->nlisteners; k < n; k++) listeners[k].fd = -1;
    s->listeners = listeners;
    s->nlisteners = n;
  }
  int fd = fcntl(given, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return errno;
  int flags = fcntl(fd, F_GETFL);
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = LISTENER_TAG | id };
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    int e = errno;
    close(fd);
    return e;
  }
  s->listeners[id].fd = fd;
  s->listeners[id].first_read = first_read;
  s->listening++;
  hold_loop(s);
  *out = id;
  return 0;
}

int relay_first_read(state_t *s, uint32_t id, uint32_t bytes) {
  if (id >= s->nlisteners || s->listeners[id].fd < 0) return EBADF;
  s->listeners[id].first_read = bytes;
  return 0;
}

int relay_unlisten(state_t *s, uint32_t id) {
  if (id >= s->nlisteners || s->listeners[id].fd < 0) return EBADF;
  close(s->listeners[id].fd); /* the last reference: it leaves the epoll set */
  s->listeners[id].fd = -1;
  s->listening--;
  hold_loop(s);
  return 0;
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
    uint32_t id = (uint32_t)(tag >> 1) & 0xffffffffu, side = (uint32_t)(tag & 1);
    relay_t *r = relay_still(s, id, (uint32_t)(tag >> 33));
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

int relay_init(state_t *s, uv_loop_t *loop, uint32_t max_lent) {
  s->loop = loop;
  s->max_lent = max_lent;
  s->reserve_fd = -1;
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (s->epfd < 0) return errno;
  int err = uv_poll_init(loop, &s->poll, s->epfd);
  if (err != 0) {
    close(s->epfd);
    s->epfd = -1;
    return -err;
  }
  s->poll.data = s;
  uv_idle_init(loop, &s->idle);
  s->idle.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_epoll);
  hold_loop(s);
  uv_unref((uv_handle_t *)&s->idle);
  reserve(s);
  return 0;
}

static void on_handle_closed(uv_handle_t *handle) { (void)handle; }

void relay_cleanup(state_t *s) {
  for (uint32_t k = 0; k < s->nslots; k++) if (s->slots[k] != NULL) relay_release(s, s->slots[k], 0);
  for (uint32_t k = 0; k < s->nlisteners; k++) if (s->listeners[k].fd >= 0) close(s->listeners[k].fd);
  while (s->nspare > 0) {
    s->nspare--;
    close(s->spare[s->nspare][0]);
    close(s->spare[s->nspare][1]);
  }
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  s->reserve_fd = -1;
  uv_close((uv_handle_t *)&s->poll, on_handle_closed);
  uv_close((uv_handle_t *)&s->idle, on_handle_closed);
  close(s->epfd);
  free(s->slots);
  free(s->free_ids);
  free(s->listeners);
  s->slots = NULL;
  s->free_ids = NULL;
  s->listeners = NULL;
  s->nslots = s->nlisteners = s->nfree = 0;
}
