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
