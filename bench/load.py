"""--load N: N busy processes beside the timed libraries, as a user's machine has them (another job, a data
loader, a second model), for the whole run.

Each is a separate Python process spinning on the CPU (a pure-Python loop: no thread pool of its own, one
core's worth of load). They start before the roofline and stop when the bench ends, also on an error or ^C.
"""
import atexit
import os
import subprocess
import sys
import time

# Spins until its parent is gone (checked every few milliseconds), so that no load outlives a bench that was
# killed before it could stop it.
SPIN = ("import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n"
        "    for _ in range(100000):\n        pass\n")


class Load:
    """A context manager holding n busy processes."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        atexit.register(self.stop)
        if self.procs:
            time.sleep(0.2)  # let them reach their loops before anything is timed
        return self

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []

    def __exit__(self, *exc):
        self.stop()
        return False

    def description(self):
        if not self.n:
            return None
        return (f"load: {self.n} busy process(es) (pure-Python spin loops, one core's worth each) beside the timed "
                "libraries for the whole run")
