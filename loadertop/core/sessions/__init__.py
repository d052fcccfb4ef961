"""What front-ends talk to: a session (the built-in run in this process, a script's run over its socket, a
torchrun job's ranks, a replayed recording) giving frozen views (``view``) and taking commands."""
