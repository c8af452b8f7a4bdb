{
  "targets": [
    {
      "target_name": "splice_relay",
      "sources": ["src/native/relay.c", "src/native/splice-relay.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
