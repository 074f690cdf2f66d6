"""Work done beside the device: CPU jobs (the dense CRF) in a pool of processes and file writes in a thread, fed
while the network works on the next images, so that no inference step waits on one CPU core.

    with Background(workers=3, kind='process') as crf:
        for item in loader:
            ...network...
            crf.submit(crf_and_write, image, prob, paths)   # returns at once unless `ahead` jobs per worker wait
    # leaving the block waits for every job and raises the first error of any

workers <= 1 (process) or 0 (thread) runs each job inline, in submission order: the same outputs, no pool. Every
job writes its own files atomically (misc.camio), so a killed run leaves only complete files.
"""
import collections
import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading
import time

# Fault injection for the tests of killed inference runs: "N" makes the process kill itself (SIGKILL) when its loop
# asks for its N-th item (0-based). Unset in normal use.
KILL_ENV = 'SFC_TEST_KILL_AT_ITEM'


class Background:
    def __init__(self, workers, kind='process', ahead=2):
        self.inline = workers <= (1 if kind == 'process' else 0)
        self.pending = collections.deque()
        self.limit = max(1, workers) * ahead
        self.pool = None
        if not self.inline:
            self.pool = (cf.ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn'), initializer=die_with_parent,
                                                initargs=(os.getpid(),)) if kind == 'process'
                         else cf.ThreadPoolExecutor(workers))

    def submit(self, fn, *args):
        if self.inline:
            fn(*args)
            return
        while len(self.pending) >= self.limit:  # bounded: memory for `ahead` jobs per worker, errors seen early
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args))

    def wait(self):
        """Wait for every job; the first error raised by a job is raised here."""
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.pool is None:
            return False
        try:
            if exc_type is None:
                self.wait()
            else:  # the block stops on an error (out of memory, bad input, Ctrl-C): finish the jobs already
                self.drain()  # submitted, whose results were computed, so that nothing done is lost; then re-raise
        finally:
            self.pool.shutdown(wait=True)
        return False

    def drain(self):
        """Wait for every submitted job, ignoring their errors (an error already on its way out wins)."""
        while self.pending:
            try:
                self.pending.popleft().result()
            except BaseException:  # noqa: B036 - the caller's own exception is the one that propagates
                pass


def die_with_parent(parent_pid):
    """Worker initialiser: end this worker when the process that started it dies (killed by the out-of-memory killer
    or SIGKILL), instead of leaving orphans that hold its pipes open. Linux: PR_SET_PDEATHSIG; elsewhere a thread
    that checks the parent once a second."""
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # the parent died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def counted(items):
    """The items of an inference loop, with the test hook KILL_ENV (kill this process at the N-th item)."""
    kill_at = os.environ.get(KILL_ENV)
    kill_at = int(kill_at) if kill_at else None
    for i, item in enumerate(items):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield item
