/*
 * The service's own privileges. (What a sandbox worker gives up is confine.c; both are built
 * into the same addon.)
 *
 * dropPrivileges: a process started as root that has bound its ports becomes an unprivileged
 * user and keeps a few capabilities, in one call, so that no JavaScript runs half-way. The
 * process ends in the state systemd gives a service with User=, AmbientCapabilities= and
 * CapabilityBoundingSet= the kept set, and NoNewPrivileges=yes:
 *
 *   1. check        every kept capability is held now (permitted); nothing is changed otherwise.
 *   2. bounding set every capability not kept is dropped from it (PR_CAPBSET_DROP, which needs
 *                   CAP_SETPCAP: root has it; a process that is already the user and lacks it
 *                   keeps the bounding set it was given).
 *   3. identity     (root only) PR_SET_KEEPCAPS on this thread, so that the uid change keeps its
 *                   permitted set; then the user's groups (setgroups), gid and uid (setresgid,
 *                   setresuid: real, effective and saved). glibc applies each of the three to
 *                   every thread of the process. Then PR_SET_KEEPCAPS 0 again.
 *   4. capabilities permitted = effective = inheritable = the kept set (capset), and ambient =
 *                   the kept set (PR_CAP_AMBIENT_RAISE): a program this process starts later (a
 *                   proxy process, a new master for an upgrade, sandbox-exec and its worker)
 *                   holds them too, as under AmbientCapabilities=. Without the ambient set an
 *                   execve by a non-root user drops every capability.
 *   5. no_new_privs nothing executed from here on gains a privilege: set-user-ID bits and file
 *                   capabilities are ignored. Ambient capabilities still pass (they are no gain),
 *                   which is what sandbox-exec (which sets no_new_privs itself) relies on. Set
 *                   on this thread, and then on every other one by installing a seccomp filter
 *                   that allows every call with SECCOMP_FILTER_FLAG_TSYNC: the kernel gives each
 *                   thread it synchronises the caller's no_new_privs. Otherwise an existing
 *                   thread (whose bounding set is still whole) could execute a set-user-ID root
 *                   program and be root again. The filter decides nothing (the kernel's cache
 *                   of constant actions skips it), and children inherit it under their own.
 *                   A process that had no_new_privs already (systemd's NoNewPrivileges=, or a
 *                   master started by one that dropped) inherited it at execve on every thread,
 *                   and gets no filter.
 *   6. read back    getresuid, getresgid, capget, the ambient set and no_new_privs are what was
 *                   asked, or it throws.
 *
 * Linux keeps capabilities, PR_SET_KEEPCAPS, the bounding set and no_new_privs per thread:
 * steps 2 and 4 apply to the calling thread, which must be Node's main thread (it binds sockets
 * and starts child processes); threads it starts later inherit them. Threads that exist already
 * (V8's, libuv's) lose every capability at step 3, as any thread does when its uids leave 0
 * without PR_SET_KEEPCAPS, and get no_new_privs at step 5; their bounding set stays whole, which
 * no_new_privs makes moot.
 *
 * A failure after step 2 leaves the process half-dropped: the caller must exit.
 *
 * setAmbient: replaces the calling thread's ambient set, for withoutAmbientCapabilities
 * (privileges.ts): a child process forked while it is empty starts with no capability.
 *
 * JavaScript sees:
 *   dropPrivileges({ uid, gid, groups, keep, switchUser }) -> undefined
 *   setAmbient(capabilities: number[]) -> undefined   each must be permitted and inheritable
 *       both throw an Error whose code is the errno's name (EPERM, …), naming the step
 */
#define _GNU_SOURCE
#include "capabilities.h"
#include "service.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h> /* CAP_SETPCAP */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the drop ---- */

typedef struct {
  uid_t uid;
  gid_t gid;
  const gid_t *groups;
  size_t ngroups;
  uint64_t keep;
  bool switch_user; /* root: change identity; false: the process is the user already */
} drop_request;

/* Gives every thread of the process this thread's no_new_privs (see step 5); 0 or an errno. */
static int no_new_privs_everywhere(void) {
  struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog prog = { 1, &allow };
  long r = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
  if (r < 0) return errno;
  return r > 0 ? EAGAIN : 0; /* r: a thread that could not be synchronised */
}

/* Returns NULL, or the step that failed with *err set. */
static const char *drop(const drop_request *r, int *err) {
  cap_sets now;
  int top = cap_last();
  /* Inherited at execve (systemd's NoNewPrivileges=, a master started by one that dropped):
     every thread, all started since, has it already. */
  bool had_no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
  if ((*err = cap_get(&now)) != 0) return "capget";
  if (top < 63 && (r->keep >> (top + 1)) != 0) return *err = EINVAL, "keep (a capability this kernel does not know)";
  if ((r->keep & ~now.permitted) != 0) return *err = EPERM, "keep (a capability this process does not hold)";
  if (r->switch_user && (geteuid() != 0 || getuid() != 0)) return *err = EPERM, "identity (not root)";

  if ((now.effective >> CAP_SETPCAP) & 1) {
    for (int c = 0; c <= top; c++) {
      if ((r->keep >> c) & 1 || prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 1) continue;
      if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0) return *err = errno, "bounding set";
    }
  }
  if (r->switch_user) {
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return *err = errno, "PR_SET_KEEPCAPS";
    if (setgroups(r->ngroups, r->groups) != 0) return *err = errno, "setgroups";
    if (setresgid(r->gid, r->gid, r->gid) != 0) return *err = errno, "setresgid";
    if (setresuid(r->uid, r->uid, r->uid) != 0) return *err = errno, "setresuid";
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return *err = errno, "PR_SET_KEEPCAPS";
  }
  cap_sets kept = { r->keep, r->keep, r->keep };
  if ((*err = cap_set(&kept)) != 0) return "capset";
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return *err = errno, "ambient (clear)";
  for (int c = 0; c <= top; c++) {
    if (((r->keep >> c) & 1) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) != 0) return *err = errno, "ambient (raise)";
  }
  if (!had_no_new_privs) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return *err = errno, "PR_SET_NO_NEW_PRIVS";
    if ((*err = no_new_privs_everywhere()) != 0) return "no_new_privs on every thread (seccomp TSYNC)";
  }

  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || ru != r->uid || eu != r->uid || su != r->uid) return *err = EPERM, "uid (read back)";
  if (r->switch_user && (getresgid(&rg, &eg, &sg) != 0 || rg != r->gid || eg != r->gid || sg != r->gid)) return *err = EPERM, "gid (read back)";
  if ((*err = cap_get(&now)) != 0) return "capget (read back)";
  if (now.effective != r->keep || now.permitted != r->keep || now.inheritable != r->keep) return *err = EPERM, "capabilities (read back)";
  for (int c = 0; c <= top; c++) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) != (int)((r->keep >> c) & 1)) return *err = EPERM, "ambient (read back)";
  }
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) return *err = EPERM, "no_new_privs (read back)";
  return NULL;
}

/* ---- N-API ---- */

/* See service.h. */
napi_value switchyard_throw_errno(napi_env env, const char *what, int err) {
  char message[200];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value error, msg, code;
  const char *name = strerrorname_np(err);
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_string_utf8(env, name == NULL ? "EUNKNOWN" : name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok) {
    return NULL;
  }
  napi_value errno_value;
  if (napi_create_int32(env, err, &errno_value) == napi_ok) napi_set_named_property(env, error, "errno", errno_value);
  napi_throw(env, error);
  return NULL;
}

static int get_property(napi_env env, napi_value obj, const char *key, napi_valuetype want, napi_value *out) {
  napi_valuetype type;
  if (napi_get_named_property(env, obj, key, out) != napi_ok || napi_typeof(env, *out, &type) != napi_ok) return -1;
  return type == want ? 0 : -1;
}

/* Reads an array of small integers (at most `max`); its length, or -1. */
static long get_uint_array(napi_env env, napi_value obj, const char *key, uint32_t *out, uint32_t max) {
  napi_value array, item;
  bool is_array = false;
  uint32_t length = 0;
  if (napi_get_named_property(env, obj, key, &array) != napi_ok || napi_is_array(env, array, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, array, &length) != napi_ok || length > max) {
    return -1;
  }
  for (uint32_t i = 0; i < length; i++) {
    if (napi_get_element(env, array, i, &item) != napi_ok || napi_get_value_uint32(env, item, &out[i]) != napi_ok) return -1;
  }
  return (long)length;
}

#define MAX_GROUPS 1024

/* dropPrivileges({ uid, gid, groups, keep, switchUser }) */
static napi_value js_drop_privileges(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], v;
  uint32_t uid = 0, gid = 0, caps[64], group_values[MAX_GROUPS];
  gid_t groups[MAX_GROUPS];
  bool switch_user = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      get_property(env, argv[0], "uid", napi_number, &v) != 0 || napi_get_value_uint32(env, v, &uid) != napi_ok ||
      get_property(env, argv[0], "gid", napi_number, &v) != 0 || napi_get_value_uint32(env, v, &gid) != napi_ok ||
      get_property(env, argv[0], "switchUser", napi_boolean, &v) != 0 || napi_get_value_bool(env, v, &switch_user) != napi_ok) {
    napi_throw_type_error(env, NULL, "dropPrivileges({ uid, gid, groups, keep, switchUser })");
    return NULL;
  }
  long ngroups = get_uint_array(env, argv[0], "groups", group_values, MAX_GROUPS);
  long ncaps = get_uint_array(env, argv[0], "keep", caps, 64);
  if (ngroups < 0 || ncaps < 0 || uid == 0 || uid == (uint32_t)-1 || gid == (uint32_t)-1) {
    napi_throw_type_error(env, NULL, "dropPrivileges: a non-root uid, a gid, groups and capability numbers");
    return NULL;
  }
  uint64_t keep = 0;
  for (long i = 0; i < ncaps; i++) {
    if (caps[i] > 63) return switchyard_throw_errno(env, "dropPrivileges: keep", EINVAL);
    keep |= 1ull << caps[i];
  }
  for (long i = 0; i < ngroups; i++) groups[i] = (gid_t)group_values[i];
  drop_request r = { (uid_t)uid, (gid_t)gid, groups, (size_t)ngroups, keep, switch_user };
  int err = 0;
  const char *step = drop(&r, &err);
  if (step != NULL) {
    char what[120];
    snprintf(what, sizeof what, "dropping privileges failed at %s", step);
    return switchyard_throw_errno(env, what, err);
  }
  return NULL;
}

/* setAmbient(capabilities) */
static napi_value js_set_ambient(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], holder;
  uint32_t caps[64];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_create_object(env, &holder) != napi_ok ||
      napi_set_named_property(env, holder, "keep", argv[0]) != napi_ok) {
    napi_throw_type_error(env, NULL, "setAmbient(capabilities)");
    return NULL;
  }
  long n = get_uint_array(env, holder, "keep", caps, 64);
  if (n < 0) {
    napi_throw_type_error(env, NULL, "setAmbient: capability numbers");
    return NULL;
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return switchyard_throw_errno(env, "setAmbient (clear)", errno);
  for (long i = 0; i < n; i++) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, caps[i], 0, 0) != 0) return switchyard_throw_errno(env, "setAmbient (raise)", errno);
  }
  return NULL;
}

int switchyard_privileges_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "dropPrivileges", NULL, js_drop_privileges, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setAmbient", NULL, js_set_ambient, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok ? 0 : -1;
}
