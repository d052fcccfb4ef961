"""What drives runs from outside the training loop: the sweep over worker counts, the soak test, and the
launcher that starts a user's command with the probe in its environment."""
