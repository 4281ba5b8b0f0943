"""Faults a job reports as one line (``jobs.cli.run_main``), not as a traceback: what a person can
act on, named. Kept free of heavy imports, so that a job's ``--help`` loads none."""


class FolderInUse(RuntimeError):
    """Another process holds a folder's writer lock: the message names it (host, pid, start)."""


class Preempted(BaseException):
    """SIGTERM (a preempted node, ``ray job stop``): raised in the job's main thread so that its
    writes clean up after themselves; a BaseException, so that no ``except Exception`` takes it."""


def preempted(error: BaseException) -> bool:
    """Whether ``error`` is ``Preempted`` or came of it: raised inside Ray's compiled code (a
    ``ray.get`` that waits), it surfaces as a ``SystemError`` caused by it."""
    while error is not None:
        if isinstance(error, Preempted):
            return True
        error = error.__cause__ or error.__context__
    return False


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server does not answer: the message names its URI and what was kept."""
