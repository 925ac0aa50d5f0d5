"""The systemd unit sets MemoryDenyWriteExecute=yes: under it, the kernel refuses any mapping that
is writable and executable and any mprotect that adds PROT_EXEC. Run the real daemon (numpy,
pyzmq, aiohttp, msgpack, HDR histograms, the demo traffic) under strace and check it never asks.
Slow (strace makes start-up several times slower): run with ``-m slow``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

STRACE = shutil.which("strace")


@pytest.mark.slow
@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_no_writable_executable_memory(tmp_path: Path) -> None:
    trace, ready = tmp_path / "trace.log", tmp_path / "ready.json"
    # fmt: off
    proc = subprocess.Popen(
        [
            str(STRACE), "-f", "-qq", "-e", "trace=mmap,mprotect,pkey_mprotect,shmat",
            "-o", str(trace),
            sys.executable, "-m", "metricsd", "serve", "--http", "127.0.0.1:0",
            "--ingest", "tcp://127.0.0.1:0", "--tick", "0.1", "--demo",
            "--ready-file", str(ready),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # fmt: on
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        http = json.loads(ready.read_text())["http"]
        time.sleep(1.5)  # demo traffic through ingest, trackers and ticks
        for path in ("/metrics", "/metrics/json", "/metrics/histograms", "/metrics/costs"):
            with urllib.request.urlopen(http + path, timeout=10) as resp:
                assert resp.status == 200
    finally:
        # strace passes on the daemon's exit status; signal the daemon itself, not strace.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    calls = trace.read_text().splitlines()
    assert sum("PROT_EXEC" in c for c in calls) > 0  # shared libraries were traced
    refused = [
        c
        for c in calls
        if re.search(r"PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE", c)
        or (re.search(r"\b(pkey_)?mprotect\(", c) and "PROT_EXEC" in c)
        or re.search(r"shmat\(.*SHM_EXEC", c)
    ]
    assert refused == []
