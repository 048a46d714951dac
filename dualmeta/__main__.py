"""``python -m dualmeta <command> [--flags]``: the command line of :mod:`dualmeta.cli`."""
from dualmeta.cli import run

if __name__ == "__main__":
    run()
