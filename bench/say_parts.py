"""``python -m bench.say_parts``: where the message script's Redis CPU goes, part by part.

Versions of ``lua/say.lua`` that each do one thing more than the one before (take the
arguments and return; build the event and payload strings; INCR; RPUSH with the history
trimmed every 32; PUBLISH, which is today's script; and today's script with an LTRIM per
message, as before), and one more that keeps the history in a stream (one ``XADD`` with
``0-*`` ids, whose sequence part is the seq, in place of INCR and RPUSH), run against one
fresh ``redis-server`` with one connection subscribed to every room's channel (read and
dropped by a thread). Each version gets ``CALLS`` EVALSHA calls of ``MESSAGES`` messages of
random rooms of 100, ``PER_WRITE`` calls per write, three times, versions in turn; Redis CPU
per message from ``/proc/<pid>/stat``. Prints one line per version: its CPU per message in
each of the three runs, in µs.

Before them, on the fresh Redis, today's script one call per write, each answered before
the next: back to back, and with a pause of ``PACES_MS`` between calls (5 ms is how often
Redis woke for SAY calls under the harness's 100-room load with a 5 ms batch window),
``PACED_SECONDS`` each, to
show what waking from idle adds to a message (Redis's main-thread CPU from ``INFO cpu``,
its idle rate subtracted).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from redis import Redis

from server.rooms.broker import scripts

from .procstat import usage
from .server import serve_redis

ROOMS = 100
MESSAGES = 20
CALLS = 4000
PER_WRITE = 5
ROUNDS = 3
PACES_MS = (0.0, 1.0, 5.0)
PACED_SECONDS = 4.0
PACED_CALLS = 200  # distinct calls, sent in turn
IDLE_SECONDS = 2.0
TODAY = scripts.source("say")
LOOP = """local size, ttl = tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]
local out = {}
for m = 1, #KEYS / 2 do
  %s
  out[m] = seq
end
return out
"""
STRINGS = """local seq = m
  local text = tostring(seq)
  local ev = '{"type":"message","seq":' .. text .. ARGV[3 * m - 1]
  local payload = 'm ' .. text .. ' ' .. ARGV[3 * m] .. ' ' .. ev"""
INCR = STRINGS.replace("local seq = m", "local seq = redis.call('INCR', KEYS[2 * m - 1])")
RPUSH = (
    INCR
    + """
  local n = redis.call('RPUSH', KEYS[2 * m], ev)
  if n > size + 32 then redis.call('LTRIM', KEYS[2 * m], -size, -1) end"""
)
XADD = """local id = redis.call('XADD', KEYS[2 * m] .. ':stream', 'MAXLEN', '~', size, '0-*',
                        'e', ARGV[3 * m - 1])
  local text = string.sub(id, 3)
  local seq = tonumber(text)
  local payload = 'm ' .. text .. ' ' .. ARGV[3 * m] .. ' {"type":"message","seq":' .. text ..
                  ARGV[3 * m - 1]"""
VERSIONS = {
    "arguments only (return at once)": "return 0",
    "+ event and payload strings": LOOP % STRINGS,
    "+ INCR": LOOP % INCR,
    "+ RPUSH, trimmed every 32": LOOP % RPUSH,
    "XADD (seq from its id) for INCR and RPUSH": LOOP % XADD,
    "+ PUBLISH (today's say.lua)": TODAY,
    "today's say.lua, LTRIM per message": TODAY.replace("n > size + SLACK", "n > size"),
}


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(arg) for arg in args)


def _call(sha: bytes, rng: random.Random) -> bytes:
    keys: list[bytes] = []
    args: list[bytes] = []
    for _ in range(MESSAGES):
        room = b"r%d" % rng.randrange(ROOMS)
        keys += [b"roomhub:{%s}:seq" % room, b"roomhub:{%s}:history" % room]
        tail = (
            b',"room":"%s","user":"vu%s","text":"hello from vu%s, number 1234",'
            b'"ts":1796615276498,"id":"vu%s.1234","sent":1796615276490}' % ((room,) * 4)
        )
        args += [b"roomhub:{%s}" % room, tail, b"1796615276.4981234"]
    return _command(b"EVALSHA", sha, b"%d" % len(keys), *keys, *args, b"50", b"30")


def _replies(sock: socket.socket, count: int) -> None:
    """Read ``count`` replies (arrays of integers or one integer) off ``sock``."""
    data = b""
    while True:
        data += sock.recv(1 << 20)
        lines = data.split(b"\r\n")[:-1]
        done, i = 0, 0
        while i < len(lines):
            if lines[i].startswith(b"*"):
                i += 1 + int(lines[i][1:])
            else:
                i += 1
            if i <= len(lines):
                done += 1
        if done >= count and data.endswith(b"\r\n"):
            return


def main() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as folder, serve_redis(binary, Path(folder)) as redis:
        listener = socket.create_connection(("127.0.0.1", redis.port))
        channels = [b"roomhub:{r%d}" % i for i in range(ROOMS)]
        listener.sendall(_command(b"SUBSCRIBE", *channels))
        stop = threading.Event()

        def drain() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    listener.recv(1 << 20)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        sock = socket.create_connection(("127.0.0.1", redis.port))
        shas, writes = {}, {}
        rng = random.Random(1)
        for name, source in VERSIONS.items():
            sock.sendall(_command(b"SCRIPT", b"LOAD", source.encode()))
            sha = shas[name] = sock.recv(1024).split(b"\r\n")[1]
            writes[name] = b"".join(_call(sha, rng) for _ in range(PER_WRITE))
        # Paced first, on a Redis that holds nothing but what these calls write.
        today = shas["+ PUBLISH (today's say.lua)"]
        paced = _paced(redis.port, sock, [_call(today, rng) for _ in range(PACED_CALLS)])
        costs: dict[str, list[float]] = {name: [] for name in VERSIONS}
        for _ in range(ROUNDS):
            for name, write in writes.items():
                sock.sendall(write)
                _replies(sock, PER_WRITE)
                before = usage(redis.pid).cpu_seconds
                for _ in range(CALLS // PER_WRITE):
                    sock.sendall(write)
                    _replies(sock, PER_WRITE)
                spent = usage(redis.pid).cpu_seconds - before
                costs[name].append(spent / (CALLS * MESSAGES) * 1e6)
        stop.set()
        reader.join()
        sock.close()
        listener.close()
    for name, runs in costs.items():
        print(f"{name}: " + " ".join(f"{cost:.2f}" for cost in runs) + " µs per message")
    for pace, runs in paced.items():
        print(
            f"today's say.lua, one call per write, {pace:g} ms between calls: "
            + " ".join(f"{cost:.2f}" for cost in runs)
            + " µs per message"
        )


def _paced(port: int, sock: socket.socket, calls: list[bytes]) -> dict[float, list[float]]:
    """Redis CPU µs per message of ``calls`` (today's script, used in turn) sent one at a time,
    ``{pace: runs}``: for each pause of :data:`PACES_MS` between calls, ``ROUNDS`` runs of
    ``PACED_SECONDS``. CPU is the main thread's, from ``INFO cpu`` (microseconds, where
    ``/proc`` counts 10 ms ticks), its idle rate over ``IDLE_SECONDS`` before subtracted."""
    costs: dict[float, list[float]] = {pace: [] for pace in PACES_MS}
    with contextlib.closing(Redis(port=port)) as client:

        def cpu() -> float:
            info = client.info("cpu")
            return float(info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"])

        for _ in range(ROUNDS):
            for pace in PACES_MS:
                idle_from = cpu()
                time.sleep(IDLE_SECONDS)
                idle_rate = (cpu() - idle_from) / IDLE_SECONDS
                before, started, sent = cpu(), time.monotonic(), 0
                while time.monotonic() - started < PACED_SECONDS:
                    sock.sendall(calls[sent % len(calls)])
                    _replies(sock, 1)
                    sent += 1
                    if pace:
                        time.sleep(pace / 1000)
                spent = cpu() - before - idle_rate * (time.monotonic() - started)
                costs[pace].append(spent / (sent * MESSAGES) * 1e6)
    return costs


if __name__ == "__main__":
    main()
