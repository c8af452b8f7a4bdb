/*
 * sandbox-exec: how the pool starts a sandbox worker.
 *
 *   sandbox-exec [--batch] PROGRAM [ARG]...
 *
 * It sets what must be set before Node starts, then executes PROGRAM (node and the worker's
 * script) in its place, with the environment it was given:
 *
 *   descriptors    every descriptor above 3 is closed: the worker keeps its stdio and its
 *                  channel (fd 3), and nothing else the service inherited from whoever
 *                  started it without close-on-exec (Node passes those on to children).
 *   --batch        the SCHED_BATCH policy (see worker-process.ts: a woken worker does not
 *                  preempt the proxy mid-turn).
 *   identity       a service that is not root: the worker becomes the sandbox user named by
 *                  SWITCHYARD_WORKER_IDENTITY (uid:gid), when set, with no supplementary
 *                  groups (the service holds CAP_SETUID and CAP_SETGID for it, as ambient
 *                  capabilities), and then holds no capability at all: ambient, permitted,
 *                  effective and inheritable sets cleared. The service's ambient capabilities
 *                  (CAP_NET_BIND_SERVICE from systemd's AmbientCapabilities=, or kept by
 *                  dropPrivileges) would otherwise pass to the worker, and a uid change between
 *                  two users other than root keeps capabilities. It is done here because this
 *                  process has one thread: capabilities belong to each thread, and Node starts
 *                  its threads as it starts. A service that is root leaves the switch to the
 *                  worker (confine.c), late, once it has loaded its modules: leaving root clears
 *                  every capability of every thread.
 *   no_new_privs   nothing the worker executes can gain a privilege (set-user-ID bits and
 *                  file capabilities are ignored from here on).
 *   no io_uring    a seccomp filter that makes io_uring_setup, io_uring_enter and
 *                  io_uring_register fail with ENOSYS. libuv sets up an io_uring for every
 *                  event loop as Node starts, whatever UV_USE_IO_URING says, and its
 *                  operations are beyond the reach of seccomp: a worker whose loop held one
 *                  could open, connect and read through it after its confinement. With
 *                  ENOSYS, libuv uses epoll_ctl as on kernels without io_uring.
 *
 * The worker confines itself fully once it has loaded its modules (confine.c); this filter
 * stays under that one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "capabilities.h"

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#endif

#define NR_IS(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 3, 0)

/* Closes every descriptor above 3; 0 or an errno. */
static int close_above_3(void) {
  if (syscall(__NR_close_range, 4u, ~0u, 0u) == 0) return 0;
  DIR *dir = opendir("/proc/self/fd"); /* kernels before 5.9 */
  if (dir == NULL) return errno;
  int own = dirfd(dir);
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    int fd = atoi(e->d_name);
    if (fd > 3 && fd != own) close(fd);
  }
  closedir(dir);
  return 0;
}

/* Parses "UID:GID" (decimal, neither 0 nor -1); 0, or -1 when malformed. */
static int parse_identity(const char *text, uid_t *uid, gid_t *gid) {
  char *end = NULL;
  errno = 0;
  unsigned long u = strtoul(text, &end, 10);
  if (errno != 0 || end == text || *end != ':' || u == 0 || u >= 0xffffffffUL) return -1;
  const char *rest = end + 1;
  unsigned long g = strtoul(rest, &end, 10);
  if (errno != 0 || end == rest || *end != '\0' || g >= 0xffffffffUL || rest[0] == '-' || text[0] == '-') return -1;
  *uid = (uid_t)u;
  *gid = (gid_t)g;
  return 0;
}

/* The identity step (see above); NULL, or the step that failed with *err set. */
static const char *leave_service_user(int *err) {
  uid_t r, e, s;
  if (getresuid(&r, &e, &s) != 0) return *err = errno, "getresuid";
  if (r == 0 || e == 0 || s == 0) return NULL; /* root: confine.c switches */
  const char *identity = getenv("SWITCHYARD_WORKER_IDENTITY");
  if (identity != NULL && identity[0] != '\0') {
    uid_t uid;
    gid_t gid;
    if (parse_identity(identity, &uid, &gid) != 0) return *err = EINVAL, "SWITCHYARD_WORKER_IDENTITY";
    if (setgroups(0, NULL) != 0) return *err = errno, "setgroups";
    if (setresgid(gid, gid, gid) != 0) return *err = errno, "setresgid";
    if (setresuid(uid, uid, uid) != 0) return *err = errno, "setresuid";
  }
  if ((*err = cap_clear_all()) != 0) return "clearing capabilities";
  return NULL;
}

int main(int argc, char **argv) {
  int first = 1;
  int err = close_above_3();
  if (err != 0) {
    fprintf(stderr, "sandbox-exec: closing descriptors: %s\n", strerror(err));
    return 71;
  }
  if (argc > first && strcmp(argv[first], "--batch") == 0) {
    struct sched_param param = { 0 };
    if (sched_setscheduler(0, SCHED_BATCH, &param) != 0) perror("sandbox-exec: SCHED_BATCH");
    first++;
  }
  if (first >= argc) {
    fprintf(stderr, "usage: sandbox-exec [--batch] PROGRAM [ARG]...\n");
    return 64;
  }
  const char *step = leave_service_user(&err);
  if (step != NULL) {
    fprintf(stderr, "sandbox-exec: leaving the service's user and capabilities: %s: %s\n", step, strerror(err));
    return 71;
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    perror("sandbox-exec: PR_SET_NO_NEW_PRIVS");
    return 71;
  }
#ifdef NATIVE_ARCH
  struct sock_filter code[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    NR_IS(__NR_io_uring_setup),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
  };
  struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
  if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    perror("sandbox-exec: seccomp");
    return 71;
  }
#else
#error "sandbox-exec: only x86_64 and aarch64 are supported"
#endif
  execv(argv[first], argv + first);
  fprintf(stderr, "sandbox-exec: %s: %s\n", argv[first], strerror(errno));
  return 127;
}
