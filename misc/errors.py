"""Errors about what the user gave (a missing file, a wrong flag, a damaged checkpoint, a diverged run), and the
command-line wrapper that prints them as one line and exits with status 2.

Each class also derives from the built-in exception a caller would expect (ValueError, FileNotFoundError, ...), so
`except ValueError` keeps working. Anything else that escapes a command is a defect of ours and keeps its full
traceback. `--traceback True` (run_sample.py) or SFC_TRACEBACK=1 shows the traceback of input errors too.
"""
import os
import sys
import traceback

EXIT_INPUT = 2  # what argparse uses for a bad command line
TRACEBACK_ENV = 'SFC_TRACEBACK'


class InputError(Exception):
    """A problem with the input, explained by the message: which file, id or flag, and what to do."""


class BadInput(InputError, ValueError):
    """A value that cannot be used: a flag, a list, a mask value, a checkpoint of another shape."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the step needs is not there."""


class MissingLabel(InputError, KeyError):
    """Listed ids without an image-level label."""

    def __str__(self):  # KeyError would print its argument in quotes
        return str(self.args[0]) if self.args else ''


class Diverged(InputError, FloatingPointError):
    """Training produced a non-finite loss; the message names the flag to lower and the state kept."""


class Unavailable(InputError, RuntimeError):
    """Something the run asked for is not on this machine (a GPU, a download)."""


def show_traceback(argv=None):
    """--traceback True on the command line, or SFC_TRACEBACK=1 in the environment."""
    if os.environ.get(TRACEBACK_ENV, '').lower() in ('1', 'true', 'yes'):
        return True
    argv = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(argv):
        if a == '--traceback' and i + 1 < len(argv):
            return argv[i + 1].lower() in ('1', 'true', 'yes')
        if a.startswith('--traceback='):
            return a.split('=', 1)[1].lower() in ('1', 'true', 'yes')
    return False


def one_line(exc):
    """The message of an input error on one line (multi-line messages are joined with ' | '). An error re-raised
    from a DataLoader worker carries the worker's traceback in its text: its last line holds the message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].startswith('Original Traceback'):
        last = lines[-1]
        lines = [last.split(': ', 1)[1] if ': ' in last and last.split(': ', 1)[0].endswith(type(exc).__name__)
                 else last]
    text = ' | '.join(lines)
    return f'error: {text or type(exc).__name__}'


def cli(main, argv=None):
    """Run main(argv) as a command: an InputError prints one line on stderr and exits with status 2 (with its
    traceback under --traceback True / SFC_TRACEBACK=1); other exceptions propagate with their traceback. Under
    torchrun a rank that stops on an error first tells the others (misc.distributed.announce_failure: they stop
    within seconds, on every machine), and only the first rank to fail prints its message; a run that finishes
    ends its process group."""
    from misc import distributed
    try:
        out = main(argv)
    except InputError as e:
        if distributed.announce_failure(EXIT_INPUT):
            if show_traceback(argv):
                traceback.print_exc()
            print(one_line(e), file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT)
    except KeyboardInterrupt:
        distributed.announce_failure(130)
        raise
    except BaseException as e:
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if code and not distributed.announce_failure(code) and not isinstance(e, SystemExit):
            sys.exit(code)  # another rank failed first and printed its error; this one is a consequence
        raise
    distributed.shutdown()
    return out
