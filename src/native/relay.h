/*
 * The native data path's core: Switchyard's tenant ports are accepted here, clients are read
 * here until their router decides, and once a backend is connected the bytes flow in C on the
 * proxy's own event loop. No net.Socket is built for either side. relay.c is the core (sockets,
 * pipes, the loop); splice-relay.c is the N-API glue that JavaScript calls
 * (src/connection/native-relay.ts), and that the core calls back through the relay_on_*
 * functions declared at the end of this file.
 *
 * An entry (a small integer id, reused once it is gone) lives through these states:
 *
 *   RECEIVING --end()--> CLOSING --client's FIN--> gone                   a client
 *       \--join()--> RELAYING --both FINs, or a failure--> gone
 *   DIALING --connected--> DIALED --consumed by join()                     an upstream
 *
 * The contract with JavaScript (every function is called on the loop's thread):
 *
 *   init(onAccepted, onReceived, onClosed, onDialed, onDrained, maxPipes?)
 *   listen(fd, firstRead?) -> listener               a bound, listening socket (duplicated);
 *                                                    each client is read once at accept, at
 *                                                    most firstRead bytes (default 64 KiB)
 *   firstRead(listener, bytes)                       changes that size for the next clients
 *   unlisten(listener)                               closes it; new clients are refused
 *     onAccepted(listener, id, remoteAddress, remotePort, localAddress, localPort, chunk?)
 *     onReceived(id, chunk | null)                   a chunk before the decision; null = FIN
 *   read(id, bytes)                                  a client being received may be read for at
 *                                                    most `bytes` more (0: not at all) until the
 *                                                    next read(); at accept, firstRead less what
 *                                                    came with the accept
 *   send(id, bytes) -> owed                          a reply; returns the bytes not yet written
 *     onDrained(id)                                  after a send() that returned more than 0,
 *                                                    once everything owed to it is written
 *   pause(id)                                        stops reading a client (its backend is being
 *                                                    connected); a reset still ends it
 *   end(id, bytes?)                                  sends the bytes, then FIN; what the client
 *                                                    sends is dropped until its FIN, then onClosed
 *   dial(ip, port) -> id; then onDialed(id, errno)   an upstream connected here, for join(); on
 *                                                    failure the id is gone when onDialed runs.
 *                                                    An IP address (IPv6 with or without a zone,
 *                                                    "fe80::1%eth0"): host names are resolved first
 *   join(id, dialed, toUpstream?, toClient?)         relays the client with its dialed upstream;
 *                                                    all or nothing: if it throws, both ids are
 *                                                    as they were (the caller destroys them)
 *   bytes(id), idleMs(id), destroy(id, reset), stats()
 *
 * onClosed(id, bytesIn, bytesOut, errno) is called once per client or relay that ends by
 * itself; destroy() ends one without calling it. Descriptors passed in are duplicated: the
 * caller closes its own. A callback may call any of the functions above, for any id.
 *
 * How it works:
 *   - One epoll set of the data path's own, watched by the loop through a single uv_poll
 *     handle. Listening sockets are level-triggered; connections are registered
 *     edge-triggered once, and their readiness is remembered per socket.
 *   - Before the decision a client is read only as far as JavaScript allows (its buffer cap):
 *     at the cap, the rest waits in the kernel and TCP holds the client back.
 *   - Once relaying, bytes move with splice(2) through a pipe (socket -> pipe -> socket, no
 *     copy to user space). A pipe is lent to a direction only while it holds bytes, so an idle
 *     relay owns none; without a pipe, recv(2)/send(2) through one shared buffer do the same.
 *   - Backpressure: a direction reads only once everything it read has been written; bytes
 *     the destination cannot take stay in the pipe (or a heap buffer) until EPOLLOUT.
 *   - Bytes owed to a side (replies, the replayed buffer, the rest of a short write) are kept
 *     in one buffer per direction that grows geometrically: appending costs what is appended.
 *   - A FIN is forwarded as shutdown(SHUT_WR) once what came before it is written (a
 *     half-close); when both directions have forwarded theirs, the relay is done. A reset is
 *     passed on as a reset.
 *   - Fairness: one direction moves at most TURN_BUDGET bytes per turn, and a listener accepts
 *     at most ACCEPT_BATCH clients; an entry with more to do is queued and resumed from an
 *     idle handle, after the loop has polled for other I/O.
 */
#ifndef SWITCHYARD_RELAY_H
#define SWITCHYARD_RELAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define CHUNK (64 * 1024)
#define TURN_BUDGET (256 * 1024)
#define SPARE_PIPES 64
#define DEFAULT_MAX_LENT 1024 /* pipes held by directions at once (two descriptors each) */

typedef struct {
  int pipe[2];        /* lent from the pool while bytes are in it, else -1 */
  size_t in_pipe;     /* bytes in the pipe */
  char *pending;      /* heap bytes not yet written: pending[pending_off, pending_len) */
  size_t pending_off, pending_len, pending_cap;
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
  uint8_t error;      /* an error was reported on the client (a reset): noticed even unread */
  direction_t dir[2]; /* dir[i] reads fd[i] and writes fd[1 - i]; dir[1] also carries replies */
  uint64_t last_activity;
  size_t allow;       /* RECEIVING: bytes the client may still be read for (read()) */
  uint32_t id;
  uint32_t serial;    /* tells this entry from an earlier one with the same id */
  uint8_t state;      /* entry_state */
  uint8_t paused;     /* RECEIVING: do not read (the client waits in the kernel) */
  uint8_t drain_wanted; /* RECEIVING: a send() left bytes owed; onDrained once they are written */
  uint8_t queued;     /* on the more-to-do queue */
  struct relay *next_queued;
} relay_t;

typedef struct {
  int fd;             /* -1 when free */
  uint32_t first_read; /* bytes read from each client at accept */
} listener_t;

typedef struct {
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
  listener_t *listeners; /* by listener id */
  uint32_t nlisteners;
  int reserve_fd;     /* given up to accept-and-close a client when descriptors run out */
  uint64_t shed;      /* clients so closed */
  int spare[SPARE_PIPES][2];
  int nspare;
  uint32_t lent, max_lent; /* pipes held by directions now, and the most at once */
  relay_t *queue_head, *queue_tail;
  char buffer[CHUNK];
} state_t;

/* Sets up the epoll set and the loop's handles in a zeroed state: 0, or an errno. */
int relay_init(state_t *s, uv_loop_t *loop, uint32_t max_lent);
/* Closes every entry, listener and descriptor. The handles' memory must outlive their close
   callbacks, which run later: the caller keeps `s`. */
void relay_cleanup(state_t *s);

/* A listening socket, duplicated: 0 with *id, or an errno. */
int relay_listen(state_t *s, int fd, uint32_t first_read, uint32_t *id);
int relay_unlisten(state_t *s, uint32_t id);          /* 0, or EBADF if there is no such listener */
int relay_first_read(state_t *s, uint32_t id, uint32_t bytes);

/* The entry `id`, or NULL. */
relay_t *relay_get(state_t *s, uint32_t id);
/* The entry `id` if it is still the one with `serial` (JavaScript may have ended it meanwhile). */
relay_t *relay_still(state_t *s, uint32_t id, uint32_t serial);
/* Closes the entry's sockets (a reset when asked) and frees it; nobody is called back. */
void relay_release(state_t *s, relay_t *r, int reset);

/* Bytes a direction holds for its destination, not yet written. */
size_t relay_owed(const direction_t *d);
/* Makes room for `len` more owed bytes: 1, or 0 out of memory (nothing changed). */
int relay_reserve(direction_t *d, size_t len);
/* Appends owed bytes: 1, or 0 out of memory (nothing changed). */
int relay_keep(direction_t *d, const void *bytes, size_t len);

/* A client being received: read it for at most `allow` more bytes. */
void relay_read(state_t *s, relay_t *r, size_t allow);
/* A client being received: a reply, written now as far as the socket takes it; the rest is
   kept (0, or ENOMEM with nothing kept), *owed is what is left, and onDrained follows once that
   is written. */
int relay_send(state_t *s, relay_t *r, const void *bytes, size_t len, size_t *owed);
/* A client being received: after the owed bytes, FIN; its turn is queued. */
void relay_end(state_t *s, relay_t *r);
/* A non-blocking connect: 0 with *out (DIALING), or an errno. */
int relay_dial(state_t *s, const struct sockaddr *addr, socklen_t len, relay_t **out);
/* A client being received takes the connected upstream of `u` (DIALED), which is released:
   0, or an errno with nothing changed. The owed bytes must have been reserved. */
int relay_join(state_t *s, relay_t *r, relay_t *u);
/* Starts relaying a client that has its upstream, after what is owed to each side. */
void relay_start(state_t *s, relay_t *r);

/* ---- implemented by the glue: the core telling JavaScript (a handle scope is the glue's) ---- */

/* A client accepted: 1 once JavaScript has it, 0 if it could not be told (the core releases it). */
int relay_on_accepted(state_t *s, uint32_t listener, relay_t *r, const char *remote, int remote_port, const char *local,
                      int local_port, const char *bytes, size_t len);
/* A chunk before the decision (len 0: the client's FIN). */
void relay_on_received(state_t *s, uint32_t id, const char *bytes, size_t len);
/* Everything owed to a client being received is written. */
void relay_on_drained(state_t *s, uint32_t id);
/* An entry ended by itself (already released). */
void relay_on_closed(state_t *s, uint32_t id, uint64_t bytes_in, uint64_t bytes_out, int err);
/* A connect finished (on failure, the entry is already released). */
void relay_on_dialed(state_t *s, uint32_t id, int err);

#endif
