"""Serving under concurrent load: r1lite serve against llama-cpp-python's own server, same model.

One asyncio httpx process on loopback drives 1, 4, 16 and 50 concurrent streaming clients (each
sends its requests one after another) against, one server at a time:

- ``r1lite`` — ``r1lite serve --model M`` (PyTorch; the engine's step-level batch, guard on);
- ``r1lite-gguf`` — ``r1lite serve --model M.f16.gguf`` (our engine on llama.cpp);
- ``llama_cpp.server`` — ``python -m llama_cpp.server --model M.f16.gguf`` (the peer), both GGUF
  rows on the f16 file ``r1lite export`` writes from M.

Per row: aggregate completion tokens/s (all tokens over the level's wall time), time to first
token p50/p95 (first reasoning or answer text), errors (a 429 or any non-200 counts as one), the
server's peak RSS (VmHWM), and the client's own CPU seconds (so a saturated client is visible).
Every server gets the same threads (--threads, default: all cores) and sampling (T 0.6, top-p
0.95, a seed per request).

    python benchmarks/bench_serve.py [--model default]   # writes benchmarks/results/serve-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_allow_dirty, commit_fields, machine  # noqa: E402

from r1lite.files import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: str, gguf: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if kind == "llama_cpp.server":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch", str(threads), "--api_key", KEY,
               "--verbose", "False", "--interrupt_requests", "False"]  # its default drops a stream when another request arrives
    else:
        cmd = [sys.executable, "-m", "r1lite", "serve", "--model", str(gguf) if kind == "r1lite-gguf" else model,
               "--port", str(port), "--api-key", KEY, "--max-concurrency", "64"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: {kind} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"bench_serve: {kind} did not start within 300 s")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> dict:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "temperature": 0.6, "top_p": 0.95, "seed": i,
            "messages": [{"role": "user", "content": f"What is {17 + i} + {29 + 3 * i}? Explain briefly."}]}
    started = time.perf_counter()
    first, tokens, chunks = None, None, 0
    try:
        async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": r.status_code}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("content") or delta.get("reasoning_content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - started
    except httpx.HTTPError as e:
        return {"error": type(e).__name__}
    return {"ttft": first, "tokens": tokens if tokens is not None else chunks, "usage": tokens is not None}


async def level(url: str, model: str, clients: int, per_client: int, max_tokens: int, offset: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker(c: int) -> list[dict]:
            return [await one_request(client, url, model, offset + c * per_client + k, max_tokens) for k in range(per_client)]

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in ok)

    def pct(q: float) -> float | None:
        return ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] if ttfts else None

    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "error_kinds": sorted({str(r["error"]) for r in results if "error" in r}),
            "tokens": tokens, "tokens_counted_by": "usage" if ok and all(r["usage"] for r in ok) else "chunks",
            "wall_s": wall, "tokens_per_s": tokens / wall, "ttft_p50_s": pct(0.5), "ttft_p95_s": pct(0.95),
            "client_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="what r1lite serve takes (default: the embedded model)")
    ap.add_argument("--levels", default="1,4,16,50", help="concurrent clients per level")
    ap.add_argument("--per-client", default="4,2,2,1", help="requests each client sends, per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backends", default="r1lite,r1lite-gguf,llama_cpp.server")
    ap.add_argument("--out", type=Path, default=None)
    add_allow_dirty(ap)
    args = ap.parse_args()
    commit = commit_fields("bench_serve", args.allow_dirty)
    levels = [int(x) for x in args.levels.split(",")]
    per_client = [int(x) for x in args.per_client.split(",")]
    if len(per_client) != len(levels):
        raise SystemExit("bench_serve: --per-client needs one number per --levels entry")
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.f16.gguf"
        r = subprocess.run([sys.executable, "-m", "r1lite", "export", "--model", args.model, "--format", "gguf",
                            "--quant", "f16", "--out", str(gguf)], cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench_serve: export failed: {r.stderr[-2000:]}")
        for kind in args.backends.split(","):
            port = free_port()
            proc = start(kind, args.model, gguf, port, args.threads)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            served = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
            try:
                asyncio.run(level(url, served, 1, 1, 8, 10_000))  # warm-up
                for clients, per in zip(levels, per_client):
                    row = {"backend": kind, **asyncio.run(level(url, served, clients, per, args.max_tokens, 1000 * clients)),
                           "server_peak_rss_mib": peak_rss_mib(proc.pid)}
                    rows.append(row)
                    print(f"{kind:<18}{clients:>4} clients  {row['tokens_per_s']:7.1f} tok/s  TTFT p50 "
                          f"{row['ttft_p50_s'] or float('nan'):.2f} s p95 {row['ttft_p95_s'] or float('nan'):.2f} s  "
                          f"errors {row['errors']}  RSS {row['server_peak_rss_mib']:.0f} MiB  client CPU {row['client_cpu_s']:.1f} s",
                          flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def tps(kind: str, clients: int) -> float | None:
        return next((r["tokens_per_s"] for r in rows if r["backend"] == kind and r["clients"] == clients), None)

    ratios = {}
    if tps("r1lite", 16) and tps("r1lite", 1):
        ratios["r1lite_16_vs_1"] = tps("r1lite", 16) / tps("r1lite", 1)
    if tps("r1lite", 16) and tps("llama_cpp.server", 16):
        ratios["r1lite_vs_llama_cpp_server_at_16"] = tps("r1lite", 16) / tps("llama_cpp.server", 16)
    if tps("r1lite-gguf", 16) and tps("llama_cpp.server", 16):
        ratios["r1lite_gguf_vs_llama_cpp_server_at_16"] = tps("r1lite-gguf", 16) / tps("llama_cpp.server", 16)
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    out = args.out or RESULTS / f"serve-{info['cpu_kind']}.json"
    write_json(out, {"benchmark": "serve", **commit, "machine": info, "model": args.model,
                     "max_tokens": args.max_tokens, "threads": args.threads, "rows": rows, "ratios": ratios})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
