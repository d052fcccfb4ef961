"""What a training run and its monitors say, and the wire between them. No torch here.

The vocabulary: ``config`` (a loader's settings), ``records`` (batches and (re)starts),
``status`` (a run's state, as enums). The built-in trainer and its app use these objects
directly, in one process; a launched script sends them as JSON lines over its socket.

A launched script serves a Unix socket (``runtime.run_socket_path``); every monitor that
connects (``loadertop run``'s own, ``loadertop attach``) reads JSON lines from it and may send
commands. See ``codec`` for the format and its limits, ``messages`` for what is said.
"""
