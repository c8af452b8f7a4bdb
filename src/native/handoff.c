/*
 * What the processes of one Switchyard node share, beyond messages:
 *
 *   listening sockets   bound once, by the master, and handed to each proxy process (and, in an
 *                       upgrade, to the next master) as descriptors over a unix socket
 *                       (SCM_RIGHTS). A proxy accepts on its copy; closing a copy never closes
 *                       the port while another process holds one, so connections waiting in
 *                       the accept queue are never refused or reset by a hand-over.
 *   connection counts   one shared memory file (memfd) of per-port counters, so that a
 *                       tenant's maxConnections holds per node, exactly, across processes:
 *                       total[port] is taken with compare-and-swap below the limit, and each
 *                       process also counts its own row (own[row][port]) so that the master
 *                       can give back what a proxy process held when it dies.
 *
 * Every function is synchronous and short: descriptor passing waits (poll) only at start-up
 * and hand-over, with a deadline.
 *
 * JavaScript sees:
 *   bindListener(host, port, reusePort, backlog) -> fd     numeric host; non-blocking, CLOEXEC
 *   localAddress(fd) -> [address, port]
 *   close(fd)
 *   socketPair() -> [fd, fd]                                AF_UNIX SOCK_SEQPACKET, CLOEXEC
 *   listenUnix(path) -> fd; connectUnix(path) -> fd; acceptUnix(fd, timeoutMs) -> fd | -1
 *   sendFds(sock, payload, fds)                             one message; blocks until sent
 *   recvFds(sock, timeoutMs) -> [payload, fds] | null       null: the deadline passed
 *   countersCreate(ports, rows) -> fd; countersAttach(fd, ports, rows)
 *   acquire(port, row, max) -> bool; release(port, row); count(port) -> n; reclaim(row)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <node_api.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* At most this many descriptors in one message (the kernel's SCM_MAX_FD is 253). */
#define MAX_FDS 250
#define MAX_PAYLOAD 65536

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value code, msg, error;
  const char *name = err == EADDRINUSE ? "EADDRINUSE" : err == EACCES ? "EACCES" : err == EADDRNOTAVAIL ? "EADDRNOTAVAIL" : err == ENOENT ? "ENOENT"
                     : err == ECONNREFUSED ? "ECONNREFUSED" : err == EMFILE ? "EMFILE" : "ERR_HANDOFF";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &error);
  napi_value errno_value;
  napi_create_int32(env, -err, &errno_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_throw(env, error);
  return NULL;
}

static napi_value type_error(napi_env env, const char *usage) {
  napi_throw_type_error(env, "ERR_HANDOFF", usage);
  return NULL;
}

static napi_value int_value(napi_env env, int64_t n) {
  napi_value v;
  napi_create_int64(env, n, &v);
  return v;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) return -1;
  return 0;
}

static int get_int(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

/* bindListener(host, port, reusePort, backlog) -> fd */
static napi_value js_bind_listener(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  char host[INET6_ADDRSTRLEN + 64];
  size_t len;
  int32_t port, backlog;
  bool reuse;
  if (get_args(env, info, 4, argv) != 0 || napi_get_value_string_utf8(env, argv[0], host, sizeof host, &len) != napi_ok ||
      get_int(env, argv[1], &port) != 0 || port < 0 || port > 65535 || napi_get_value_bool(env, argv[2], &reuse) != napi_ok ||
      get_int(env, argv[3], &backlog) != 0)
    return type_error(env, "bindListener(host, port, reusePort, backlog): host is an IP address");
  /* A numeric address, IPv6 with a zone too ("fe80::1%eth0"): getaddrinfo parses both. */
  struct addrinfo hints = { .ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM };
  struct addrinfo *ai = NULL;
  if (getaddrinfo(host, NULL, &hints, &ai) != 0 || ai == NULL) return type_error(env, "bindListener: the host must be an IPv4 or IPv6 address");
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t sslen = ai->ai_addrlen <= sizeof ss ? ai->ai_addrlen : sizeof ss;
  memcpy(&ss, ai->ai_addr, sslen);
  int family = ai->ai_family;
  freeaddrinfo(ai);
  if (family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
  else if (family == AF_INET6) ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
  else return type_error(env, "bindListener: the host must be an IPv4 or IPv6 address");
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  int on = 1, off = 0;
  /* As Node listens: SO_REUSEADDR; "::" takes IPv4 too. */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
      (reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0) ||
      (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0) ||
      bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "bind", e);
  }
  return int_value(env, fd);
}

/* localAddress(fd) -> [address, port] */
static napi_value js_local_address(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (get_args(env, info, 1, argv) != 0 || get_int(env, argv[0], &fd) != 0) return type_error(env, "localAddress(fd)");
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return throw_errno(env, "getsockname", errno);
  char text[INET6_ADDRSTRLEN];
  int port;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    port = ntohs(a->sin6_port);
  } else {
    return type_error(env, "localAddress: not an IP socket");
  }
  napi_value out, address;
  napi_create_array_with_length(env, 2, &out);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &address);
  napi_set_element(env, out, 0, address);
  napi_set_element(env, out, 1, int_value(env, port));
  return out;
}

/* close(fd) */
static napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (get_args(env, info, 1, argv) != 0 || get_int(env, argv[0], &fd) != 0 || fd < 0) return type_error(env, "close(fd)");
  close(fd);
  return NULL;
}

/* socketPair() -> [fd, fd]: a message channel for descriptors; the ends are blocking. */
static napi_value js_socket_pair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return throw_errno(env, "socketpair", errno);
  napi_value out;
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, int_value(env, sv[0]));
  napi_set_element(env, out, 1, int_value(env, sv[1]));
  return out;
}

static int unix_address(napi_env env, napi_value v, struct sockaddr_un *sun) {
  size_t len;
  memset(sun, 0, sizeof *sun);
  sun->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, sun->sun_path, sizeof sun->sun_path, &len) != napi_ok || len == 0 || len >= sizeof sun->sun_path - 1) return -1;
  return 0;
}

/* listenUnix(path) -> fd: a stream socket at `path` (which must not exist), mode 0600. */
static napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_un sun;
  if (get_args(env, info, 1, argv) != 0 || unix_address(env, argv[0], &sun) != 0) return type_error(env, "listenUnix(path): a path of at most 100 bytes");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  mode_t old = umask(077);
  int r = bind(fd, (struct sockaddr *)&sun, sizeof sun);
  umask(old);
  if (r < 0 || listen(fd, 4) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "listen on the hand-over socket", e);
  }
  return int_value(env, fd);
}

/* connectUnix(path) -> fd */
static napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_un sun;
  if (get_args(env, info, 1, argv) != 0 || unix_address(env, argv[0], &sun) != 0) return type_error(env, "connectUnix(path)");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "connect to the hand-over socket", e);
  }
  return int_value(env, fd);
}

/* Waits until `fd` is readable, at most `ms`: 1 ready, 0 the deadline passed, -1 an error (errno). */
static int wait_readable(int fd, int ms) {
  struct pollfd p = { .fd = fd, .events = POLLIN };
  for (;;) {
    int r = poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

/* Waits until `fd` can be written (a full socket buffer), at most 5 s: 0 ready. */
static int wait_writable(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLOUT };
  for (;;) {
    int r = poll(&p, 1, 5000);
    if (r < 0 && errno == EINTR) continue;
    return r == 1 ? 0 : -1;
  }
}

/* acceptUnix(fd, timeoutMs) -> fd, or -1 once the deadline passes */
static napi_value js_accept_unix(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd, ms;
  if (get_args(env, info, 2, argv) != 0 || get_int(env, argv[0], &fd) != 0 || get_int(env, argv[1], &ms) != 0) return type_error(env, "acceptUnix(fd, timeoutMs)");
  int r = wait_readable(fd, ms);
  if (r < 0) return throw_errno(env, "poll", errno);
  if (r == 0) return int_value(env, -1);
  int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
  if (c < 0) return throw_errno(env, "accept", errno);
  return int_value(env, c);
}

/* sendFds(sock, payload, fds): one message with the payload and the descriptors (duplicated for the receiver). */
static napi_value js_send_fds(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t sock;
  void *data;
  size_t size;
  uint32_t n;
  bool is_array;
  if (get_args(env, info, 3, argv) != 0 || get_int(env, argv[0], &sock) != 0 || napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok ||
      size == 0 || size > MAX_PAYLOAD || napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[2], &n) != napi_ok || n > MAX_FDS)
    return type_error(env, "sendFds(sock, payload, fds): a payload of 1 to 65536 bytes and at most 250 descriptors");
  int fds[MAX_FDS];
  for (uint32_t k = 0; k < n; k++) {
    napi_value v;
    if (napi_get_element(env, argv[2], k, &v) != napi_ok || get_int(env, v, &fds[k]) != 0 || fds[k] < 0) return type_error(env, "sendFds: descriptors are integers");
  }
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct iovec iov = { .iov_base = data, .iov_len = size };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (n > 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  }
  for (;;) {
    ssize_t r = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (r >= 0) {
      if ((size_t)r != size) return throw_errno(env, "sendmsg: a short message", EMSGSIZE);
      return NULL;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN && wait_writable(sock) == 0) continue;
    return throw_errno(env, "sendmsg", errno);
  }
}

/* recvFds(sock, timeoutMs) -> [payload, fds], or null once the deadline passes; throws at end of stream. */
static napi_value js_recv_fds(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t sock, ms;
  if (get_args(env, info, 2, argv) != 0 || get_int(env, argv[0], &sock) != 0 || get_int(env, argv[1], &ms) != 0) return type_error(env, "recvFds(sock, timeoutMs)");
  int ready = wait_readable(sock, ms);
  if (ready < 0) return throw_errno(env, "poll", errno);
  napi_value out;
  if (ready == 0) {
    napi_get_null(env, &out);
    return out;
  }
  char *data = malloc(MAX_PAYLOAD);
  if (data == NULL) return throw_errno(env, "recvmsg", ENOMEM);
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct iovec iov = { .iov_base = data, .iov_len = MAX_PAYLOAD };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf };
  ssize_t r;
  do r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  int e = errno;
  int fds[MAX_FDS];
  size_t n = 0;
  if (r >= 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < k && n < MAX_FDS; j++) memcpy(&fds[n++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
    }
  }
  if (r < 0 || r == 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    for (size_t j = 0; j < n; j++) close(fds[j]);
    free(data);
    if (r < 0) return throw_errno(env, "recvmsg", e);
    return throw_errno(env, r == 0 ? "recvmsg: the peer closed the hand-over socket" : "recvmsg: a message too large", r == 0 ? EPIPE : EMSGSIZE);
  }
  napi_value payload, list;
  napi_create_buffer_copy(env, (size_t)r, data, NULL, &payload);
  free(data);
  napi_create_array_with_length(env, n, &list);
  for (size_t j = 0; j < n; j++) napi_set_element(env, list, (uint32_t)j, int_value(env, fds[j]));
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, payload);
  napi_set_element(env, out, 1, list);
  return out;
}

/*
 * Connection counters: int32 total[ports], then int32 own[rows][ports], in one shared mapping.
 * Index 0 of a row is the row's port 0 (the tenant range's first port is the caller's business).
 */
static int32_t *counters;
static uint32_t counter_ports, counter_rows;

static int map_counters(int fd, uint32_t ports, uint32_t rows) {
  size_t bytes = (size_t)ports * (1 + rows) * sizeof(int32_t);
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return errno;
  if (counters != NULL) munmap(counters, (size_t)counter_ports * (1 + counter_rows) * sizeof(int32_t));
  counters = p;
  counter_ports = ports;
  counter_rows = rows;
  return 0;
}

/* countersCreate(ports, rows) -> fd: a new shared file of zeroed counters, mapped here too. */
static napi_value js_counters_create(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t ports, rows;
  if (get_args(env, info, 2, argv) != 0 || get_int(env, argv[0], &ports) != 0 || get_int(env, argv[1], &rows) != 0 || ports < 1 || ports > 65536 ||
      rows < 1 || rows > 1024)
    return type_error(env, "countersCreate(ports 1-65536, rows 1-1024)");
  int fd = memfd_create("switchyard-connections", MFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  int e = ftruncate(fd, (off_t)ports * (1 + rows) * (off_t)sizeof(int32_t)) < 0 ? errno : map_counters(fd, (uint32_t)ports, (uint32_t)rows);
  if (e != 0) {
    close(fd);
    return throw_errno(env, "counters", e);
  }
  return int_value(env, fd);
}

/* countersAttach(fd, ports, rows): maps counters another process created. */
static napi_value js_counters_attach(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t fd, ports, rows;
  if (get_args(env, info, 3, argv) != 0 || get_int(env, argv[0], &fd) != 0 || get_int(env, argv[1], &ports) != 0 || get_int(env, argv[2], &rows) != 0 ||
      ports < 1 || ports > 65536 || rows < 1 || rows > 1024)
    return type_error(env, "countersAttach(fd, ports, rows)");
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < (off_t)ports * (1 + rows) * (off_t)sizeof(int32_t)) return throw_errno(env, "counters: the file is too small", EINVAL);
  int e = map_counters(fd, (uint32_t)ports, (uint32_t)rows);
  return e != 0 ? throw_errno(env, "mmap", e) : NULL;
}

static int counter_args(napi_env env, napi_callback_info info, size_t want, int32_t *out) {
  napi_value argv[3];
  if (counters == NULL || get_args(env, info, want, argv) != 0) return -1;
  for (size_t k = 0; k < want; k++)
    if (get_int(env, argv[k], &out[k]) != 0) return -1;
  if (out[0] < 0 || (uint32_t)out[0] >= counter_ports) return -1;
  if (want > 1 && (out[1] < 0 || (uint32_t)out[1] >= counter_rows)) return -1;
  return 0;
}

#define TOTAL(port) (&counters[(port)])
#define OWN(row, port) (&counters[(size_t)counter_ports * (1 + (size_t)(row)) + (size_t)(port)])

/* acquire(port, row, max) -> bool: one more connection, if fewer than `max` are open on the node. */
static napi_value js_acquire(napi_env env, napi_callback_info info) {
  int32_t a[3];
  if (counter_args(env, info, 3, a) != 0) return type_error(env, "acquire(port, row, max) on attached counters");
  int32_t *total = TOTAL(a[0]);
  int32_t cur = __atomic_load_n(total, __ATOMIC_ACQUIRE);
  bool taken = false;
  while (cur < a[2]) {
    if (__atomic_compare_exchange_n(total, &cur, cur + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      __atomic_add_fetch(OWN(a[1], a[0]), 1, __ATOMIC_RELEASE);
      taken = true;
      break;
    }
  }
  napi_value out;
  napi_get_boolean(env, taken, &out);
  return out;
}

/* release(port, row): a connection acquired by this row has finished. */
static napi_value js_release(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (counter_args(env, info, 2, a) != 0) return type_error(env, "release(port, row) on attached counters");
  __atomic_sub_fetch(OWN(a[1], a[0]), 1, __ATOMIC_RELEASE);
  __atomic_sub_fetch(TOTAL(a[0]), 1, __ATOMIC_RELEASE);
  return NULL;
}

/* count(port) -> connections open on the node */
static napi_value js_count(napi_env env, napi_callback_info info) {
  int32_t a[1];
  if (counter_args(env, info, 1, a) != 0) return type_error(env, "count(port) on attached counters");
  return int_value(env, __atomic_load_n(TOTAL(a[0]), __ATOMIC_ACQUIRE));
}

/* reclaim(row) -> connections given back: a process that held this row is gone. */
static napi_value js_reclaim(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t row;
  if (counters == NULL || get_args(env, info, 1, argv) != 0 || get_int(env, argv[0], &row) != 0 || row < 0 || (uint32_t)row >= counter_rows)
    return type_error(env, "reclaim(row) on attached counters");
  int64_t given = 0;
  for (uint32_t port = 0; port < counter_ports; port++) {
    int32_t held = __atomic_exchange_n(OWN(row, port), 0, __ATOMIC_ACQ_REL);
    if (held != 0) {
      __atomic_sub_fetch(TOTAL(port), held, __ATOMIC_RELEASE);
      given += held;
    }
  }
  return int_value(env, given);
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "bindListener", NULL, js_bind_listener, NULL, NULL, NULL, napi_enumerable, NULL },
    { "localAddress", NULL, js_local_address, NULL, NULL, NULL, napi_enumerable, NULL },
    { "close", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL },
    { "socketPair", NULL, js_socket_pair, NULL, NULL, NULL, napi_enumerable, NULL },
    { "listenUnix", NULL, js_listen_unix, NULL, NULL, NULL, napi_enumerable, NULL },
    { "connectUnix", NULL, js_connect_unix, NULL, NULL, NULL, napi_enumerable, NULL },
    { "acceptUnix", NULL, js_accept_unix, NULL, NULL, NULL, napi_enumerable, NULL },
    { "sendFds", NULL, js_send_fds, NULL, NULL, NULL, napi_enumerable, NULL },
    { "recvFds", NULL, js_recv_fds, NULL, NULL, NULL, napi_enumerable, NULL },
    { "countersCreate", NULL, js_counters_create, NULL, NULL, NULL, napi_enumerable, NULL },
    { "countersAttach", NULL, js_counters_attach, NULL, NULL, NULL, napi_enumerable, NULL },
    { "acquire", NULL, js_acquire, NULL, NULL, NULL, napi_enumerable, NULL },
    { "release", NULL, js_release, NULL, NULL, NULL, napi_enumerable, NULL },
    { "count", NULL, js_count, NULL, NULL, NULL, napi_enumerable, NULL },
    { "reclaim", NULL, js_reclaim, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
