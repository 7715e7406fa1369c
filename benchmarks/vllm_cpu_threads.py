#!/usr/bin/env python
"""Reranker window scoring on vLLM's CPU engine: vLLM's default OpenMP binding vs runtime.vllm_cpu_threads.

    .venv-infer/bin/python benchmarks/vllm_cpu_threads.py [--windows 96] [--repeats 2]

vLLM 0.32's default ``VLLM_CPU_OMP_THREADS_BIND=auto`` binds the worker's OpenMP threads to one
logical CPU per physical core and keeps one core back for the scheduler: 1 compute thread on a
2-core machine. ``eedi.runtime.configure_vllm_cpu_threads`` (runtime.vllm_cpu_threads=None) binds
every core of the affinity mask instead. Both settings score the same windows, built the way the
infer stage builds them (``eedi.rerank.prompts.build_prompt``, scored through ``make_scorer`` /
``score_with``): the first test pairs of data/sample, each with ``--window-size`` misconceptions
drawn with a fixed seed.

The binding is read when vLLM spawns its processes, so each setting runs in its own subprocess
(engine start, ``--warmup`` windows untimed, then the ``--windows`` timed ones); the two take turns,
the order alternating over ``--repeats``, so that other jobs on a shared machine slow both alike.
Each run also records vLLM's own binding log line (core ids per rank, reserved CPUs) and, per vLLM
process, the CPU seconds it used while scoring, how many of its threads were busy (over a quarter of
the wall time) and the CPUs each busy thread is pinned to.

Writes benchmarks/results/vllm_cpu_threads.json and .md. Needs the inference environment (vLLM).
Defaults take about 5 minutes on 2 idle cores; ``--windows 8 --repeats 1`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIND = "VLLM_CPU_OMP_THREADS_BIND"
MODES = {
    # vLLM's default, set explicitly: configure_vllm_cpu_threads leaves a user's value alone.
    "vllm_default": {BIND: "auto"},
    # Nothing set: configure_vllm_cpu_threads binds every core of the affinity mask.
    "eedi_all_cores": {},
}


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_flags() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    avx512 = sorted(set(re.findall(r"\bavx512[a-z_0-9]*", text)))
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    return {
        "model_name": model.group(1) if model else None,
        "avx512": avx512,
        "avx2": bool(re.search(r"\bavx2\b", text)),
        "isa": "avx512" if avx512 else "avx2-only",
    }


def build_windows(config, n: int, window_size: int, seed: int = 0) -> list[str]:
    """Prompts of ``n`` windows: test pairs of config.data.dir in order (cycled), random candidates."""
    import numpy as np
    from transformers import AutoTokenizer

    from eedi.data.kaggle import load_kaggle_dir
    from eedi.data.pairs import build_pairs
    from eedi.rerank.prompts import build_prompt

    data = load_kaggle_dir(config.data.dir)
    pairs = build_pairs(data, config.data)
    test = pairs[pairs["split"] == "test"].to_dict("records")
    if not test:
        raise SystemExit(f"{config.data.dir} has no test pairs")
    names = data.mapping["MisconceptionName"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(config.reranker.backbone)
    rng = np.random.default_rng(seed)
    return [
        build_prompt(test[i % len(test)], list(rng.choice(names, window_size, replace=False)), tokenizer)
        for i in range(n)
    ]


# --------------------------------------------------------------------------- child: one engine, one setting


def _snapshot(procs) -> dict:
    out = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                threads = proc.threads()
                out[proc.pid] = {
                    "cpu": times.user + times.system,
                    "name": proc.name(),
                    "threads": {t.id: t.user_time + t.system_time for t in threads},
                    "cpus": {t.id: _cpus(t.id) for t in threads},
                }
        except Exception:  # noqa: BLE001 (a process may end between listing and reading)
            pass
    return out


def _cpus(tid: int) -> str:
    """The CPUs a thread may run on (OpenMP binding pins each worker thread to one), e.g. "0" or "0-1"."""
    try:
        cpus = sorted(os.sched_getaffinity(tid))
    except OSError:
        return "?"
    return (
        f"{cpus[0]}-{cpus[-1]}"
        if len(cpus) > 1 and cpus == list(range(cpus[0], cpus[-1] + 1))
        else ",".join(map(str, cpus))
    )


def child(args) -> int:
    import psutil

    from eedi.config import load_config
    from eedi.rerank.scoring import make_scorer, score_with

    prompts = json.loads(Path(args.prompts).read_text())
    warm, timed = prompts[: args.warmup], prompts[args.warmup :]
    sizes = [args.window_size] * len(timed)
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(
            args.config,
            [f"run_dir={run_dir}", f"reranker.backbone={args.model}", "runtime.device=cpu", *args.overrides],
        )
        t0 = time.perf_counter()
        scorer = make_scorer(args.model, "vllm", config)
        start_s = time.perf_counter() - t0
        try:
            if warm:
                score_with(scorer, warm, [args.window_size] * len(warm), config.reranker.max_length)
            me = psutil.Process()
            procs = [me, *me.children(recursive=True)]
            before = _snapshot(procs)
            t0 = time.perf_counter()
            probs = score_with(scorer, timed, sizes, config.reranker.max_length)
            seconds = time.perf_counter() - t0
            after = _snapshot(procs)
        finally:
            scorer.close()
    processes = []
    for proc in procs:
        if proc.pid not in before or proc.pid not in after:
            continue
        b, a = before[proc.pid], after[proc.pid]
        busy = [tid for tid, cpu in a["threads"].items() if cpu - b["threads"].get(tid, 0.0) > 0.25 * seconds]
        processes.append(
            {
                "pid": proc.pid,
                "name": a["name"],
                "main": proc.pid == me.pid,
                "cpu_s": round(a["cpu"] - b["cpu"], 2),
                "cores_used": round((a["cpu"] - b["cpu"]) / seconds, 2),
                "threads": len(a["threads"]),
                "busy_threads": len(busy),
                "busy_thread_cpus": [a["cpus"][tid] for tid in busy],
            }
        )
    result = {
        "engine_start_s": round(start_s, 2),
        "seconds": round(seconds, 3),
        "windows": len(timed),
        "windows_per_s": round(len(timed) / seconds, 3),
        "bind": os.environ.get(BIND),
        "processes": processes,
        "probs": [p.tolist() for p in probs],
    }
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- parent: alternate the settings


def run_mode(mode: str, args, prompts_file: Path, tmp: Path, index: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (BIND, "VLLM_CPU_NUM_OF_RESERVED_CPU", "EEDI_SET_VLLM_CPU_OMP_THREADS_BIND")
    }
    env.update(MODES[mode])
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    result = tmp / f"{index}_{mode}.json"
    log = tmp / f"{index}_{mode}.log"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--prompts",
        str(prompts_file),
        "--result",
        str(result),
        "--config",
        args.config,
        "--model",
        args.model,
        "--warmup",
        str(args.warmup),
        "--window-size",
        str(args.window_size),
        *args.overrides,
    ]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{mode} run {index} failed (rc={rc}); log above")
    out = json.loads(result.read_text())
    out["process_s"] = round(time.perf_counter() - t0, 1)
    out["load_average_1min_before"] = round(load, 2)
    binding = re.findall(r"OpenMP thread binding info.*?reserved_cpus=\[[^\]]*\]", log.read_text(), re.S)
    out["vllm_binding_log"] = [re.sub(r"\s+", " ", b.split("binding info:")[-1]).strip() for b in binding]
    worker = max(out["processes"], key=lambda p: p["cpu_s"])
    print(
        f"  {mode:15s} {out['windows_per_s']:7.3f} windows/s  start {out['engine_start_s']:5.1f}s  "
        f"busiest process {worker['name']}: {worker['cores_used']} cores, {worker['busy_threads']} busy "
        f"thread(s) on CPUs {worker['busy_thread_cpus']}; vLLM core ids {_core_ids(out)}",
        flush=True,
    )
    return out


def _core_ids(run: dict) -> str | None:
    found = re.findall(r"core ids=(\[[^\]]*\])", " ".join(run["vllm_binding_log"]))
    return " | ".join(found) or None


def summarize(runs: list[dict]) -> dict:
    windows = sum(r["windows"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    worker = [max(r["processes"], key=lambda p: p["cpu_s"]) for r in runs]
    return {
        "windows_per_s": round(windows / seconds, 3),
        "windows_per_s_each": [r["windows_per_s"] for r in runs],
        "windows_per_s_median": round(statistics.median(r["windows_per_s"] for r in runs), 3),
        "engine_start_s": [r["engine_start_s"] for r in runs],
        "bind": runs[0]["bind"],
        "vllm_core_ids": _core_ids(runs[0]),
        "worker_cores_used": [w["cores_used"] for w in worker],
        "worker_busy_threads": [w["busy_threads"] for w in worker],
        "worker_busy_thread_cpus": [w["busy_thread_cpus"] for w in worker],
        "vllm_binding_log": runs[0]["vllm_binding_log"],
    }


def write_markdown(record: dict, path: Path) -> None:
    m, c = record["modes"], record["machine"]
    rows = "\n".join(
        f"| {name} | `{s['bind']}` | {s['windows_per_s']} | {', '.join(map(str, s['windows_per_s_each']))} | "
        f"{', '.join(map(str, s['engine_start_s']))} | {s['vllm_core_ids']} | "
        f"{', '.join(map(str, s['worker_cores_used']))} | {', '.join(map(str, s['worker_busy_threads']))} |"
        for name, s in m.items()
    )
    path.write_text(
        f"# vLLM CPU engine: OpenMP binding for reranker scoring\n\n"
        f"`{record['command']}`\n\n"
        f"{record['windows']} timed windows of {record['window_size']} candidates ({record['warmup']} warm-up), "
        f"{record['prompt_tokens_mean']} prompt tokens on average, model `{record['model']}` "
        f"({record['dtype']}), {record['repeats']} repeat(s), order alternating.\n\n"
        f"| setting | VLLM_CPU_OMP_THREADS_BIND | windows/s (all runs) | windows/s per run | engine start s | "
        f"vLLM worker core ids | worker cores used | worker busy threads |\n|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"**eedi_all_cores / vllm_default: {record['ratio_all_cores_over_default']}x** "
        f"(max |prob difference| between the settings: {record['max_abs_prob_diff']})\n\n"
        f"Machine: {c['cpu']['model_name']}, {c['cpus']} CPUs, affinity {c['affinity']}, ISA {c['cpu']['isa']} "
        f"({' '.join(c['cpu']['avx512']) or 'no avx512'}), load average before each run "
        f"{record['load_average_1min_before']}.\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=96, help="timed windows per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, order alternating")
    parser.add_argument("--warmup", type=int, default=4, help="untimed windows before the timed ones")
    parser.add_argument("--window-size", type=int, default=5)
    parser.add_argument("--config", default=str(REPO / "configs" / "cpu.yaml"))
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from eedi.config import load_config

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = load_config(args.config, [f"run_dir={tmp}", f"reranker.backbone={args.model}", *args.overrides])
        prompts = build_windows(config, args.warmup + args.windows, args.window_size)
        prompts_file = tmp / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        lengths = [len(ids) for ids in tokenizer(prompts[args.warmup :], add_special_tokens=False)["input_ids"]]
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        index = 0
        t_all = time.perf_counter()
        for repeat in range(args.repeats):
            order = list(MODES) if repeat % 2 == 0 else list(MODES)[::-1]
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            for mode in order:
                runs[mode].append(run_mode(mode, args, prompts_file, tmp, index))
                index += 1
        total_s = time.perf_counter() - t_all
    modes = {mode: summarize(r) for mode, r in runs.items()}
    probs = {mode: r[0].pop("probs") for mode, r in runs.items()}
    for r in runs.values():
        for run in r:
            run.pop("probs", None)
    diff = max(abs(a - b) for pa, pb in zip(probs["vllm_default"], probs["eedi_all_cores"]) for a, b in zip(pa, pb))
    record = {
        "command": " ".join([".venv-infer/bin/python", "benchmarks/vllm_cpu_threads.py", *sys.argv[1:]]),
        "model": str(Path(args.model).relative_to(REPO)) if Path(args.model).is_relative_to(REPO) else args.model,
        "dtype": "float32",
        "windows": args.windows,
        "warmup": args.warmup,
        "window_size": args.window_size,
        "repeats": args.repeats,
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "modes": modes,
        "ratio_all_cores_over_default": round(
            modes["eedi_all_cores"]["windows_per_s"] / modes["vllm_default"]["windows_per_s"], 3
        ),
        "max_abs_prob_diff": float(f"{diff:.3g}"),
        "total_s": round(total_s, 1),
        "load_average_1min_before": [run["load_average_1min_before"] for mode in runs for run in runs[mode]],
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "cpu": cpu_flags(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {name: _version(name) for name in ("torch", "transformers", "vllm-cpu", "vllm")},
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vllm_cpu_threads.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record, out_dir / "vllm_cpu_threads.md")
    print((out_dir / "vllm_cpu_threads.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
