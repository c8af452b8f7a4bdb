/* See capabilities.h. */
#define _GNU_SOURCE
#include "capabilities.h"

#include <errno.h>
#include <linux/capability.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int cap_get(cap_sets *out) {
  struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capget, &header, data) != 0) return errno;
  out->effective = (uint64_t)data[1].effective << 32 | data[0].effective;
  out->permitted = (uint64_t)data[1].permitted << 32 | data[0].permitted;
  out->inheritable = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
  return 0;
}

int cap_set(const cap_sets *sets) {
  struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {
    { (uint32_t)sets->effective, (uint32_t)sets->permitted, (uint32_t)sets->inheritable },
    { (uint32_t)(sets->effective >> 32), (uint32_t)(sets->permitted >> 32), (uint32_t)(sets->inheritable >> 32) },
  };
  return syscall(SYS_capset, &header, data) == 0 ? 0 : errno;
}

/* PR_CAPBSET_READ fails with EINVAL past the last capability. */
int cap_last(void) {
  int c = 0;
  while (c < 63 && prctl(PR_CAPBSET_READ, c + 1, 0, 0, 0) >= 0) c++;
  return c;
}

int cap_clear_all(void) {
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return errno;
  cap_sets none = { 0, 0, 0 };
  return cap_set(&none);
}
