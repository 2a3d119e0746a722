"""One exception type for mistakes a user can fix, and the wrapper that prints it.

Scripts raise UserError with a sentence that says what to do; `run_main` turns it
into one line on stderr and exit status 1 instead of a traceback.
"""
import os
import sys
import time

# Under torchrun every rank usually meets the same mistake at the same moment. Rank 0
# says it at once; torchrun then stops the other ranks, which wait this long before
# speaking, so the line is printed once. An error only one rank meets is still printed.
OTHER_RANK_DELAY_S = 5.0


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def run_main(main):
    """Run `main()`, printing a UserError as `error: ...` and exiting with status 1."""
    try:
        return main()
    except UserError as e:
        rank = os.environ.get("RANK", "0")  # set by torchrun
        if rank != "0":
            time.sleep(OTHER_RANK_DELAY_S)
        print(f"error: {'' if rank == '0' else f'rank {rank}: '}{e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
