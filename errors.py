"""One exception type for mistakes a user can fix, and the wrapper that prints it.

Scripts raise UserError with a sentence that says what to do; `run_main` turns it
into one line on stderr and exit status 1 instead of a traceback.
"""
import sys


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def run_main(main):
    """Run `main()`, printing a UserError as `error: ...` and exiting with status 1."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
