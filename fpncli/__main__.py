"""``python -m fpncli`` and the ``fpncli`` command's entry point: Ctrl-C while the command line
loads ends as it does later (``interrupted``, exit code 130), not with a traceback."""

import sys


def main() -> None:
    """Load the command line (``fpncli.cli``) and run it."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
