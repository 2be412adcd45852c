"""The local stack's pieces that need no emulator: ports, process groups, start-up failures."""
from __future__ import annotations

import sys
import time

import pytest

from infra.local.stack import Ports, Process, StackError, Stack, group_alive


def test_ports_default_to_the_documented_ones_and_env_overrides_each():
    ports = Ports.from_env({"API_PORT": "9080", "PUBSUB_EMULATOR_PORT": "9682"})

    assert ports == Ports(api=9080, worker=8081, poller=8082, gemini=8500, firestore=8681, pubsub=9682, gcs=8683)


def test_a_port_that_is_not_a_number_is_named():
    with pytest.raises(StackError, match="WORKER_PORT"):
        Ports.from_env({"WORKER_PORT": "eighty"})


def test_free_ports_are_distinct():
    ports = Ports.free().as_dict().values()

    assert len(set(ports)) == len(ports) == 8


def test_only_demo_projects_are_accepted(tmp_path):
    with pytest.raises(StackError, match="demo-"):
        Stack(project="my-real-project", state_dir=tmp_path)


def test_a_process_that_dies_while_starting_raises_with_its_log_tail(tmp_path):
    proc = Process("boom", [sys.executable, "-c", "print('cannot bind'); raise SystemExit(3)"], env={},
                   cwd=tmp_path, log_path=tmp_path / "boom.log", ready=lambda: False)
    proc.start()

    with pytest.raises(StackError) as excinfo:
        proc.wait_ready(time.monotonic() + 30)

    assert "boom exited with code 3" in str(excinfo.value)
    assert "cannot bind" in str(excinfo.value)


def test_stop_kills_the_whole_process_group(tmp_path):
    # A parent that ignores SIGTERM and a grandchild, like gcloud -> shell -> JVM.
    script = "import subprocess, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    proc = Process("tree", [sys.executable, "-c", script], env={}, cwd=tmp_path, log_path=tmp_path / "tree.log",
                   ready=lambda: True, stop_grace=0.5)
    proc.start()
    pgid = proc.pid
    time.sleep(0.5)

    proc.stop()

    assert not group_alive(pgid)
