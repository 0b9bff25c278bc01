"""Serving one model side by side: r1lite serve against llama.cpp's own server and llama-cpp-python's.

One asyncio httpx process on loopback drives 1 and 16 concurrent streaming clients against one
server at a time. The backends, as ``rows`` names them:

- ``r1lite`` — ``r1lite serve --model M`` (the PyTorch engine; the row held to the goals), and with
  ``--dtype int8`` (``r1lite:int8``, rows with ``"weights": "int8"``: the weights as Q8_0 rows);
- ``r1lite-gguf`` — ``r1lite serve --model M.f16.gguf`` (r1lite's engine on llama.cpp);
- ``llama-server`` — llama.cpp's own server (``make llama-server``) with ``--parallel 16`` slots and
  continuous batching, once on the f16 GGUF and once on the Q8_0 one (``gguf`` names the file);
- ``llama-cpp-python`` — ``python -m llama_cpp.server`` on the f16 GGUF (one request at a time).

Both GGUFs are what ``r1lite export`` writes from M. Every request generates exactly
``--new-tokens`` (128) new tokens: end-of-text is ignored (``ignore_eos``; llama-cpp-python, which
has no such switch, gets ``min_tokens`` equal to ``max_tokens``), and each row says whether every
request got that many (``exact_tokens``). Each level runs ``--repeats`` (3) times; every client sends
one request per repeat, all at once.

Per row: the aggregate tokens/s of the level (median of the repeats, with their min and max), a
stream's own rate (its tokens over the time from sending to its last token, p50 and range), time to
first token p50/p95, inter-token latency (a stream's mean gap after its first text, p50/p95 over
streams), the largest gap between two chunks, fairness at 16 clients (the slowest stream's rate over
the fastest's, median of the repeats), the server's peak RSS (VmHWM) and the client's CPU seconds.
r1lite's output guard holds text back to each sentence's end after the first sentence (whose
settled words go out at once), so its chunks come in bursts: its inter-token latency reads low
(``r1lite:noguard``, a further row
with ``--guard off``, shows what the hold-back costs). Every server gets the same threads
(``--threads``, default: all cores) and sampling (T 0.6, top-p 0.95, a seed per request).

    make llama-server                                   # once: llama.cpp's server for this CPU
    python benchmarks/bench_serve.py [--model default]  # writes benchmarks/results/serve-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import socket
import statistics
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
BACKENDS = "r1lite,r1lite:noguard,r1lite:int8,r1lite-gguf,llama-server:f16,llama-server:q8_0,llama-cpp-python"


def llama_server_binary() -> Path:
    """``make llama-server``'s binary for this CPU's flag set (the Makefile's cache key)."""
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines(keepends=True) if line.startswith("flags")), "")
    return ROOT / ".whl" / hashlib.md5(flags.encode()).hexdigest()[:12] / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(backend: str, model: str, gguf: Path | None, port: int, threads: int, slots: int, guard: bool,
            int8: bool = False) -> list[str]:
    if backend == "llama-server":
        return [str(llama_server_binary()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(threads), "-tb", str(threads), "--parallel", str(slots), "-c", str(512 * slots),
                "--cont-batching", "--jinja", "--no-webui", "--api-key", KEY, "--log-disable"]
    if backend == "llama-cpp-python":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch", str(threads), "--api_key", KEY,
                "--verbose", "False", "--interrupt_requests", "False"]  # its default drops a stream when another request arrives
    return [sys.executable, "-m", "r1lite", "serve", "--model", str(gguf) if backend == "r1lite-gguf" else model,
            "--port", str(port), "--api-key", KEY, "--max-concurrency", "64", *(["--guard", "off"] if not guard else []),
            *(["--dtype", "int8"] if int8 else [])]


def start(cmd: list[str], port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: {cmd[0]} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"bench_serve: {cmd[0]} did not start within 300 s")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def body(backend: str, model: str, i: int, new_tokens: int) -> dict:
    out = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": new_tokens,
           "temperature": 0.6, "top_p": 0.95, "seed": i,
           "messages": [{"role": "user", "content": f"What is {17 + i} + {29 + 3 * i}? Explain briefly."}]}
    if backend == "llama-cpp-python":
        out["min_tokens"] = new_tokens
    else:
        out["ignore_eos"] = True
    return out


async def one_request(client: httpx.AsyncClient, url: str, payload: dict) -> dict:
    started = time.perf_counter()
    times, tokens = [], None
    try:
        async with client.stream("POST", url, json=payload, headers={"Authorization": f"Bearer {KEY}"}) as r:
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
                        times.append(time.perf_counter() - started)
    except httpx.HTTPError as e:
        return {"error": type(e).__name__}
    if not times:
        return {"error": "no text"}
    n = tokens if tokens is not None else len(times)
    span = times[-1] - times[0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"ttft": times[0], "tokens": n, "end": times[-1], "rate": n / times[-1],
            "itl": span / (n - 1) if n > 1 else None, "max_gap": max(gaps, default=0.0)}


async def level(url: str, backend: str, model: str, clients: int, new_tokens: int, offset: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, url, body(backend, model, offset + c, new_tokens))
                                         for c in range(clients)))
        wall = time.perf_counter() - t
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    ok = [r for r in results if "error" not in r]
    rates = [r["rate"] for r in ok]
    return {"results": results, "wall_s": wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "fairness": min(rates) / max(rates) if len(rates) > 1 else None,
            "client_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)}


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def summarise(repeats: list[dict], new_tokens: int) -> dict:
    """One row from a level's repeats: medians with the repeats' range, percentiles over every request."""
    results = [r for rep in repeats for r in rep["results"]]
    ok = [r for r in results if "error" not in r]
    agg = [rep["tokens_per_s"] for rep in repeats]
    fair = [rep["fairness"] for rep in repeats if rep["fairness"] is not None]
    return {"requests": len(results), "errors": len(results) - len(ok),
            "error_kinds": sorted({str(r["error"]) for r in results if "error" in r}),
            "exact_tokens": bool(ok) and all(r["tokens"] == new_tokens for r in ok),
            "tokens_per_s": statistics.median(agg), "tokens_per_s_range": [min(agg), max(agg)],
            "stream_tps_p50": pct([r["rate"] for r in ok], 0.5),
            "stream_tps_range": [pct([r["rate"] for r in ok], 0.0), pct([r["rate"] for r in ok], 1.0)],
            "ttft_p50_s": pct([r["ttft"] for r in ok], 0.5), "ttft_p95_s": pct([r["ttft"] for r in ok], 0.95),
            "itl_p50_s": pct([r["itl"] for r in ok], 0.5), "itl_p95_s": pct([r["itl"] for r in ok], 0.95),
            "max_gap_s": max((r["max_gap"] for r in ok), default=None),
            "fairness": statistics.median(fair) if fair else None,
            "client_cpu_s": max(rep["client_cpu_s"] for rep in repeats)}


def goals(rows: list[dict], cpu_kind: str) -> dict:
    """The issue's serving goals, from the rows (r1lite against llama-server on the Q8_0 file)."""
    def row(backend: str, clients: int, gguf: str | None = None, weights: str | None = None) -> dict | None:
        return next((r for r in rows if r["backend"] == backend and r["clients"] == clients and r.get("guard", True)
                     and r.get("weights") == weights and (gguf is None or r.get("gguf", "").endswith(gguf))), None)

    out: dict = {} if cpu_kind == "avx512-bf16" else {"note": "not measured on avx512-bf16"}
    r1, peer = row("r1lite", 1), row("llama-server", 1, "q8_0.gguf")
    if r1 and peer:  # one stream's tokens over its whole time (the hold-back's bursts make a decode-only rate unfair)
        out["one_client_vs_llama_server_q8_0"] = r1["tokens_per_s"] / peer["tokens_per_s"]
    if r1 and r1["ttft_p50_s"] is not None:
        out["one_client_ttft_p50_s"] = r1["ttft_p50_s"]
    r16, peer16 = row("r1lite", 16), row("llama-server", 16, "q8_0.gguf")
    if r16 and peer16:
        out["sixteen_clients_vs_llama_server_q8_0"] = r16["tokens_per_s"] / peer16["tokens_per_s"]
    f16 = row("llama-server", 16, "f16.gguf")
    if r16 and f16:
        out["sixteen_clients_vs_llama_server_f16"] = r16["tokens_per_s"] / f16["tokens_per_s"]
    if (serve := [r["server_peak_rss_mib"] for r in rows if r["backend"] == "r1lite" and r.get("weights") is None]):
        out["r1lite_serve_peak_rss_mib"] = max(serve)
    for clients in (1, 16):  # the same figures for serve --dtype int8
        ours, peer = row("r1lite", clients, weights="int8"), row("llama-server", clients, "q8_0.gguf")
        if ours and peer:
            out[f"{'one_client' if clients == 1 else 'sixteen_clients'}_int8_vs_llama_server_q8_0"] = ours["tokens_per_s"] / peer["tokens_per_s"]
        if ours and clients == 1 and ours["ttft_p50_s"] is not None:
            out["one_client_int8_ttft_p50_s"] = ours["ttft_p50_s"]
    if (serve := [r["server_peak_rss_mib"] for r in rows if r["backend"] == "r1lite" and r.get("weights") == "int8"]):
        out["r1lite_int8_serve_peak_rss_mib"] = max(serve)
    return out


def export(model: str, quant: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "r1lite", "export", "--model", model, "--to", "gguf", "--quant", quant,
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_serve: export {quant} failed: {r.stderr[-2000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="what r1lite serve takes (default: the embedded model)")
    ap.add_argument("--levels", default="1,16", help="concurrent clients per level")
    ap.add_argument("--new-tokens", type=int, default=128, help="new tokens every request generates")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backends", default=BACKENDS, help="backend[:gguf scheme], comma-separated")
    ap.add_argument("--out", type=Path, default=None)
    add_allow_dirty(ap)
    args = ap.parse_args()
    commit = commit_fields("bench_serve", args.allow_dirty)
    levels = [int(x) for x in args.levels.split(",")]
    backends = [(b.split(":")[0], b.split(":")[1] if ":" in b else "f16") for b in args.backends.split(",")]
    if bad := [f"{b}:{q}" for b, q in backends if b not in ("r1lite", "r1lite-gguf", "llama-server", "llama-cpp-python")
               or q not in ("f16", "q8_0", "q4_0", "q4_k_m", "noguard", "int8") or (q in ("noguard", "int8") and b != "r1lite")]:
        raise SystemExit(f"bench_serve: --backends {','.join(bad)}: not a backend; each is r1lite[:noguard|int8], r1lite-gguf, "
                         "llama-server[:f16|q8_0|q4_0|q4_k_m] or llama-cpp-python")
    if any(b == "llama-server" for b, _ in backends) and not llama_server_binary().exists():
        raise SystemExit(f"bench_serve: no {llama_server_binary().relative_to(ROOT)}; run `make llama-server` first "
                         "(or leave llama-server out of --backends)")
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = {q: export(args.model, q, Path(tmp) / f"model.{q}.gguf")
                 for q in sorted({q for b, q in backends if b != "r1lite"})}
        for backend, quant in backends:
            gguf = ggufs.get(quant) if backend != "r1lite" else None
            guard, int8 = quant != "noguard", quant == "int8"
            port = free_port()
            proc = start(command(backend, args.model, gguf, port, args.threads, max(levels), guard, int8), port, args.threads)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            served = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
            try:
                asyncio.run(level(url, backend, served, 1, 8, 10_000))  # warm-up
                for clients in levels:
                    repeats = [asyncio.run(level(url, backend, served, clients, args.new_tokens, 1000 * clients + 100 * k))
                               for k in range(args.repeats)]
                    row = {"backend": backend, **({"gguf": gguf.name} if gguf else {}), **({} if guard else {"guard": False}),
                           **({"weights": "int8"} if int8 else {}),
                           "clients": clients,
                           **summarise(repeats, args.new_tokens), "server_peak_rss_mib": peak_rss_mib(proc.pid)}
                    rows.append(row)
                    label = f"{backend}{' ' + gguf.name if gguf else ''}{'' if guard else ' guard off'}{' int8' if int8 else ''}"
                    print(f"{label:<34}{clients:>3} clients  {row['tokens_per_s']:7.1f} tok/s "
                          f"({row['tokens_per_s_range'][0]:.1f}-{row['tokens_per_s_range'][1]:.1f})  stream "
                          f"{row['stream_tps_p50'] or float('nan'):6.1f} tok/s  TTFT p50 {row['ttft_p50_s'] or float('nan'):.2f} "
                          f"p95 {row['ttft_p95_s'] or float('nan'):.2f} s  ITL p50 {1000 * (row['itl_p50_s'] or float('nan')):.0f} ms  "
                          f"fair {row['fairness'] or float('nan'):.2f}  exact {row['exact_tokens']}  errors {row['errors']}  "
                          f"RSS {row['server_peak_rss_mib']:.0f} MiB", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    result_goals = goals(rows, info["cpu_kind"])
    for name, value in result_goals.items():
        print(f"{name}: {value if isinstance(value, str) else f'{value:.2f}'}")
    out = args.out or RESULTS / f"serve-{info['cpu_kind']}.json"
    write_json(out, {"benchmark": "serve", **commit, "machine": info, "model": args.model, "new_tokens": args.new_tokens,
                     "repeats": args.repeats, "threads": args.threads, "rows": rows, "goals": result_goals})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
