"""Start-up: seconds from `python app.py` to a usable page (the HTML served and Gradio's config,
which lists every component, answered), over several launches; target <= 10 s.

    python bench/startup.py [--runs 3]

Models are not loaded at start-up (they load lazily on the first Playground prompt, once, and are
cached); this measures what a person waits for before the page works.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_once(timeout: float = 60) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workspace",
                             tempfile.mkdtemp(prefix="startup-ws-")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
                config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read()
                if b"<html" in page.lower() and b"components" in config:
                    return time.perf_counter() - started
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError(f"no usable page within {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    times = []
    for i in range(a.runs):
        times.append(launch_once())
        print(f"  launch {i + 1}/{a.runs}: {times[-1]:.1f} s  ({machine_load()})", flush=True)
    print(f"start-up to a usable page: median {statistics.median(times):.1f} s (target <= 10 s)")


if __name__ == "__main__":
    main()
