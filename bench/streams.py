"""Load generator: many held streaming chat completions at once.

Opens `n` streamed `/v1/chat/completions` calls (the `fake` object steers the fake upstream,
a gateway in front passes it through), holds them to their `data: [DONE]`, and measures the
time to the first content chunk plus the CPU and memory of one server process meanwhile.
Standard library + aiohttp only, so the harness can `import streams` with `bench/` on sys.path.

    .venv/bin/python bench/streams.py URL KEY N [--chunks 20] [--delay-ms 500] [--pid PID]
                                              [--open-within S] [--timeout S] [--no-warmup]

TTFT is from just before the request is sent to the arrival of the first `data:` event whose
choices[0].delta.content is non-empty. Only candidate events (a non-empty `"content":"…"` in
the raw bytes) are JSON-parsed, and only until the first is confirmed; after that each line
costs a prefix check and one regex search.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# A non-empty JSON string under a "content" key, e.g. "delta":{"content":"Hi"} (not "" / null).
_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')
_CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY_S = 0.1
# New highs of the open-stream count are sampled at most this often (and always at n).
_MAX_SAMPLE_GAP_S = 0.005


@dataclass
class StreamRun:
    streams: int  # how many were opened
    completed: int  # ended with `data: [DONE]` and all `chunks` content chunks received
    errors: int  # non-200, connection errors, timeouts, missing [DONE] or short streams
    error_kinds: dict[str, int]  # e.g. {"status 504": 3, "ClientConnectorError": 2}
    ttft_ms: list[float]  # every stream that got a first content chunk, completed or not
    duration_s: float  # wall time of the whole run
    cpu_s: float | None  # utime+stime of `pid` (all its threads) during the run
    rss_idle_kib: int | None  # VmRSS of `pid` just before the run
    rss_peak_kib: int | None  # highest VmRSS sampled (every 100 ms and at new open highs)
    held_at_peak: int  # streams open when that peak was sampled
    rss_all_open_kib: int | None  # VmRSS when the open count first reached its maximum
    max_open: int = 0  # the most streams open at once (headers received, not finished)
    stream_s: list[float] = field(default_factory=list)  # request-to-[DONE], completed ones


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile, p in [0, 1]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid`, summed over its threads (that is what /proc/<pid>/stat holds)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The fields after the comm "(…)", which may itself hold spaces or parentheses.
    rest = stat[stat.rindex(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class _Run:
    """The shared counters of one run; the streams update them, the sampler reads them."""

    def __init__(self, pid: int | None, n: int) -> None:
        self.pid = pid
        self.n = n
        self.open = 0
        self.max_open = 0
        self.rss_peak: int | None = None
        self.held_at_peak = 0
        self.rss_all_open: int | None = None
        self.rss_idle: int | None = None
        self._last_max_sample = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self.completed = 0
        self.errors: dict[str, int] = {}
        self.ttft_ms: list[float] = []
        self.stream_s: list[float] = []

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def sample(self) -> None:
        if self.pid is None:
            return
        rss = rss_kib(self.pid)
        if rss is not None and (self.rss_peak is None or rss > self.rss_peak):
            self.rss_peak, self.held_at_peak = rss, self.open

    def _sample_max(self) -> None:
        """RSS now, as the one for the highest open count, if that count still holds."""
        self._pending = None
        if self.pid is None or self.open != self.max_open:
            return
        self._last_max_sample = time.perf_counter()
        rss = rss_kib(self.pid)
        if rss is not None:
            self.rss_all_open = rss
            if self.rss_peak is None or rss > self.rss_peak:
                self.rss_peak, self.held_at_peak = rss, self.open

    def cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def opened(self) -> None:
        self.open += 1
        if self.open <= self.max_open:
            return
        self.max_open = self.open
        if self.pid is None:
            return
        gap = time.perf_counter() - self._last_max_sample
        if self.open >= self.n or gap >= _MAX_SAMPLE_GAP_S:
            if self._pending is not None:
                self._pending.cancel()
            self._sample_max()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(
                _MAX_SAMPLE_GAP_S - gap, self._sample_max
            )

    def closed(self) -> None:
        self.open -= 1


async def _one(
    session: aiohttp.ClientSession,
    run: _Run,
    url: str,
    headers: dict[str, str],
    body: bytes,
    chunks: int,
    start_after: float,
    timeout_s: float,
) -> None:
    if start_after > 0:
        await asyncio.sleep(start_after)
    started = False
    got_first = False
    content = 0
    done = False
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    run.error(f"status {resp.status}")
                    return
                started = True
                run.opened()
                carry = b""
                async for data in resp.content.iter_any():
                    if carry:
                        data = carry + data
                    lines = data.split(b"\n")
                    carry = lines.pop()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank separators, `event:`, `: comments`
                        if _CONTENT.search(line) is None:
                            if line[5:].strip() == b"[DONE]":
                                done = True
                            continue
                        content += 1
                        if not got_first:
                            now = time.perf_counter()
                            try:
                                choice = json.loads(line[5:])["choices"][0]
                                got_first = bool(choice["delta"]["content"])
                            except (ValueError, KeyError, IndexError, TypeError):
                                got_first = False
                            if got_first:
                                run.ttft_ms.append((now - t0) * 1000)
                            else:
                                content -= 1
                if carry.startswith(b"data:") and carry[5:].strip() == b"[DONE]":
                    done = True  # a body that ends without the final newline
    except TimeoutError:
        run.error("timeout")
        return
    except aiohttp.ClientResponseError as e:
        run.error(f"{type(e).__name__} {e.status}")
        return
    except (aiohttp.ClientError, OSError) as e:
        run.error(type(e).__name__)
        return
    finally:
        if started:
            run.closed()
    if not done:
        run.error("no [DONE]")
    elif content < chunks:
        run.error("short stream")
    else:
        run.completed += 1
        run.stream_s.append(time.perf_counter() - t0)


async def _warmup(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body_obj: dict[str, Any],
    timeout_s: float,
) -> None:
    body = dict(body_obj)
    if isinstance(body.get("fake"), dict):
        body["fake"] = {**body["fake"], "chunk_delay_ms": 0}
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, data=json.dumps(body).encode(), headers=headers) as r:
                await r.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass  # the run itself reports what is wrong


async def _sampler(run: _Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        run.sample()
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
        except TimeoutError:
            pass


async def held_streams(
    url: str,
    api_key: str,
    n: int,
    *,
    chunks: int = 20,
    chunk_delay_ms: float = 500,
    model: str = "gpt-4o-mini",
    pid: int | None = None,
    open_within_s: float = 0.0,
    stream_timeout_s: float = 180.0,
    extra_body: dict[str, Any] | None = None,
    warmup: bool = True,
) -> StreamRun:
    """Open `n` streamed chat completions (all at once, or evenly over `open_within_s`), hold
    each to its end, and measure them and process `pid`.

    `warmup` first sends one unmeasured call, the same but unpaced, so that what a server
    loads on its first request (the fake's tokenizer: ~100 MiB) is in `rss_idle_kib`."""
    raise_fd_limit()
    body_obj: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": chunks,
        "stream": True,
        "stream_options": {"include_usage": True},
        "fake": {"chunks": chunks, "chunk_delay_ms": chunk_delay_ms, "completion_tokens": chunks},
    }
    if extra_body:
        body_obj.update(extra_body)
    body = json.dumps(body_obj).encode()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    run = _Run(pid, n)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    no_timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
    async with aiohttp.ClientSession(connector=connector, timeout=no_timeout) as session:
        if warmup:
            await _warmup(session, url, headers, body_obj, stream_timeout_s)
        stop = asyncio.Event()
        cpu0 = cpu_seconds(pid) if pid is not None else None
        run.rss_idle = rss_kib(pid) if pid is not None else None
        sampler = asyncio.create_task(_sampler(run, stop))
        t_start = time.perf_counter()
        step = open_within_s / n if open_within_s > 0 and n else 0.0
        await asyncio.gather(
            *(
                _one(session, run, url, headers, body, chunks, i * step, stream_timeout_s)
                for i in range(n)
            )
        )
        duration = time.perf_counter() - t_start
        cpu1 = cpu_seconds(pid) if pid is not None else None
        stop.set()
        await sampler
        run.cancel_pending()
    return StreamRun(
        streams=n,
        completed=run.completed,
        errors=sum(run.errors.values()),
        error_kinds=dict(sorted(run.errors.items(), key=lambda kv: -kv[1])),
        ttft_ms=run.ttft_ms,
        duration_s=duration,
        cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        rss_idle_kib=run.rss_idle,
        rss_peak_kib=run.rss_peak,
        held_at_peak=run.held_at_peak,
        rss_all_open_kib=run.rss_all_open,
        max_open=run.max_open,
        stream_s=run.stream_s,
    )


def summary(r: StreamRun) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in r.error_kinds.items()) or "-"
    parts = [
        f"{r.completed}/{r.streams} completed, {r.errors} errors ({kinds})",
        f"TTFT p50 {pct(r.ttft_ms, 0.5):.0f} ms p99 {pct(r.ttft_ms, 0.99):.0f} ms",
        f"stream p50 {pct(r.stream_s, 0.5):.2f} s max {pct(r.stream_s, 1.0):.2f} s",
        f"max open {r.max_open}",
        f"run {r.duration_s:.2f} s",
    ]
    if r.cpu_s is not None:
        parts.append(f"CPU {r.cpu_s * 1000 / r.streams:.2f} ms/stream ({r.cpu_s:.2f} s)")
    if r.rss_all_open_kib is not None and r.rss_idle_kib is not None:
        per = (r.rss_all_open_kib - r.rss_idle_kib) / r.streams
        parts.append(
            f"{per:.1f} KiB/open stream (idle {r.rss_idle_kib} all-open {r.rss_all_open_kib}"
            f" peak {r.rss_peak_kib} KiB with {r.held_at_peak} open)"
        )
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hold N streamed chat completions at once.")
    parser.add_argument("url", help="full .../v1/chat/completions URL")
    parser.add_argument("key", help="bearer key")
    parser.add_argument("n", type=int, help="how many streams")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=500)
    parser.add_argument("--pid", type=int, help="server process to measure (CPU, RSS)")
    parser.add_argument("--open-within", type=float, default=0.0, help="spread starts over S s")
    parser.add_argument("--timeout", type=float, default=180.0, help="per-stream timeout, s")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--no-warmup", action="store_true", help="skip the unmeasured call")
    args = parser.parse_args(argv)
    result = asyncio.run(
        held_streams(
            args.url,
            args.key,
            args.n,
            chunks=args.chunks,
            chunk_delay_ms=args.delay_ms,
            model=args.model,
            pid=args.pid,
            open_within_s=args.open_within,
            stream_timeout_s=args.timeout,
            warmup=not args.no_warmup,
        )
    )
    print(summary(result))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
