"""The wire between a training process and its monitors: messages, codec, sockets. No torch here.

A launched script serves a Unix socket (``runtime.run_socket_path``); every monitor that
connects (``loadertop run``'s own, ``loadertop attach``) reads JSON lines from it and may send
commands. See ``codec`` for the format and its limits, ``messages`` for what is said.
"""
