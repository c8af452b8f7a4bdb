/* What privileges.c and notify.c add to the confine addon (confine.c registers them). */
#ifndef SWITCHYARD_SERVICE_H
#define SWITCHYARD_SERVICE_H

#include <node_api.h>

/* Add dropPrivileges and setAmbient (privileges.c), and notify (notify.c), to the addon's
   exports; 0 or -1. */
int switchyard_privileges_init(napi_env env, napi_value exports);
int switchyard_notify_init(napi_env env, napi_value exports);

/* Throws an Error "WHAT: strerror(err)" whose code is the errno's name (EPERM) and whose errno
   is err; returns NULL, for `return switchyard_throw_errno(…)`. */
napi_value switchyard_throw_errno(napi_env env, const char *what, int err);

#endif
