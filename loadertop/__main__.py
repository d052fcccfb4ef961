"""``python -m loadertop``: the same as the ``loadertop`` command."""

from loadertop.cli import run

if __name__ == "__main__":
    run()
