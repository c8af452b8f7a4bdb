/*
 * The native data path's N-API glue: the functions JavaScript calls (src/connection/native-relay.ts),
 * their arguments checked here, and the callbacks through which the core (relay.c) tells
 * JavaScript what happened. relay.h states the contract and how the data path works.
 */
#define _GNU_SOURCE
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h> /* if_nametoindex */
#include <netinet/in.h>
#include <node_api.h>
#include <stdio.h> /* snprintf */
#include <stdlib.h>
#include <string.h>

typedef struct {
  state_t core; /* first: the core's callbacks are given &core */
  napi_env env;
  napi_ref on_accepted, on_received, on_closed, on_dialed, on_drained;
  napi_async_context async_context;
} addon_t;

static addon_t *addon_of(state_t *s) { return (addon_t *)s; }

#define CHECK(call)                                                         \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      napi_throw_error(env, "ERR_RELAY", "native relay: " #call " failed"); \
      return NULL;                                                          \
    }                                                                       \
  } while (0)

/* ---- calling JavaScript, from the event loop (microtasks run after each call) ---- */

static napi_value number(napi_env env, double value) {
  napi_value v = NULL;
  napi_create_double(env, value, &v);
  return v;
}

/* Calls `ref` with argv; the caller has opened a handle scope. */
static void invoke(addon_t *a, napi_ref ref, size_t argc, napi_value *argv) {
  napi_env env = a->env;
  napi_value cb, recv, result;
  napi_get_reference_value(env, ref, &cb);
  napi_get_global(env, &recv); /* napi_make_callback wants an object */
  if (napi_make_callback(env, a->async_context, recv, cb, argc, argv, &result) == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
}

/* Calls `ref` with up to four numbers. */
static void call_numbers(addon_t *a, napi_ref ref, size_t argc, const double *args) {
  napi_handle_scope scope;
  if (napi_open_handle_scope(a->env, &scope) != napi_ok) return;
  napi_value argv[4];
  for (size_t k = 0; k < argc && k < 4; k++) argv[k] = number(a->env, args[k]);
  invoke(a, ref, argc, argv);
  napi_close_handle_scope(a->env, scope);
}

/* A copy of `len` bytes as a Buffer (null when len is 0), valid while the scope is open. */
static napi_value chunk_value(napi_env env, const char *bytes, size_t len) {
  napi_value v = NULL;
  if (len == 0) napi_get_null(env, &v);
  else if (napi_create_buffer_copy(env, len, bytes, NULL, &v) != napi_ok) v = NULL;
  return v;
}

int relay_on_accepted(state_t *s, uint32_t listener, relay_t *r, const char *remote, int remote_port, const char *local,
                      int local_port, const char *bytes, size_t len) {
  addon_t *a = addon_of(s);
  napi_env env = a->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return 0;
  napi_value argv[7] = { number(env, listener), number(env, r->id), NULL, number(env, remote_port), NULL, number(env, local_port),
                         chunk_value(env, bytes, len) };
  int ok = argv[6] != NULL && napi_create_string_latin1(env, remote, NAPI_AUTO_LENGTH, &argv[2]) == napi_ok &&
           napi_create_string_latin1(env, local, NAPI_AUTO_LENGTH, &argv[4]) == napi_ok;
  if (ok) invoke(a, a->on_accepted, 7, argv);
  napi_close_handle_scope(env, scope);
  return ok;
}

/* onReceived(id, chunk): a chunk before the decision, or null for the client's FIN. */
void relay_on_received(state_t *s, uint32_t id, const char *bytes, size_t len) {
  addon_t *a = addon_of(s);
  napi_handle_scope scope;
  if (napi_open_handle_scope(a->env, &scope) != napi_ok) return;
  napi_value argv[2] = { number(a->env, id), chunk_value(a->env, bytes, len) };
  invoke(a, a->on_received, 2, argv);
  napi_close_handle_scope(a->env, scope);
}

void relay_on_drained(state_t *s, uint32_t id) {
  double args[1] = { id };
  call_numbers(addon_of(s), addon_of(s)->on_drained, 1, args);
}

void relay_on_closed(state_t *s, uint32_t id, uint64_t bytes_in, uint64_t bytes_out, int err) {
  double args[4] = { id, (double)bytes_in, (double)bytes_out, err };
  call_numbers(addon_of(s), addon_of(s)->on_closed, 4, args);
}

void relay_on_dialed(state_t *s, uint32_t id, int err) {
  double args[2] = { id, err };
  call_numbers(addon_of(s), addon_of(s)->on_dialed, 2, args);
}

/* ---- arguments ---- */

static addon_t *addon_in(napi_env env) {
  addon_t *a = NULL;
  napi_get_instance_data(env, (void **)&a);
  return a;
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
  relay_t *r = NULL;
  if (s != NULL && v != NULL && napi_get_value_uint32(env, v, &id) == napi_ok) r = relay_get(s, id);
  if (r == NULL) fail(env, "native relay: no such connection");
  return r;
}

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
  addon_t *a = addon_in(env);
  if (a == NULL) fail(env, "native relay: not initialised");
  return a == NULL ? NULL : &a->core;
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
  if (!relay_keep(d, data, len)) {
    throw_errno(env, "owe", ENOMEM);
    return 0;
  }
  return 1;
}

/*
 * The two optional Buffers owed to each side (arguments 2 and 3) of join(), with
 * room made for them: 1, or 0 with an exception, and then nothing is taken.
 */
static int reserve_owed(napi_env env, relay_t *r, napi_value *argv, void **data, size_t *len) {
  for (int k = 0; k < 2; k++) {
    if (!buffer_arg(env, argv[2 + k], &data[k], &len[k])) {
      napi_throw_type_error(env, "ERR_RELAY", "native relay: bytes to send must be a Buffer");
      return 0;
    }
  }
  for (int k = 0; k < 2; k++) {
    if (!relay_reserve(&r->dir[k], len[k])) {
      throw_errno(env, "owe", ENOMEM);
      return 0;
    }
  }
  return 1;
}

static napi_value id_value(napi_env env, uint32_t id) {
  napi_value result;
  CHECK(napi_create_uint32(env, id, &result));
  return result;
}

/* ---- the functions JavaScript calls ---- */

static void cleanup(void *data) {
  /* The handles' memory must outlive their close callbacks, which run after this hook: kept. */
  relay_cleanup(&((addon_t *)data)->core);
}

/* init(onAccepted, onReceived, onClosed, onDialed, onDrained, maxPipes?) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (addon_in(env) != NULL) return fail(env, "native relay: already initialised");
  for (size_t k = 0; k < 5; k++) {
    napi_valuetype type;
    if (k >= argc || napi_typeof(env, argv[k], &type) != napi_ok || type != napi_function) {
      napi_throw_type_error(env, "ERR_RELAY", "native relay: init() takes five functions");
      return NULL;
    }
  }
  uint32_t max_lent = DEFAULT_MAX_LENT;
  if (argc > 5) napi_get_value_uint32(env, argv[5], &max_lent); /* not a number: the default */
  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  addon_t *a = calloc(1, sizeof *a);
  if (a == NULL) return throw_errno(env, "init", ENOMEM);
  a->env = env;
  napi_ref *refs[5] = { &a->on_accepted, &a->on_received, &a->on_closed, &a->on_dialed, &a->on_drained };
  size_t made = 0;
  while (made < 5 && napi_create_reference(env, argv[made], 1, refs[made]) == napi_ok) made++;
  int async = made == 5 && napi_create_string_utf8(env, "SwitchyardRelay", NAPI_AUTO_LENGTH, &name) == napi_ok &&
              napi_async_init(env, NULL, name, &a->async_context) == napi_ok;
  int err = async ? relay_init(&a->core, loop, max_lent) : 0;
  if (!async || err != 0) {
    /* Nothing is left behind: the references, the async context, the state. */
    if (async) napi_async_destroy(env, a->async_context);
    for (size_t k = 0; k < made; k++) napi_delete_reference(env, *refs[k]);
    free(a);
    return err != 0 ? throw_errno(env, "init", err) : fail(env, "native relay: init() failed");
  }
  if (napi_set_instance_data(env, a, NULL, NULL) != napi_ok || napi_add_env_cleanup_hook(env, cleanup, a) != napi_ok) {
    napi_set_instance_data(env, NULL, NULL, NULL);
    relay_cleanup(&a->core); /* the handles close on the loop: their memory is kept */
    napi_async_destroy(env, a->async_context);
    for (size_t k = 0; k < 5; k++) napi_delete_reference(env, *refs[k]);
    return fail(env, "native relay: init() failed");
  }
  return NULL;
}

/* listen(fd, firstRead?) -> listener: accepts on a duplicate of a bound, listening socket. */
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  state_t *s = call_args(env, info, &argc, argv);
  if (s == NULL) return NULL;
  int32_t given;
  uint32_t first = CHUNK;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &given) != napi_ok || given < 0 ||
      (argc > 1 && napi_get_value_uint32(env, argv[1], &first) != napi_ok)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: listen() takes a file descriptor and a byte count");
    return NULL;
  }
  uint32_t id;
  int err = relay_listen(s, given, first, &id);
  return err != 0 ? throw_errno(env, "listen", err) : id_value(env, id);
}

/* firstRead(listener, bytes): how much each client of the listener is read at accept, from now on. */
static napi_value js_first_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  state_t *s = call_args(env, info, &argc, argv);
  uint32_t id, bytes;
  if (s == NULL) return NULL;
  if (argc < 2 || napi_get_value_uint32(env, argv[0], &id) != napi_ok || napi_get_value_uint32(env, argv[1], &bytes) != napi_ok ||
      relay_first_read(s, id, bytes) != 0)
    return fail(env, "native relay: no such listener");
  return NULL;
}

/* unlisten(listener): closes it; clients that connect from now on are refused. */
static napi_value js_unlisten(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  state_t *s = call_args(env, info, &argc, argv);
  uint32_t id;
  if (s == NULL) return NULL;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &id) != napi_ok || relay_unlisten(s, id) != 0)
    return fail(env, "native relay: no such listener");
  return NULL;
}

/* read(id, bytes): a client being received may be read for at most `bytes` more. */
static napi_value js_read(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 2, argv, &s), RECEIVING, "native relay: read() is for a client being received");
  if (r == NULL) return NULL;
  double bytes;
  if (napi_get_value_double(env, argv[1], &bytes) != napi_ok || !(bytes >= 0)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: read() takes a byte count");
    return NULL;
  }
  relay_read(s, r, bytes >= (double)SIZE_MAX ? SIZE_MAX : (size_t)bytes);
  return NULL;
}

/* The client being received that argument 0 names, now owing it the bytes of argument 1. */
static relay_t *replying(napi_env env, napi_callback_info info, state_t **s, const char *message) {
  napi_value argv[2];
  relay_t *r = in_state(env, relay_call(env, info, 2, argv, s), RECEIVING, message);
  return r != NULL && owe(env, argv[1], &r->dir[1]) ? r : NULL;
}

/* send(id, bytes) -> owed: writes to a client that is being received (a reply). */
static napi_value js_send(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 2, argv, &s), RECEIVING, "native relay: send() is for a client being received");
  if (r == NULL) return NULL;
  void *data;
  size_t len, owed;
  if (!buffer_arg(env, argv[1], &data, &len)) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: bytes to send must be a Buffer");
    return NULL;
  }
  int err = relay_send(s, r, data, len, &owed);
  return err != 0 ? throw_errno(env, "send", err) : number(env, (double)owed);
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
  if (r != NULL) relay_end(s, r);
  return NULL;
}

/*
 * An IPv6 zone ("eth0", or an interface index as "2"): its scope id. A zone that names no
 * interface gives 0, as libuv's uv_ip6_addr does, and the kernel then refuses a link-local
 * connect (EINVAL) at once.
 */
static uint32_t scope_of(const char *zone) {
  unsigned index = if_nametoindex(zone);
  if (index != 0) return index;
  char *end;
  unsigned long n = strtoul(zone, &end, 10);
  return zone[0] >= '0' && zone[0] <= '9' && *end == '\0' && n <= UINT32_MAX ? (uint32_t)n : 0;
}

/*
 * dial(ip, port) -> id: starts a non-blocking connect (TCP_NODELAY) to an IPv4 or IPv6
 * address, an IPv6 one with or without a zone ("fe80::1%eth0"); onDialed(id, errno) follows.
 * On success the id waits for join(); on failure it is gone. Errors the connect reports at
 * once (EADDRNOTAVAIL, say) throw. Host names are resolved by the caller.
 */
static napi_value js_dial(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  state_t *s = call_args(env, info, &argc, argv);
  if (s == NULL) return NULL;
  char ip[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
  size_t len = 0;
  uint32_t port = 0;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], ip, sizeof ip, &len) != napi_ok || len >= sizeof ip - 1 ||
      napi_get_value_uint32(env, argv[1], &port) != napi_ok || port == 0 || port > 65535) {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: dial() takes an IP address and a port");
    return NULL;
  }
  char *zone = strchr(ip, '%');
  if (zone != NULL) *zone++ = '\0';
  struct sockaddr_storage addr;
  memset(&addr, 0, sizeof addr);
  socklen_t addrlen;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
  if (zone == NULL && inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    addrlen = sizeof *v4;
  } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1 && (zone == NULL || *zone != '\0')) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    v6->sin6_scope_id = zone == NULL ? 0 : scope_of(zone);
    addrlen = sizeof *v6;
  } else {
    napi_throw_type_error(env, "ERR_RELAY", "native relay: dial() takes an IP address");
    return NULL;
  }
  relay_t *r;
  int err = relay_dial(s, (struct sockaddr *)&addr, addrlen, &r);
  return err != 0 ? throw_errno(env, "connect", err) : id_value(env, r->id);
}

/*
 * join(id, dialed, toUpstream?, toClient?): relays a client being received with a dialed
 * upstream, whose entry is consumed; toClient follows any reply not yet written. All or
 * nothing: room for the owed bytes is made before the dialed entry is touched, so when it
 * throws both entries are as they were, and the caller destroys each.
 */
static napi_value js_join(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  state_t *s;
  relay_t *r = in_state(env, relay_call(env, info, 4, argv, &s), RECEIVING, "native relay: join() is for a client being received");
  if (r == NULL) return NULL;
  relay_t *u = in_state(env, relay_arg(env, s, argv[1]), DIALED, "native relay: join() takes a connected, unjoined dial");
  if (u == NULL) return NULL;
  void *data[2];
  size_t len[2];
  if (!reserve_owed(env, r, argv, data, len)) return NULL;
  int err = relay_join(s, r, u);
  if (err != 0) return throw_errno(env, "epoll_ctl", err);
  relay_keep(&r->dir[0], data[0], len[0]); /* reserved: cannot fail */
  relay_keep(&r->dir[1], data[1], len[1]);
  relay_start(s, r);
  return NULL;
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
  relay_release(s, r, reset);
  return result;
}

/* stats() -> { connections, lentPipes, sparePipes, shed } */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  addon_t *a = addon_in(env);
  state_t *s = a == NULL ? NULL : &a->core;
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
    { "firstRead", NULL, js_first_read, NULL, NULL, NULL, napi_enumerable, NULL },
    { "unlisten", NULL, js_unlisten, NULL, NULL, NULL, napi_enumerable, NULL },
    { "read", NULL, js_read, NULL, NULL, NULL, napi_enumerable, NULL },
    { "send", NULL, js_send, NULL, NULL, NULL, napi_enumerable, NULL },
    { "pause", NULL, js_pause, NULL, NULL, NULL, napi_enumerable, NULL },
    { "end", NULL, js_end, NULL, NULL, NULL, napi_enumerable, NULL },
    { "dial", NULL, js_dial, NULL, NULL, NULL, napi_enumerable, NULL },
    { "join", NULL, js_join, NULL, NULL, NULL, napi_enumerable, NULL },
    { "bytes", NULL, js_bytes, NULL, NULL, NULL, napi_enumerable, NULL },
    { "idleMs", NULL, js_idle_ms, NULL, NULL, NULL, napi_enumerable, NULL },
    { "destroy", NULL, js_destroy, NULL, NULL, NULL, napi_enumerable, NULL },
    { "stats", NULL, js_stats, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
