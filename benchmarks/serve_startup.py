"""How long `eedi serve` takes from its start until it answers, with the index stage's saved embeddings and without.

Starts the real server (``python -m eedi serve --run-dir RUN``, bound to 127.0.0.1 only) ``--repeats`` times in
each of two ways, one after the other on this machine:

* ``saved embeddings``: the run directory as the pipeline left it; the server loads
  ``index/<model>.embeddings.npz`` (the misconceptions and the label memory's training queries, embedded by the
  index stage with the same model) instead of encoding them;
* ``re-encoding`` (the baseline): the same run seen through a directory of links that leaves out the saved
  embeddings, so the server encodes the 2,587 misconceptions and every labelled training query at start, as it
  did before the index stage saved them.

Each start is timed from the process's spawn to the first ``/healthz`` that reports ready, and to the answer of
one ``POST /predict`` (one question, one wrong answer, retrieval only). Reports every start, the median per way,
the ratio, and the 20 s target, and writes JSON and Markdown.

    python benchmarks/serve_startup.py --run-dir runs/holdout-run --test-csv runs/holdout/test.csv \
        --out benchmarks/results/serve_startup_cpu_kaggle
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import LOOPBACK, free_port, items_from, machine, start_server, wait_ready  # noqa: E402

TARGET_SECONDS = 20.0
WAYS = ("saved embeddings", "re-encoding")


def without_saved_embeddings(run_dir: Path, into: Path) -> Path:
    """A view of ``run_dir`` made of symlinks in which no ``*.embeddings.npz`` exists (the run is not changed)."""
    view = into / run_dir.name
    view.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.is_dir() and any(entry.glob("*.embeddings.npz")):
            (view / entry.name).mkdir()
            for item in entry.iterdir():
                if not item.name.endswith(".embeddings.npz"):
                    (view / entry.name / item.name).symlink_to(item.resolve())
        else:
            (view / entry.name).symlink_to(entry.resolve())
    return view


def one_start(run_dir: Path, item: dict, log_path: Path, extra: list[str]) -> dict:
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    t0 = time.perf_counter()
    server = start_server(run_dir, port, log_path, extra)
    try:
        health = wait_ready(base, server, timeout=900)
        ready = time.perf_counter() - t0
        response = httpx.post(base + "/predict", json={**item, "top_k": 25, "rerank": False}, timeout=300)
        answered = time.perf_counter() - t0
        response.raise_for_status()
    finally:
        server.terminate()
        server.wait(timeout=30)
    log = log_path.read_text()
    return {
        "ready_s": round(ready, 2),
        "first_answer_s": round(answered, 2),
        "loaded_embeddings": "embeddings: loaded from" in log,
        "run_id": health.get("run_id"),
    }


def markdown(result: dict) -> str:
    lines = [
        "# `eedi serve` start-up: saved embeddings against re-encoding",
        "",
        "Command:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        f"Run: `{result['run_dir']}`. {result['note']}".rstrip(),
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        + (f"AVX-512: {' '.join(result['machine']['avx512'])}" if result["machine"]["avx512"] else "AVX2 only")
        + f"; load average at start {result['machine']['load_average_at_start']}.",
        "",
        "| way | starts | ready s (median) | first answer s (median) | every start: first answer s |",
        "|---|---:|---:|---:|---|",
    ]
    for way in WAYS:
        entry = result["ways"][way]
        lines.append(
            f"| {way} | {len(entry['starts'])} | {entry['median_ready_s']} | {entry['median_first_answer_s']} | "
            + ", ".join(str(s["first_answer_s"]) for s in entry["starts"])
            + " |"
        )
    lines += ["", result["summary"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--test-csv", type=Path, required=True, help="the question of the timed /predict request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_startup"))
    parser.add_argument("--server-arg", action="append", default=[], help="extra `eedi serve` argument (repeatable)")
    parser.add_argument("--note", default="", help="how the run was made, the environment: copied into the results")
    args = parser.parse_args(argv)

    run_dir = args.run_dir.resolve()
    item = items_from(args.test_csv)[0]
    scratch = Path(tempfile.mkdtemp(prefix="eedi-serve-startup-"))
    print(f"server logs: {scratch}", flush=True)
    dirs = {"saved embeddings": run_dir, "re-encoding": without_saved_embeddings(run_dir, scratch / "view")}
    start = machine()
    ways: dict[str, dict] = {way: {"starts": []} for way in WAYS}
    for repeat in range(args.repeats):  # interleaved, so that a change in the machine's load touches both ways
        for way in WAYS:
            log_path = scratch / f"{way.replace(' ', '-')}-{repeat}.log"
            start_record = one_start(dirs[way], item, log_path, ["--no-reranker", *args.server_arg])
            print(way, json.dumps(start_record), flush=True)
            ways[way]["starts"].append(start_record)
    for entry in ways.values():
        entry["median_ready_s"] = round(float(np.median([s["ready_s"] for s in entry["starts"]])), 2)
        entry["median_first_answer_s"] = round(float(np.median([s["first_answer_s"] for s in entry["starts"]])), 2)
    stored, baseline = ways["saved embeddings"], ways["re-encoding"]
    if not all(s["loaded_embeddings"] for s in stored["starts"]):
        raise SystemExit(f"{run_dir} has no saved embeddings for its model: run `eedi index` first")
    first = stored["median_first_answer_s"]
    summary = (
        f"First answer {first} s after start with the saved embeddings (target <= {TARGET_SECONDS:.0f} s: "
        f"{'met' if first <= TARGET_SECONDS else 'NOT met'}), against {baseline['median_first_answer_s']} s when "
        f"the server encodes them ({baseline['median_first_answer_s'] / first:.1f}x)."
    )
    result = {
        "command": shlex.join(["python", "benchmarks/serve_startup.py", *(argv if argv is not None else sys.argv[1:])]),
        "run_dir": str(args.run_dir),
        "machine": start,
        "ways": ways,
        "summary": summary,
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
