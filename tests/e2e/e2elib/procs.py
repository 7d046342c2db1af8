"""Starting, watching and stopping the processes the suite owns.

Every process is started in its own process group (start_new_session) and
recorded here; stop() signals the whole group, and an atexit hook (plus a
SIGTERM handler installed by conftest) kills whatever is still alive, so a
failing or interrupted run leaves nothing behind.  Nothing is ever killed by
name: only the PIDs / process groups this module started.
"""
import atexit
import ctypes
import os
import re
import signal
import subprocess
import threading
import time

_LIVE = {}          # pid -> ManagedProcess
_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def _child_setup():
    """New session (so the whole group can be signalled) and SIGKILL when the
    suite's process dies, even if it is itself SIGKILLed."""
    os.setsid()
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ManagedProcess:
    def __init__(self, name, argv, log_path, env=None, cwd=None, stdout_path=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = str(log_path)
        self.stdout_path = str(stdout_path) if stdout_path else None
        self.env = env
        self.cwd = cwd
        self.proc = None

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        log = open(self.log_path, "ab", buffering=0)
        log.write(f"\n==== start {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        out = open(self.stdout_path, "ab", buffering=0) if self.stdout_path else log
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                env=self.env, cwd=self.cwd, preexec_fn=_child_setup)
        finally:
            log.close()
            if out is not log:
                out.close()
        with _LOCK:
            _LIVE[self.proc.pid] = self
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            rc = self.proc.returncode if self.proc else None
            raise RuntimeError(f"{self.name} exited (rc={rc}); log tail:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = _ANSI.sub("", f.read().decode(errors="replace")).splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return "(no log)"

    def _signal_group(self, sig):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill9(self):
        """SIGKILL the process itself (crash simulation); reaps it."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._forget()

    def stop(self, timeout=20):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._signal_group(signal.SIGKILL)      # children left in the group
        self._forget()

    def _forget(self):
        with _LOCK:
            if self.proc is not None:
                _LIVE.pop(self.proc.pid, None)


def kill_all():
    with _LOCK:
        procs = list(_LIVE.values())
    for p in procs:
        try:
            p.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(kill_all)

