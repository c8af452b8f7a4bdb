/* Linux capabilities of the calling thread through the raw capget/capset system calls (no
   libcap). Shared by the addon (privileges.c) and the sandbox launcher (sandbox-exec.c). */
#ifndef SWITCHYARD_CAPABILITIES_H
#define SWITCHYARD_CAPABILITIES_H

#include <stdint.h>

/* One bit per capability number (CAP_NET_BIND_SERVICE is bit 10). */
typedef struct {
  uint64_t effective, permitted, inheritable;
} cap_sets;

/* The calling thread's sets; 0 or an errno. */
int cap_get(cap_sets *out);

/* Replaces the calling thread's sets (the kernel's rules apply: a set only shrinks, unless
   CAP_SETPCAP); 0 or an errno. */
int cap_set(const cap_sets *sets);

/* The highest capability number this kernel knows. */
int cap_last(void);

/* Clears the calling thread's ambient, permitted, effective and inheritable sets. Needs no
   privilege. 0 or an errno. */
int cap_clear_all(void);

#endif
