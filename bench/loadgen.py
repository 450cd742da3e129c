"""A closed-loop HTTP load generator: C connections, each sending its next request as soon as
the previous answer is in, for a fixed time.

Two implementations, the same measurements:

* ``wrk`` (C, https://github.com/wg/wrk; Debian/Ubuntu package ``wrk``) when it is on the
  PATH: ``wrk -t T -c C -d Ns --latency --timeout 10s -s script.lua URL``, the Lua script
  (written here, per run) setting the method, headers and body, checking each answer's body,
  and printing one JSON line from ``done()`` with wrk's own counts and latency percentiles;
* a Python fallback (asyncio streams, uvloop when installed, keep-alive HTTP/1.1 written by
  hand: a lean client, so that the generator rather than the server is not what is measured
  — still, on a small machine it takes CPU from the server, which wrk does much less).

``BENCH_LOADGEN=python`` (or ``wrk``) forces one.

Two shapes of iteration (one closed-loop step of one connection):

* :class:`Call`: one request (``T = min(2, C)`` wrk threads, C connections). Latency: wrk's
  per-request histogram (send to last byte of the answer);
* :class:`SubmitPoll`: a POST that answers 202 with a job id, then ``GET`` of the job's url
  with a long-poll, on the same connection. With wrk this runs one connection per thread
  (``T = C``), so that the script's state (which job to poll) is the connection's; latency is
  per iteration (submit sent to poll answered, ``CLOCK_MONOTONIC`` through LuaJIT's ffi).

An iteration counts (``ok``) when every answer in it is 2xx and its body holds ``expect``;
the others are ``errors``: non-2xx answers, socket errors (connect, read, write, timeout) and
2xx answers without the expected text (``wrong``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.stats import Latency

WRK_TIMEOUT_S = 10
"""A request unanswered this long is a socket error (wrk's default, 2 s, is shorter than a
long poll)."""
WRK_THREADS = 2
"""wrk threads for :class:`Call` (never more than the connections)."""
MARKER = "BENCH-WRK "


@dataclass(frozen=True)
class Call:
    """One request per iteration."""

    method: str
    path: str
    body: bytes = b""
    expect: str | None = None
    """Text every 2xx answer's body must hold."""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitPoll:
    """POST ``submit_path`` (a 202 whose body holds ``"id":"<job id>"``), then
    ``GET poll_path.format(id=<job id>)``, whose body must hold ``expect``."""

    submit_path: str
    body: bytes
    poll_path: str
    expect: str


Shape = Call | SubmitPoll


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    generator: str
    """``wrk <version>`` or ``python``."""
    connections: int
    threads: int
    seconds: float
    requests: int
    """HTTP requests answered (any status)."""
    ok: int
    """Iterations whose every answer was 2xx with the expected body."""
    non_2xx: int
    socket_errors: int
    wrong: int
    latency: Latency | None
    """Per iteration, in ms."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Non-2xx answers by status."""
    first_error: str = ""
    """The first non-2xx answer: status and the start of its body."""
    command: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors + self.wrong

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "connections": self.connections,
            "threads": self.threads,
            "seconds": self.seconds,
            "requests": self.requests,
            "requests_per_s": self.requests_per_s,
            "ok": self.ok,
            "ok_per_s": self.ok_per_s,
            "errors": self.errors,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "wrong": self.wrong,
            "latency": self.latency.to_dict() if self.latency else None,
            "statuses": self.statuses,
            "first_error": self.first_error,
            "command": self.command,
        }


def wrk_path() -> str | None:
    """The wrk binary to use, or None for the Python generator (``BENCH_LOADGEN``)."""
    choice = os.environ.get("BENCH_LOADGEN", "").strip().lower()
    if choice == "python":
        return None
    found = shutil.which("wrk")
    if choice == "wrk" and found is None:
        raise RuntimeError("BENCH_LOADGEN=wrk but no wrk on the PATH")
    return found


def run(
    base_url: str,
    shape: Shape,
    connections: int,
    seconds: float,
    *,
    on_start: Callable[[int], None] | None = None,
) -> LoadResult:
    """``connections`` closed loops of ``shape`` against ``base_url`` for ``seconds``.
    ``on_start(pid)`` is told the pid of a wrk process (to have it killed with the bench)."""
    if connections < 1 or seconds <= 0:
        raise ValueError("connections must be >= 1 and seconds > 0")
    wrk = wrk_path()
    if wrk is not None:
        return run_wrk(wrk, base_url, shape, connections, seconds, on_start=on_start)
    return run_python(base_url, shape, connections, seconds)


# -- wrk ---------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """A Lua string literal of ``text`` (bytes outside printable ASCII as ``\\ddd``)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


_COMMON = r"""
wrong, statuses, first_error = 0, {}, ""
local function note_error(status, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if first_error == "" then first_error = status .. " " .. string.sub(body, 1, 300) end
end
"""

_DONE = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end

local function total(name)
  local sum = 0
  for _, t in ipairs(threads) do sum = sum + (t:get(name) or 0) end
  return sum
end

function done(summary, latency, requests)
  local e = summary.errors
  local merged, first = {}, ""
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses") or {}) do merged[status] = (merged[status] or 0) + n end
    local seen = t:get("first_error")
    if first == "" and seen then first = seen end
  end
  local by_status = {}
  for status, n in pairs(merged) do by_status[#by_status + 1] = '"' .. status .. '":' .. n end
  local out = {
    '"requests":' .. summary.requests,
    '"duration_us":' .. summary.duration,
    '"status":' .. e.status,
    '"connect":' .. e.connect,
    '"read":' .. e.read,
    '"write":' .. e.write,
    '"timeout":' .. e.timeout,
    '"wrong":' .. total("wrong"),
    '"ok":' .. total("ok"),
    '"mean_us":' .. latency.mean,
    '"max_us":' .. latency.max,
    '"p50_us":' .. latency:percentile(50),
    '"p90_us":' .. latency:percentile(90),
    '"p99_us":' .. latency:percentile(99),
    '"statuses":{' .. table.concat(by_status, ",") .. "}",
    '"first_error":"' .. string.gsub(first, '[%c"\\]', " ") .. '"',
  }
  local samples = {}
  for _, t in ipairs(threads) do
    local lat = t:get("lat")
    if lat then
      for i = 1, #lat do samples[#samples + 1] = string.format("%.1f", lat[i]) end
    end
  end
  io.write(MARKER .. "{" .. table.concat(out, ",") .. ',"iterations_us":['
    .. table.concat(samples, ",") .. "]}\n")
end
"""

_CALL = """
wrk.method = {method}
wrk.body = {body}
{headers}
local expect = {expect}
{response}
"""

_CALL_CHECK = """
function response(status, headers, body)
  if status < 200 or status >= 300 then
    note_error(status, body)
  elseif not string.find(body, expect, 1, true) then
    wrong = wrong + 1
  end
end
"""

_SUBMIT_POLL = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local submit = wrk.format("POST", {submit_path},
  {{["Content-Type"] = "application/json"}}, {body})
local poll_before, poll_after = {poll_before}, {poll_after}
local expect = {expect}
-- One connection per thread (-t C -c C): these globals are the connection's state.
phase, job, started, ok, lat = "submit", nil, 0, 0, {{}}

function request()
  if phase == "poll" then
    return wrk.format("GET", poll_before .. job .. poll_after)
  end
  started = now_us()
  return submit
end

function response(status, headers, body)
  if status < 200 or status >= 300 then
    note_error(status, body)
    phase = "submit"
    return
  end
  if phase == "submit" then
    local id = status == 202 and string.match(body, '"id":"([^"]+)"')
    if id then
      job, phase = id, "poll"
    else
      wrong = wrong + 1
    end
    return
  end
  phase = "submit"
  if string.find(body, expect, 1, true) then
    ok = ok + 1
    lat[ok] = now_us() - started
  else
    wrong = wrong + 1
  end
end
"""


def wrk_script(shape: Shape) -> str:
    """The Lua script for one run of ``shape``."""
    if isinstance(shape, Call):
        headers = "\n".join(
            f"wrk.headers[{lua_string(name)}] = {lua_string(value)}"
            for name, value in shape.headers.items()
        )
        body = _CALL.format(
            method=lua_string(shape.method),
            body=lua_string(shape.body.decode()) if shape.body else "nil",
            headers=headers,
            expect=lua_string(shape.expect) if shape.expect else "nil",
            response=_CALL_CHECK if shape.expect else "",
        )
    else:
        before, _, after = shape.poll_path.partition("{id}")
        body = _SUBMIT_POLL.format(
            submit_path=lua_string(shape.submit_path),
            body=lua_string(shape.body.decode()),
            poll_before=lua_string(before),
            poll_after=lua_string(after),
            expect=lua_string(shape.expect),
        )
    return f"local MARKER = {lua_string(MARKER)}\n{_COMMON}\n{body}\n{_DONE}"


def wrk_version(wrk: str) -> str:
    try:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "wrk"
    found = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return f"wrk {found.group(1)}" if found else "wrk"


def run_wrk(
    wrk: str,
    base_url: str,
    shape: Shape,
    connections: int,
    seconds: float,
    *,
    on_start: Callable[[int], None] | None = None,
) -> LoadResult:
    """One wrk run (see the module doc); RuntimeError if wrk fails or prints no result."""
    threads = connections if isinstance(shape, SubmitPoll) else min(WRK_THREADS, connections)
    path = shape.path if isinstance(shape, Call) else shape.submit_path
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "load.lua"
        script.write_text(wrk_script(shape))
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "--latency",
            "-s",
            str(script),
            base_url.rstrip("/") + path,
        ]
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        if on_start is not None:
            on_start(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=seconds + WRK_TIMEOUT_S + 30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = stdout.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk exited with {process.returncode}: {stderr.decode(errors='replace')[-2000:]}"
            f"{text[-2000:]}"
        )
    return parse_wrk(json.loads(line[len(MARKER) :]), shape, connections, threads, argv, wrk)


def parse_wrk(
    doc: Mapping[str, Any],
    shape: Shape,
    connections: int,
    threads: int,
    argv: list[str],
    wrk: str,
) -> LoadResult:
    """A :class:`LoadResult` from the JSON line the script's ``done()`` printed."""
    statuses = {str(k): int(v) for k, v in doc.get("statuses", {}).items()}
    requests, wrong = int(doc["requests"]), int(doc["wrong"])
    non_2xx = max(int(doc["status"]), sum(statuses.values()))  # wrk's own: >= 400 only
    socket_errors = sum(int(doc[k]) for k in ("connect", "read", "write", "timeout"))
    seconds = float(doc["duration_us"]) / 1e6
    if isinstance(shape, SubmitPoll):
        samples = [float(us) / 1e6 for us in doc["iterations_us"]]
        ok = int(doc["ok"])
        latency = Latency.of_seconds(
            samples, "per iteration: submit sent -> poll answered (wrk script, CLOCK_MONOTONIC)"
        )
    else:
        ok = max(0, requests - non_2xx - wrong)
        latency = (
            Latency(
                count=requests,
                mean=float(doc["mean_us"]) / 1000,
                p50=float(doc["p50_us"]) / 1000,
                p90=float(doc["p90_us"]) / 1000,
                p99=float(doc["p99_us"]) / 1000,
                max=float(doc["max_us"]) / 1000,
                method="per request: wrk's latency histogram (request sent -> answer read)",
            )
            if requests
            else None
        )
    return LoadResult(
        generator=wrk_version(wrk),
        connections=connections,
        threads=threads,
        seconds=seconds,
        requests=requests,
        ok=ok,
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        wrong=wrong,
        latency=latency,
        statuses=statuses,
        first_error=str(doc.get("first_error", "")),
        command=[Path(argv[0]).name, *argv[1:-2], "script.lua", argv[-1]],
    )


# -- the Python fallback -------------------------------------------------------------------


class _Answer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class _Connection:
    """One keep-alive HTTP/1.1 connection (answers with Content-Length or chunked)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> _Answer:
        """One exchange; TimeoutError (an OSError, counted as wrk counts its timeouts) past
        :data:`WRK_TIMEOUT_S`."""
        async with asyncio.timeout(WRK_TIMEOUT_S):
            return await self._exchange(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> _Answer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(part[:-2] for part in parts)
        else:
            data = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return _Answer(status, data)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


_ID = re.compile(rb'"id":"([^"]+)"')


@dataclass
class _Counts:
    requests: int = 0
    ok: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    wrong: int = 0
    samples: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def note_error(self, answer: _Answer) -> None:
        self.non_2xx += 1
        key = str(answer.status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if not self.first_error:
            self.first_error = f"{answer.status} {answer.body[:300].decode(errors='replace')}"


async def _loop(host: str, port: int, shape: Shape, stop_at: float, counts: _Counts) -> None:
    conn = _Connection(host, port)
    clock = time.perf_counter
    expect = shape.expect.encode() if shape.expect else None
    try:
        while clock() < stop_at:
            started = clock()
            try:
                if isinstance(shape, Call):
                    answer = await conn.request(shape.method, shape.path, shape.body)
                    counts.requests += 1
                else:
                    answer = await conn.request("POST", shape.submit_path, shape.body)
                    counts.requests += 1
                    found = _ID.search(answer.body) if answer.status == 202 else None
                    if found is not None:
                        path = shape.poll_path.replace("{id}", found.group(1).decode())
                        answer = await conn.request("GET", path)
                        counts.requests += 1
                    elif 200 <= answer.status < 300:
                        counts.wrong += 1
                        continue
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts.socket_errors += 1
                await conn.close()
                continue
            if not 200 <= answer.status < 300:
                counts.note_error(answer)
            elif expect is not None and expect not in answer.body:
                counts.wrong += 1
            else:
                counts.ok += 1
                counts.samples.append(clock() - started)
    finally:
        await conn.close()


def run_python(base_url: str, shape: Shape, connections: int, seconds: float) -> LoadResult:
    """The asyncio fallback (uvloop when installed): ``connections`` tasks in this process."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = _Counts()

    async def main() -> float:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(
            *(_loop(host, port, shape, stop_at, counts) for _ in range(connections))
        )
        return time.perf_counter() - started

    try:
        import uvloop

        elapsed = float(uvloop.run(main()))
        generator = "python (asyncio, uvloop)"
    except ImportError:
        elapsed = asyncio.run(main())
        generator = "python (asyncio)"
    method = (
        "per request: sent -> answer read (python generator)"
        if isinstance(shape, Call)
        else "per iteration: submit sent -> poll answered (python generator)"
    )
    return LoadResult(
        generator=generator,
        connections=connections,
        threads=1,
        seconds=elapsed,
        requests=counts.requests,
        ok=counts.ok,
        non_2xx=counts.non_2xx,
        socket_errors=counts.socket_errors,
        wrong=counts.wrong,
        latency=Latency.of_seconds(counts.samples, method),
        statuses=counts.statuses,
        first_error=counts.first_error,
        command=["python", f"connections={connections}", f"seconds={seconds:g}"],
    )
