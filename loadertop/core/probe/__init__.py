"""Inside the training process: the instrumented DataLoader and the one module that touches torch's private API."""
