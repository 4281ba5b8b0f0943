"""How many training runs the pipeline starts side by side, against a real local Ray cluster, and
how a failed one ends the others."""

import subprocess
import sys
import time

import pytest

from pipeline import runtime
from pipeline.config import TrainConfig
from pipeline.runtime import runs_at_once, side_by_side
from pipeline.train.driver import run_resources


def test_runs_at_once_counts_what_the_cluster_holds(ray_cluster):
    # the session cluster has 2 CPUs and no GPU
    assert runs_at_once({"CPU": 1, "GPU": 0}) == 2
    assert runs_at_once({"CPU": 1, "GPU": 0}, limit=1) == 1
    assert runs_at_once({"CPU": 2, "GPU": 0}) == 1
    assert runs_at_once({"CPU": 4, "GPU": 0}) == 1  # larger than the cluster: one at a time, and it waits


def test_run_resources_follow_the_workers(ray_cluster):
    cfg = TrainConfig(name="m", num_workers=2, cpus_per_worker=0.5)
    assert run_resources(cfg) == {"CPU": 1.0, "GPU": 0}  # use_gpu unset and the cluster has no GPU
    assert run_resources(cfg.model_copy(update={"use_gpu": True}))["GPU"] == 2


def test_the_dashboard_listens_on_127_0_0_1_only(ray_cluster):
    """Jobs start local Ray with its defaults, as this session's cluster: the dashboard (and the
    state API it serves) is reachable from this machine only."""
    from urllib.parse import urlsplit

    import psutil

    port = urlsplit(f"http://{ray_cluster._private.worker._global_node.webui_url}").port
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


def test_a_failed_fit_raises_at_once_and_the_fits_not_started_never_start():
    started = []

    def fit(name: str) -> str:
        started.append(name)
        if name == "bad":
            raise ValueError("bad fit")
        time.sleep(0.3)
        return name

    with pytest.raises(ValueError, match="bad fit"):
        side_by_side(fit, ["slow", "bad", "next", "last"], 2, "fits")
    assert "last" not in started  # queued behind the failure: cancelled (before, it ran and only then raised)
    assert side_by_side(fit, ["a", "b", "c"], 2, "fits") == ["a", "b", "c"]


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_yields_every_item_with_a_bar_only_in_a_terminal(terminal, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "in_terminal", lambda: terminal)
    assert list(runtime.progress(range(5), "score: pairs")) == [0, 1, 2, 3, 4]
    assert ("score: pairs" in capsys.readouterr().err) == terminal


SIGTERM_AFTER_ONE_OF_TWO_FITS_ENDED = """
import os, signal, threading
from pipeline.runtime import exit_on_sigterm, stop_on_sigterm
stop_on_sigterm()
entered, first_may_end, second_may_end = threading.Barrier(3), threading.Event(), threading.Event()
def fit(may_end):
    with exit_on_sigterm():
        entered.wait()
        may_end.wait()
first = threading.Thread(target=fit, args=(first_may_end,))
second = threading.Thread(target=fit, args=(second_may_end,), daemon=True)
first.start(); second.start(); entered.wait()
first_may_end.set(); first.join()
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_ends_the_process_at_once_while_any_of_two_fits_side_by_side_still_runs():
    """The first fit to end must not turn SIGTERM back into unwinding (which aborts the Ray Train
    run still going, so that its rerun starts from epoch 0): exit 143, no traceback."""
    ended = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_ONE_OF_TWO_FITS_ENDED], capture_output=True, text=True,
                           timeout=60, cwd=runtime.PROJECT_ROOT)
    assert ended.returncode == 143 and "Traceback" not in ended.stderr, ended.stderr
    assert "stopped by SIGTERM during a fit" in ended.stderr
