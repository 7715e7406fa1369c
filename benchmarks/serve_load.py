"""Load benchmark of `eedi serve` on loopback: latency percentiles and throughput, retrieval only and with reranking.

Starts the real server (``python -m eedi serve --run-dir RUN``, bound to 127.0.0.1 only) in its own process,
waits for /healthz, then for each mode (retrieval only: ``rerank=false``; retrieval + rerank: ``rerank=true``)
and each concurrency level sends single-item ``POST /predict`` requests from that many client threads, cycling
through the questions of a Kaggle test.csv. Bounded: at most ``--requests`` (retrieval) or
``--rerank-requests`` per level, and at most ``--seconds`` per level. Reports p50/p95/p99/mean latency,
requests/s and errors per level, and writes JSON and Markdown.

    python benchmarks/serve_load.py --run-dir runs/serve-bench --out benchmarks/results/serve_load

The client threads and the server share the machine's cores, as a labeller's browser and the server would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def items_from(test_csv: Path) -> list[dict]:
    test = pd.read_csv(test_csv, dtype=str, keep_default_na=False)
    items = []
    for row in test.to_dict("records"):
        for wrong in (x for x in "ABCD" if x != row["CorrectAnswer"]):
            items.append(
                {
                    "question_text": row["QuestionText"],
                    **{f"answer_{x.lower()}_text": row[f"Answer{x}Text"] for x in "ABCD"},
                    "correct_answer": row["CorrectAnswer"],
                    "wrong_answer": wrong,
                    "construct_name": row["ConstructName"],
                    "subject_name": row["SubjectName"],
                }
            )
    return items


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, port: int, log_path: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "eedi",
        "serve",
        "--run-dir",
        str(run_dir),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def wait_ready(base: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode} before it was ready")
        try:
            response = httpx.get(base + "/healthz", timeout=2)
            if response.status_code == 200 and response.json().get("ready"):
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def run_level(
    base: str, items: list[dict], rerank: bool, concurrency: int, max_requests: int, max_seconds: float
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    stop_at = time.perf_counter() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while time.perf_counter() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {**items[i % len(items)], "top_k": 25, "rerank": rerank}
                t0 = time.perf_counter()
                try:
                    response = client.post("/predict", json=body)
                    ok = response.status_code == 200 and len(response.json()["results"][0]["misconceptions"]) == 25
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - t0
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "mode": "retrieval+rerank" if rerank else "retrieval",
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 1) if len(ms) else None,
        "req_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 2),
    }


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "avx512": sorted(set(re.findall(r"\bavx512[a-z_0-9]*", cpuinfo))),
        "avx2": " avx2 " in cpuinfo.replace("\n", " "),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def markdown(result: dict) -> str:
    lines = [
        "# `eedi serve` load benchmark",
        "",
        "Command (environment in the note below):",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        f"Run: `{result['health']['run_id']}` (retriever `{result['health']['retriever']}`, reranker "
        f"`{result['health']['reranker']}` on {result['health']['reranker_backend']}); "
        f"{result['health']['misconceptions']} misconceptions; single-item `POST /predict`, top_k 25, "
        f"loopback ({LOOPBACK}).",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, AVX-512: "
        f"{' '.join(result['machine']['avx512']) or 'none'}; load average at start "
        f"{result['machine']['load_average_at_start']} (other jobs were running on this shared machine).",
        "",
        "| mode | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | mean ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["levels"]:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['mean_ms']} | {r['req_per_s']} |"
        )
    lines += ["", result["summary"], ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument(
        "--test-csv",
        type=Path,
        default=REPO / "data" / "sample" / "test.csv",
        help="questions to send (cycled; one request per wrong answer)",
    )
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=300, help="retrieval-only requests per level (max)")
    parser.add_argument("--rerank-requests", type=int, default=48, help="reranked requests per level (max)")
    parser.add_argument("--seconds", type=float, default=60, help="time cap per level")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load", help="writes OUT.json and OUT.md"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra `eedi serve` argument (repeatable)")
    parser.add_argument("--note", default="", help="how the run was made, the environment: copied into the results")
    args = parser.parse_args(argv)

    items = items_from(args.test_csv)
    levels = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The server's own log is for debugging a failed run, not a result: kept out of benchmarks/results.
    server_log = Path(tempfile.mkdtemp(prefix="eedi-serve-load-")) / "server.log"
    print(f"server log: {server_log}", flush=True)
    start = machine()
    server = start_server(args.run_dir, port, server_log, args.server_arg)
    try:
        health = wait_ready(base, server, timeout=600)
        results = []
        for rerank in [False, True] if health["reranker"] else [False]:
            run_level(base, items, rerank, 1, args.warmup, 120)  # warm-up: first-call allocations, caches
            for concurrency in levels:
                level = run_level(
                    base, items, rerank, concurrency, args.rerank_requests if rerank else args.requests, args.seconds
                )
                print(json.dumps(level), flush=True)
                results.append(level)
    finally:
        server.terminate()
        server.wait(timeout=30)
    by = {(r["mode"], r["concurrency"]): r for r in results}
    one = by.get(("retrieval", 1))
    summary = []
    if one:
        summary.append(
            f"Retrieval only, concurrency 1: p95 {one['p95_ms']} ms (target <= 100 ms: "
            f"{'met' if one['p95_ms'] is not None and one['p95_ms'] <= 100 else 'NOT met'})."
        )
    rr = by.get(("retrieval+rerank", 1))
    if one and rr and rr["p50_ms"] and one["p50_ms"]:
        summary.append(
            f"Reranking costs {rr['p50_ms'] - one['p50_ms']:.0f} ms more at the median "
            f"({rr['p50_ms'] / one['p50_ms']:.1f}x) at concurrency 1."
        )
    summary.append(f"Errors: {sum(r['errors'] for r in results)} of {sum(r['requests'] for r in results)} requests.")
    result = {
        "command": shlex.join(["python", "benchmarks/serve_load.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": start,
        "health": health,
        "settings": {
            "requests": args.requests,
            "rerank_requests": args.rerank_requests,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "items": len(items),
            "test_csv": str(args.test_csv),
        },
        "levels": results,
        "summary": " ".join(summary),
        "note": args.note,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(result["summary"])
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
