"""Faults a job reports as one line (``jobs.cli.run_main``), not as a traceback: what a person can
act on, named. Kept free of heavy imports, so that a job's ``--help`` loads none."""


class FolderInUse(RuntimeError):
    """Another process holds a folder's writer lock: the message names it (host, pid, start)."""


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server does not answer: the message names its URI and what was kept."""
