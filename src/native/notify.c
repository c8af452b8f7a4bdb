/*
 * The service's word to its service manager: one datagram to systemd's notification socket, as
 * sd_notify(3) sends it, without libsystemd (Node has no unix datagram sockets). Built into the
 * confine addon; src/node/notify.ts is its TypeScript face and says when each state is sent.
 *
 * JavaScript sees:
 *   notify(address, state) -> undefined
 *       address: $NOTIFY_SOCKET, a path or '@' and an abstract name
 *       throws an Error whose code is the errno's name (ENOENT, ECONNREFUSED, …) when not sent
 */
#define _GNU_SOURCE
#include "service.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* systemd reads at most PIPE_BUF bytes of a notification (NOTIFY_BUFFER_MAX). */
#define NOTIFY_MAX 4096

/* Sends `state` to the AF_UNIX datagram socket at `address` (a path, or '@' and an abstract
   name). 0 or an errno. A send that would block waits at most a second: systemd reads its
   notification socket at once, and the event loop must not stall on a wedged receiver. */
static int notify(const char *address, size_t address_len, const char *state, size_t state_len) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (address_len >= sizeof sa.sun_path) return ENAMETOOLONG;
  if (address_len < 2 || (address[0] != '/' && address[0] != '@')) return EAFNOSUPPORT;
  memcpy(sa.sun_path, address, address_len);
  if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0'; /* an abstract name: its length says where it ends */
  socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + address_len + (address[0] == '/' ? 1 : 0));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  struct timeval timeout = { 1, 0 };
  int e = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0) e = errno;
  if (e == 0) {
    ssize_t sent = sendto(fd, state, state_len, MSG_NOSIGNAL, (const struct sockaddr *)&sa, sa_len);
    if (sent < 0) e = errno;
    else if ((size_t)sent != state_len) e = EMSGSIZE;
  }
  close(fd);
  return e;
}

/* ---- N-API ---- */

/* notify(address, state) */
static napi_value js_notify(napi_env env, napi_callback_info info) {
  size_t argc = 2, address_len = 0, state_len = 0;
  napi_value argv[2];
  char address[sizeof ((struct sockaddr_un *)0)->sun_path + 1];
  char state[NOTIFY_MAX + 1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], address, sizeof address, &address_len) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], state, sizeof state, &state_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "notify(address, state)");
    return NULL;
  }
  if (state_len >= NOTIFY_MAX) return switchyard_throw_errno(env, "notify", EMSGSIZE);
  int e = notify(address, address_len, state, state_len);
  if (e != 0) {
    char what[160];
    snprintf(what, sizeof what, "notify %.110s", address);
    return switchyard_throw_errno(env, what, e);
  }
  return NULL;
}

int switchyard_notify_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "notify", NULL, js_notify, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok ? 0 : -1;
}
