{
  "targets": [
    {
      "target_name": "splice_relay",
      "sources": ["src/native/relay.c", "src/native/splice-relay.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    },
    {
      "target_name": "confine",
      "sources": ["src/native/confine.c", "src/native/privileges.c", "src/native/notify.c", "src/native/capabilities.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    },
    {
      "target_name": "handoff",
      "sources": ["src/native/handoff.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    },
    {
      "target_name": "sandbox-exec",
      "type": "executable",
      "sources": ["src/native/sandbox-exec.c", "src/native/capabilities.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
