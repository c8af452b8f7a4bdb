/*
 * The confinement of a sandbox worker process: what code that escapes V8 in a worker still
 * cannot do. The worker calls confine() once, after it has loaded everything it will ever
 * need and opened its channel, and before it reads its first request:
 *
 *   1. identity    when given one: no supplementary groups, then the sandbox user's gid and
 *                  uid (setresgid/setresuid; glibc applies them to every thread). As root this
 *                  clears every capability on every thread. A service that is not root but
 *                  holds CAP_SETUID and CAP_SETGID has its workers switch in sandbox-exec
 *                  instead, before Node starts a thread (a uid change between two users other
 *                  than root would keep the capabilities); the worker then is that user
 *                  already, and this step checks it. Without an identity the user is kept
 *                  (sandbox-exec has cleared the capabilities of a worker that is not root).
 *   2. dumpable 0  no process of its uid may read its memory or ptrace it (/proc/PID/mem,
 *                  environ, …); a credential change clears it anyway, this makes it explicit.
 *   3. limits      RLIMIT_CORE 0, RLIMIT_FSIZE 0, RLIMIT_NOFILE small (the caller's figure).
 *   4. NO_NEW_PRIVS  no exec (which seccomp forbids anyway) can ever gain a privilege.
 *   5. Landlock    a ruleset that handles every filesystem right with no rule allowing any,
 *                  plus TCP bind/connect and the signal and abstract-socket scopes where the
 *                  kernel has them. Landlock up to ABI 7 binds the calling thread and the
 *                  threads it starts later, not its running siblings: it is the second layer
 *                  on the main thread (where synchronous router calls run); seccomp is the
 *                  layer that binds every thread.
 *   6. seccomp     an allowlist filter, installed with SECCOMP_FILTER_FLAG_TSYNC so every
 *                  thread of the (multithreaded) worker gets it, and every thread started
 *                  later inherits it. The table below lists each allowed call and why a
 *                  running worker needs it. Anything else fails with EPERM; the calls that
 *                  only an escape would make (exec, ptrace, reading another process's
 *                  memory) and a foreign architecture or x32 call number kill the process,
 *                  which the pool logs and blames on the tenant whose call was running.
 *
 * How the table was measured: workers started as `strace -D -f -o FILE sandbox-exec … node
 * worker.js` (with this filter left out), under test/{workers,containment,hostile,spare,bombs}
 * (and hosting on Node 26); every call after landlock_restrict_self (the end of start-up) was
 * counted. Node 24.21, 135 workers: futex 187457, munmap 40855, madvise 25729, mmap 23377,
 * getpid 14298, mprotect 9102, epoll_pwait 6008, clock_nanosleep 3779, write 3593, read 2936,
 * rt_sigprocmask 2542, brk 1551, sched_getaffinity 866, clone3 673 (clone once clone3 is
 * ENOSYS), rseq 661, set_robust_list 655, gettid 460, epoll_ctl 405, exit 346, getrusage 311,
 * close 144, openat 52 (all refused by Landlock already, all optional: /proc/stat and
 * /sys/devices/system/cpu/online for glibc's CPU count, /proc/sys/vm/overcommit_memory for
 * malloc trimming, tsc_freq_khz for V8; each has a fallback), sched_getparam 34,
 * sched_getscheduler 34, rt_sigreturn 5, tgkill 5 (aborts), restart_syscall 2. Node 26.10,
 * 156 workers: the same, plus getrandom 2097 (V8 seeds each isolate), and, in a worker whose
 * channel closed, fstat, fcntl, ioctl, getsockname, getsockopt, shutdown and exit_group (Node
 * checks fds 0-2 as it exits, and aborts if it cannot; Node 24 does the same). No worker
 * needs to open a file once started: open, openat and openat2 are refused, and Landlock
 * refuses every path as well.
 *
 * A profiled worker (SWITCHYARD_WORKER_CPU_PROF, benchmarks only) must write its profile as it
 * exits: `profiling` leaves out Landlock and RLIMIT_FSIZE and also allows openat, mkdir, stat
 * and pwrite64; the pool then does not switch its user either.
 *
 * JavaScript sees:
 *   confine({ uid?, gid?, maxFiles, profiling? }) -> { landlockAbi }   throws, naming the step
 *   lookupUser(name) -> { uid, gid, groups } | undefined   getpwnam, getgrouplist
 *   dropPrivileges                                         privileges.c (the service's own)
 *   notify                                                 notify.c (sd_notify)
 *   setDumpable(bool)                                      prctl(PR_SET_DUMPABLE), for the proxy
 *   attempt(name) -> errno (0: it worked)                  tests only: one forbidden (or
 *                                                          allowed) call, made directly
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <node_api.h>
#include <pthread.h>
#include "service.h"
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define CONFINE_ARCH AUDIT_ARCH_X86_64
#define X32_SYSCALL_BIT 0x40000000u
#elif defined(__aarch64__)
#define CONFINE_ARCH AUDIT_ARCH_AARCH64
#endif

/* ---- the seccomp allowlist ---- */

typedef enum {
  ALLOW,       /* always */
  THREAD_ONLY, /* clone: only a thread (CLONE_THREAD, no new namespace) */
  OWN_PROCESS, /* kill, tgkill: the first argument is this process's pid */
  NO_SYSCALL,  /* clone3: ENOSYS, so glibc falls back to clone, whose flags a filter can read */
  KILL,        /* only an escape makes it: kill the process */
  ARG1_IN,     /* only with one of `values` as its second argument (fcntl, ioctl commands) */
} rule_kind;

typedef struct {
  int nr;
  rule_kind kind;
  const char *why;
  uint32_t values[4]; /* ARG1_IN: the allowed values, 0 past the last */
} rule_t;

#define R(name, kind, why) { __NR_##name, kind, why, { 0 } }
#define R_ARG1(name, why, ...) { __NR_##name, ARG1_IN, why, { __VA_ARGS__ } }

static const rule_t rules[] = {
  /* memory: V8's heaps and JIT code, malloc, thread stacks */
  R(mmap, ALLOW, "V8 heap pages and JIT code, malloc arenas, thread stacks"),
  R(munmap, ALLOW, "V8 and malloc give memory back"),
  R(mprotect, ALLOW, "V8 flips JIT pages between writable and executable (PROT_EXEC); guard pages"),
  R(madvise, ALLOW, "V8 and malloc release pages (MADV_DONTNEED), V8 marks its heap MADV_DONTFORK"),
  R(brk, ALLOW, "malloc's main arena"),
  R(mremap, ALLOW, "realloc of large blocks (glibc)"),
  /* threads */
  R(futex, ALLOW, "every lock and condition variable (V8 platform, libuv, isolated-vm)"),
  R(clone, THREAD_ONLY, "isolated-vm and V8 start threads; a new process is refused"),
  R(clone3, NO_SYSCALL, "glibc tries it first for a thread; ENOSYS makes it use clone"),
  R(set_robust_list, ALLOW, "glibc, in each new thread"),
  R(rseq, ALLOW, "glibc registers restartable sequences in each new thread"),
  R(sched_getparam, ALLOW, "pthread_create copies the scheduling of its creator"),
  R(sched_getscheduler, ALLOW, "pthread_create copies the scheduling of its creator"),
  R(sched_getaffinity, ALLOW, "how many CPUs (glibc get_nprocs, V8, libuv)"),
  R(sched_yield, ALLOW, "V8 spin locks"),
  R(gettid, ALLOW, "its own thread id (V8, glibc)"),
  R(getpid, ALLOW, "its own pid (V8, glibc)"),
  R(exit, ALLOW, "a thread ends"),
  R(exit_group, ALLOW, "the worker exits (its channel closed)"),
  /* time */
  R(clock_gettime, ALLOW, "CPU-time clocks (isolated-vm times each call); wall clocks outside the vDSO"),
  R(gettimeofday, ALLOW, "wall clock outside the vDSO"),
  R(clock_nanosleep, ALLOW, "V8 and isolated-vm back off; glibc nanosleep"),
  R(nanosleep, ALLOW, "V8 and isolated-vm back off"),
  R(getrusage, ALLOW, "CPU time of a call (isolated-vm) and process.cpuUsage"),
  R(getrandom, ALLOW, "Node 26: V8 seeds each new isolate (hash seed, Math.random) from the kernel"),
  /* the event loop and the channel: descriptors it already holds, no new ones */
  R(epoll_pwait, ALLOW, "libuv waits for the channel and its timers"),
  R(epoll_ctl, ALLOW, "libuv (un)watches descriptors it already holds"),
  R(read, ALLOW, "the channel, libuv's eventfds and signal pipe"),
  R(write, ALLOW, "the channel, libuv's eventfds, stderr"),
  R(writev, ALLOW, "libuv writes several frames to the channel at once"),
  R(shutdown, ALLOW, "libuv half-closes the channel (end())"),
  R(close, ALLOW, "descriptors it holds"),
  /* Node's exit: ResetStdio checks and restores fds 0-2 (and aborts if it cannot), and the
     process.stderr stream is created on first use */
  R(fstat, ALLOW, "what a descriptor it holds is (no path)"),
  R_ARG1(fcntl, "F_GETFD, F_SETFD, F_GETFL, F_SETFL only: not F_SETOWN (signals to others), locks, leases", F_GETFD, F_SETFD, F_GETFL, F_SETFL),
  R_ARG1(ioctl, "TCGETS (is it a terminal?) and FIONBIO only", TCGETS, FIONBIO),
  R(getsockname, ALLOW, "libuv asks what kind of socket stderr is"),
  R(getsockopt, ALLOW, "libuv reads SO_TYPE of stderr"),
  /* signals: its own process only */
  R(rt_sigprocmask, ALLOW, "threads block signals; glibc masks them around clone"),
  R(rt_sigaction, ALLOW, "glibc abort() resets SIGABRT; Node installs handlers"),
  R(rt_sigreturn, ALLOW, "returning from a signal handler"),
  R(restart_syscall, ALLOW, "the kernel restarts a call a signal interrupted"),
  R(tgkill, OWN_PROCESS, "abort() on a V8 fatal error signals its own thread"),
  R(kill, OWN_PROCESS, "process.kill(process.pid, …)"),
  /* only an escape would make these: kill the process */
  R(execve, KILL, "never: running another program"),
  R(execveat, KILL, "never: running another program"),
  R(ptrace, KILL, "never: tracing another process"),
  R(process_vm_readv, KILL, "never: reading another process's memory"),
  R(process_vm_writev, KILL, "never: writing another process's memory"),
};


#define SC_DATA(field) offsetof(struct seccomp_data, field)
#define ARG_LO(i) (SC_DATA(args) + (i) * sizeof(uint64_t))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
#define LOAD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))

#define NEW_NAMESPACES (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

/* Appends the instructions of one rule; returns how many (at most 10). */
static size_t rule_code(struct sock_filter *out, const rule_t *r, uint32_t pid) {
  size_t n = 0;
  switch (r->kind) {
    case ALLOW:
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 1);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
      break;
    case NO_SYSCALL:
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 1);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | ENOSYS);
      break;
    case KILL:
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 1);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
      break;
    case THREAD_ONLY: /* x86_64 and aarch64: the flags are the first argument */
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 5);
      out[n++] = (struct sock_filter)LOAD(ARG_LO(0));
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NEW_NAMESPACES, 2, 0);
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | EPERM);
      break;
    case OWN_PROCESS: /* kill(pid, …), tgkill(tgid, …): the low word is the pid, the high word 0 */
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, 6);
      out[n++] = (struct sock_filter)LOAD(ARG_LO(0) + 4);
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 3); /* high word 0 */
      out[n++] = (struct sock_filter)LOAD(ARG_LO(0));
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, pid, 0, 1);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | EPERM);
      break;
    case ARG1_IN: { /* the low word is one of the values, the high word 0 */
      size_t count = 0;
      while (count < 4 && r->values[count] != 0) count++;
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r->nr, 0, (uint8_t)(count + 5));
      out[n++] = (struct sock_filter)LOAD(ARG_LO(1) + 4);
      out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, (uint8_t)(count + 1));
      out[n++] = (struct sock_filter)LOAD(ARG_LO(1));
      for (size_t i = 0; i < count; i++) {
        out[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r->values[i], (uint8_t)(count - i), 0);
      }
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | EPERM);
      out[n++] = (struct sock_filter)RET(SECCOMP_RET_ALLOW);
      break;
    }
  }
  return n;
}

#define NRULES (sizeof rules / sizeof rules[0])

/* Builds and installs the filter on every thread; returns 0 or an errno. `may_open`: openat is
   allowed too (a profiled worker writes its profile as it exits). */
static int install_seccomp(int may_open) {
#ifndef CONFINE_ARCH
  return ENOTSUP;
#else
  static struct sock_filter code[8 + (NRULES + 8) * 10];
  size_t n = 0;
  uint32_t pid = (uint32_t)getpid();
  code[n++] = (struct sock_filter)LOAD(SC_DATA(arch));
  code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, CONFINE_ARCH, 1, 0);
  code[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
  code[n++] = (struct sock_filter)LOAD(SC_DATA(nr));
#ifdef X32_SYSCALL_BIT
  code[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1);
  code[n++] = (struct sock_filter)RET(SECCOMP_RET_KILL_PROCESS);
#endif
  if (may_open) {
    static const rule_t profiling[] = {
      R(openat, ALLOW, "profiling only: Node writes the CPU profile as it exits"),
      R(mkdirat, ALLOW, "profiling only: Node makes sure the profile's directory exists"),
      R(pwrite64, ALLOW, "profiling only: ... and writes it"),
      R(statx, ALLOW, "profiling only: ... and that it is a directory"),
      R(newfstatat, ALLOW, "profiling only: ... and that it is a directory"),
#ifdef __NR_mkdir
      R(mkdir, ALLOW, "profiling only: Node makes sure the profile's directory exists"),
      R(stat, ALLOW, "profiling only: ... and that it is a directory"),
#endif
    };
    for (size_t i = 0; i < sizeof profiling / sizeof profiling[0]; i++) n += rule_code(code + n, &profiling[i], pid);
  }
  for (size_t i = 0; i < NRULES; i++) n += rule_code(code + n, &rules[i], pid);
  code[n++] = (struct sock_filter)RET(SECCOMP_RET_ERRNO | EPERM);
  struct sock_fprog prog = { .len = (unsigned short)n, .filter = code };
  long r = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
  if (r < 0) return errno;
  if (r > 0) return EAGAIN; /* a thread could not be synchronised: r is its id */
  return 0;
#endif
}

/* ---- Landlock: no path may be opened, no TCP port bound or connected ---- */

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_restrict_self 446
#endif

struct ruleset_attr { /* linux/landlock.h, defined here for the fields of newer ABIs */
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

/* Returns the ABI applied (0: the kernel has no Landlock), or -errno. */
static int install_landlock(void) {
  long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, 1u /* LANDLOCK_CREATE_RULESET_VERSION */);
  if (abi < 0) return 0; /* not built in, disabled at boot, or refused by a container's filter */
  struct ruleset_attr attr = { 0, 0, 0 };
  size_t size = sizeof attr.handled_access_fs;
  attr.handled_access_fs = (1ull << 13) - 1; /* ABI 1: execute … make_sym */
  if (abi >= 2) attr.handled_access_fs |= 1ull << 13; /* refer */
  if (abi >= 3) attr.handled_access_fs |= 1ull << 14; /* truncate */
  if (abi >= 4) {
    attr.handled_access_net = 3; /* bind_tcp, connect_tcp */
    size = offsetof(struct ruleset_attr, scoped);
  }
  if (abi >= 5) attr.handled_access_fs |= 1ull << 15; /* ioctl_dev */
  if (abi >= 6) {
    attr.scoped = 3; /* abstract unix sockets, signals */
    size = sizeof attr;
  }
  long fd = syscall(__NR_landlock_create_ruleset, &attr, size, 0);
  if (fd < 0) return -errno;
  long r = syscall(__NR_landlock_restrict_self, (int)fd, 0);
  int e = errno;
  close((int)fd);
  return r < 0 ? -e : (int)abi;
}

/* ---- N-API ---- */

static napi_value throw_step(napi_env env, const char *step, int err) {
  char message[160];
  snprintf(message, sizeof message, "confinement failed at %s: %s", step, strerror(err));
  napi_throw_error(env, "ERR_SANDBOX_CONFINE", message);
  return NULL;
}

static int get_uint(napi_env env, napi_value obj, const char *key, uint32_t *out, int *present) {
  bool has = false;
  napi_value v;
  napi_valuetype type;
  *present = 0;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok) return -1;
  if (!has) return 0;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_typeof(env, v, &type) != napi_ok) return -1;
  if (type == napi_undefined) return 0;
  if (type != napi_number || napi_get_value_uint32(env, v, out) != napi_ok) return -1;
  *present = 1;
  return 0;
}

static int set_limit(int resource, rlim_t value) {
  struct rlimit l = { value, value };
  return setrlimit(resource, &l) == 0 ? 0 : errno;
}

static int get_bool(napi_env env, napi_value obj, const char *key, bool *out) {
  bool has = false;
  napi_value v;
  *out = false;
  if (napi_has_named_property(env, obj, key, &has) != napi_ok) return -1;
  if (!has) return 0;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok) return -1;
  return napi_get_value_bool(env, v, out) == napi_ok ? 0 : -1;
}

/* Whether this process is uid and gid already (real, effective and saved), with no
   supplementary group: sandbox-exec switched it. */
static bool is_identity(uid_t uid, gid_t gid) {
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  return getresuid(&ru, &eu, &su) == 0 && ru == uid && eu == uid && su == uid && getresgid(&rg, &eg, &sg) == 0 && rg == gid &&
         eg == gid && sg == gid && getgroups(0, NULL) == 0;
}

/* confine({ uid?, gid?, maxFiles, profiling? }) -> { landlockAbi } */
static napi_value js_confine(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result, abi_value;
  uint32_t uid = 0, gid = 0, max_files = 0;
  int has_uid, has_gid, has_max, e;
  bool profiling = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return throw_step(env, "arguments", EINVAL);
  if (get_uint(env, argv[0], "uid", &uid, &has_uid) != 0 || get_uint(env, argv[0], "gid", &gid, &has_gid) != 0 ||
      get_uint(env, argv[0], "maxFiles", &max_files, &has_max) != 0 || get_bool(env, argv[0], "profiling", &profiling) != 0 ||
      has_uid != has_gid || !has_max || max_files < 8) {
    return throw_step(env, "arguments", EINVAL);
  }
  if (has_uid && !is_identity(uid, gid)) {
    if (uid == 0) return throw_step(env, "identity (uid 0)", EINVAL);
    if (setgroups(0, NULL) != 0) return throw_step(env, "setgroups", errno);
    if (setresgid(gid, gid, gid) != 0) return throw_step(env, "setresgid", errno);
    if (setresuid(uid, uid, uid) != 0) return throw_step(env, "setresuid", errno);
    uid_t r, ef, s;
    if (getresuid(&r, &ef, &s) != 0 || r != uid || ef != uid || s != uid) return throw_step(env, "setresuid (check)", EPERM);
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return throw_step(env, "PR_SET_DUMPABLE", errno);
  if ((e = set_limit(RLIMIT_CORE, 0)) != 0) return throw_step(env, "RLIMIT_CORE", e);
  if (!profiling && (e = set_limit(RLIMIT_FSIZE, 0)) != 0) return throw_step(env, "RLIMIT_FSIZE", e);
  if ((e = set_limit(RLIMIT_NOFILE, max_files)) != 0) return throw_step(env, "RLIMIT_NOFILE", e);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return throw_step(env, "PR_SET_NO_NEW_PRIVS", errno);
  int abi = profiling ? 0 : install_landlock();
  if (abi < 0) return throw_step(env, "Landlock", -abi);
  if ((e = install_seccomp(profiling)) != 0) return throw_step(env, "seccomp", e);
  if (napi_create_object(env, &result) != napi_ok || napi_create_uint32(env, (uint32_t)abi, &abi_value) != napi_ok ||
      napi_set_named_property(env, result, "landlockAbi", abi_value) != napi_ok) {
    return NULL;
  }
  return result;
}

/* lookupUser(name) -> { uid, gid } | undefined */
static napi_value js_lookup_user(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value argv[1], result, v;
  char name[256];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok || len == 0 || len >= sizeof name - 1) {
    napi_throw_type_error(env, NULL, "lookupUser(name): a user name");
    return NULL;
  }
  struct passwd pw, *found = NULL;
  char buf[4096];
  if (getpwnam_r(name, &pw, buf, sizeof buf, &found) != 0 || found == NULL) {
    napi_get_undefined(env, &result);
    return result;
  }
  gid_t groups[1024];
  int ngroups = (int)(sizeof groups / sizeof groups[0]);
  if (getgrouplist(found->pw_name, found->pw_gid, groups, &ngroups) < 0) {
    napi_throw_error(env, "ERR_USER_GROUPS", "lookupUser: the user is in more than 1024 groups");
    return NULL;
  }
  napi_value list;
  napi_create_object(env, &result);
  napi_create_uint32(env, found->pw_uid, &v);
  napi_set_named_property(env, result, "uid", v);
  napi_create_uint32(env, found->pw_gid, &v);
  napi_set_named_property(env, result, "gid", v);
  napi_create_array_with_length(env, (size_t)ngroups, &list);
  for (int i = 0; i < ngroups; i++) {
    napi_create_uint32(env, groups[i], &v);
    napi_set_element(env, list, (uint32_t)i, v);
  }
  napi_set_named_property(env, result, "groups", list);
  return result;
}

/* setDumpable(bool) */
static napi_value js_set_dumpable(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool on = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    napi_throw_type_error(env, NULL, "setDumpable(boolean)");
    return NULL;
  }
  if (prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0) != 0) return throw_step(env, "PR_SET_DUMPABLE", errno);
  return NULL;
}

/* ---- tests only: one call, made directly, its errno returned ---- */

static void *thread_main(void *arg) { return arg; }

/* A child made by fork-like calls leaves at once. */
#define CHILD_EXITS(r)           \
  do {                           \
    if ((r) == 0) _exit(0);      \
    if ((r) > 0) waitpid((pid_t)(r), NULL, __WALL); \
  } while (0)

static long attempt(const char *name) {
  long r;
  char byte = 0;
  struct iovec local = { &byte, 1 }, remote = { &byte, 1 };
  pid_t parent = getppid();
  errno = 0;
  if (strcmp(name, "getpid") == 0) r = syscall(__NR_getpid);
  else if (strcmp(name, "thread") == 0) {
    pthread_t t;
    int e = pthread_create(&t, NULL, thread_main, NULL);
    if (e != 0) return e;
    return pthread_join(t, NULL);
  } else if (strcmp(name, "kill-self") == 0) r = kill(getpid(), 0);
  else if (strcmp(name, "kill-parent") == 0) r = kill(parent, 0);
  else if (strcmp(name, "kill-init") == 0) r = kill(1, 0);
  else if (strcmp(name, "kill-group") == 0) r = kill(0, 0);
  else if (strcmp(name, "tgkill-parent") == 0) r = syscall(__NR_tgkill, parent, parent, 0);
  else if (strcmp(name, "tkill-parent") == 0) r = syscall(__NR_tkill, parent, 0);
  else if (strcmp(name, "socket-inet") == 0) r = syscall(__NR_socket, 2 /* AF_INET */, 1 /* SOCK_STREAM */, 0);
  else if (strcmp(name, "socket-unix") == 0) r = syscall(__NR_socket, 1 /* AF_UNIX */, 1, 0);
  else if (strcmp(name, "socketpair") == 0) {
    int sv[2];
    r = syscall(__NR_socketpair, 1, 1, 0, sv);
  } else if (strcmp(name, "connect") == 0) r = syscall(__NR_connect, 3, NULL, 0);
  else if (strcmp(name, "bind") == 0) r = syscall(__NR_bind, 3, NULL, 0);
  else if (strcmp(name, "listen") == 0) r = syscall(__NR_listen, 3, 1);
#ifdef __NR_accept
  else if (strcmp(name, "accept") == 0) r = syscall(__NR_accept, 3, NULL, NULL);
#endif
  else if (strcmp(name, "accept4") == 0) r = syscall(__NR_accept4, 3, NULL, NULL, 0);
  else if (strcmp(name, "execve") == 0) {
    char *const args[] = { "/bin/true", NULL };
    r = syscall(__NR_execve, "/bin/true", args, NULL);
  } else if (strcmp(name, "execveat") == 0) {
    char *const args[] = { "/bin/true", NULL };
    r = syscall(__NR_execveat, AT_FDCWD, "/bin/true", args, NULL, 0);
  } else if (strcmp(name, "clone-process") == 0) {
    r = syscall(__NR_clone, SIGCHLD, NULL, NULL, NULL, 0);
    CHILD_EXITS(r);
  } else if (strcmp(name, "clone-thread-newns") == 0) {
    r = syscall(__NR_clone, CLONE_THREAD | CLONE_SIGHAND | CLONE_VM | CLONE_NEWNET, NULL, NULL, NULL, 0);
    CHILD_EXITS(r);
  } else if (strcmp(name, "clone3") == 0) r = syscall(__NR_clone3, NULL, 0);
#ifdef __NR_fork
  else if (strcmp(name, "fork") == 0) {
    r = syscall(__NR_fork);
    CHILD_EXITS(r);
  }
#endif
#ifdef __NR_vfork
  else if (strcmp(name, "vfork") == 0) {
    r = vfork();
    CHILD_EXITS(r);
  }
#endif
  else if (strcmp(name, "ptrace") == 0) r = syscall(__NR_ptrace, 16 /* PTRACE_ATTACH */, parent, NULL, NULL);
  else if (strcmp(name, "process_vm_readv") == 0) r = syscall(__NR_process_vm_readv, parent, &local, 1, &remote, 1, 0);
  else if (strcmp(name, "process_vm_writev") == 0) r = syscall(__NR_process_vm_writev, parent, &local, 1, &remote, 1, 0);
  else if (strcmp(name, "open-read") == 0) r = syscall(__NR_openat, AT_FDCWD, "/etc/hostname", O_RDONLY | O_CLOEXEC);
  else if (strcmp(name, "open-write") == 0) r = syscall(__NR_openat, AT_FDCWD, "/dev/null", O_WRONLY | O_CLOEXEC);
  else if (strcmp(name, "open-create") == 0) r = syscall(__NR_openat, AT_FDCWD, "/tmp/switchyard-confine-probe", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
#ifdef __NR_open
  else if (strcmp(name, "open-legacy") == 0) r = syscall(__NR_open, "/etc/hostname", O_RDONLY | O_CLOEXEC);
#endif
  else if (strcmp(name, "openat2") == 0) r = syscall(__NR_openat2, AT_FDCWD, "/etc/hostname", NULL, 0);
  else if (strcmp(name, "mount") == 0) r = syscall(__NR_mount, NULL, NULL, NULL, 0, NULL);
  else if (strcmp(name, "umount2") == 0) r = syscall(__NR_umount2, "/nonexistent", 0);
  else if (strcmp(name, "unshare") == 0) r = syscall(__NR_unshare, CLONE_NEWUSER);
  else if (strcmp(name, "setns") == 0) r = syscall(__NR_setns, -1, 0);
  else if (strcmp(name, "bpf") == 0) r = syscall(__NR_bpf, 0, NULL, 0);
  else if (strcmp(name, "perf_event_open") == 0) r = syscall(__NR_perf_event_open, NULL, 0, -1, -1, 0);
  else if (strcmp(name, "keyctl") == 0) r = syscall(__NR_keyctl, 0, 0, 0, 0, 0);
  else if (strcmp(name, "add_key") == 0) r = syscall(__NR_add_key, NULL, NULL, NULL, 0, 0);
  else if (strcmp(name, "request_key") == 0) r = syscall(__NR_request_key, NULL, NULL, NULL, 0);
  else if (strcmp(name, "userfaultfd") == 0) r = syscall(__NR_userfaultfd, 0);
  else if (strcmp(name, "pivot_root") == 0) r = syscall(__NR_pivot_root, NULL, NULL);
  else if (strcmp(name, "chroot") == 0) r = syscall(__NR_chroot, "/");
  else if (strcmp(name, "init_module") == 0) r = syscall(__NR_init_module, NULL, 0, NULL);
  else if (strcmp(name, "finit_module") == 0) r = syscall(__NR_finit_module, -1, NULL, 0);
  else if (strcmp(name, "delete_module") == 0) r = syscall(__NR_delete_module, NULL, 0);
  else if (strcmp(name, "reboot") == 0) r = syscall(__NR_reboot, 0, 0, 0, NULL);
  else if (strcmp(name, "kexec_load") == 0) r = syscall(__NR_kexec_load, 0, 0, NULL, 0);
  else if (strcmp(name, "io_uring_setup") == 0) r = syscall(__NR_io_uring_setup, 1, NULL);
  else if (strcmp(name, "ioctl-tiocsti") == 0) r = syscall(__NR_ioctl, 0, TIOCSTI, &byte);
  else if (strcmp(name, "ioctl-fionbio") == 0) {
    int on = 1;
    r = syscall(__NR_ioctl, 3, FIONBIO, &on);
  } else if (strcmp(name, "fcntl-setown") == 0) r = syscall(__NR_fcntl, 3, F_SETOWN, parent);
  else if (strcmp(name, "fcntl-getfl") == 0) r = syscall(__NR_fcntl, 3, F_GETFL);
  else if (strcmp(name, "fstat") == 0) {
    struct stat st;
    r = syscall(__NR_fstat, 3, &st);
  } else if (strcmp(name, "newfstatat") == 0) {
    struct stat st;
    r = syscall(__NR_newfstatat, AT_FDCWD, "/etc/hostname", &st, 0);
  } else if (strcmp(name, "setuid-root") == 0) r = syscall(__NR_setuid, 0);
  else if (strcmp(name, "chdir") == 0) r = syscall(__NR_chdir, "/tmp");
  else if (strcmp(name, "pidfd_open") == 0) r = syscall(__NR_pidfd_open, parent, 0);
#ifdef X32_SYSCALL_BIT
  else if (strcmp(name, "x32") == 0) r = syscall(X32_SYSCALL_BIT | __NR_getpid);
#endif
  else return -1;
  if (r >= 0 && strncmp(name, "socket", 6) == 0) close((int)r);
  if (r >= 0 && strncmp(name, "open", 4) == 0) close((int)r);
  if (r >= 0 && strcmp(name, "fcntl-getfl") == 0) r = 0;
  return r < 0 ? errno : 0;
}

/* attempt(name) -> errno, 0 when the call worked; throws on an unknown name */
static napi_value js_attempt(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value argv[1], result;
  char name[64];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "attempt(name)");
    return NULL;
  }
  long e = attempt(name);
  if (e < 0) {
    napi_throw_error(env, NULL, "attempt: unknown call");
    return NULL;
  }
  napi_create_int32(env, (int32_t)e, &result);
  return result;
}

static napi_value module_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "confine", NULL, js_confine, NULL, NULL, NULL, napi_enumerable, NULL },
    { "lookupUser", NULL, js_lookup_user, NULL, NULL, NULL, napi_enumerable, NULL },
    { "setDumpable", NULL, js_set_dumpable, NULL, NULL, NULL, napi_enumerable, NULL },
    { "attempt", NULL, js_attempt, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (switchyard_privileges_init(env, exports) != 0 || switchyard_notify_init(env, exports) != 0) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, module_init)
