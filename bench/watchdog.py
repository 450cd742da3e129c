"""Kills what the bench started if the bench dies without cleaning up (even by SIGKILL).

Run as ``python -m bench.watchdog`` with a pipe on stdin; the bench writes one line
``<pid> <start time>`` per process it starts, and ``dir <path>`` for its scratch folder. When
the pipe closes (the bench exited, however it ended) every listed process that still runs, and
is still the same process (its start time in ``/proc/<pid>/stat`` matches, so a recycled pid is
left alone), gets SIGTERM, then SIGKILL after a grace period; then the scratch folder (only a
``bench-*`` folder in the temporary directory) is removed. After a clean exit there is nothing
left to do and it just exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

GRACE_S = 5.0


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it is gone. Where
    ``/proc`` is missing it answers ``"?"`` for any live pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        if not os.path.isdir("/proc"):
            try:
                os.kill(pid, 0)
            except OSError:
                return None
            return "?"
        return None
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its closing ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _same(pid: int, started: str) -> bool:
    now = start_time(pid)
    return now is not None and (now == started or "?" in (now, started))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watched: list[tuple[int, str]] = []
    folders: list[Path] = []
    for line in sys.stdin:
        if line.startswith("dir "):
            folders.append(Path(line[4:].rstrip("\n")))
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            watched.append((int(parts[0]), parts[1]))
    alive = [(pid, started) for pid, started in watched if _same(pid, started)]
    for pid, _ in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    limit = time.monotonic() + GRACE_S
    while alive and time.monotonic() < limit:
        time.sleep(0.1)
        alive = [(pid, started) for pid, started in alive if _same(pid, started)]
    for pid, _ in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    scratch = Path(tempfile.gettempdir()).resolve()
    for folder in folders:
        if folder.parent.resolve() == scratch and folder.name.startswith("bench-"):
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
