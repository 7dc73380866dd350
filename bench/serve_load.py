"""Load test of `tapper serve` on loopback: micro-batching on vs off, side by side, same run, same traffic.

    .venv/bin/python bench/serve_load.py                       # newest default-backbone run under runs/
    .venv/bin/python bench/serve_load.py --run runs/x/tapper   # a given run
    .venv/bin/python bench/serve_load.py --backbone tiny --requests 60 --out /tmp/smoke   # smoke check

Each mode gets its own server process (`tapper serve`, own SQLite store) on a free 127.0.0.1 port, seeded with
the same users' history records; then `--clients` concurrent clients send `--requests` generate requests per
mode (each for a random user) in `--rounds` rounds that alternate between the two servers, bounded by
`--max-seconds`. Writes serve_load.json and serve_load.md to --out
(default results/): throughput, p50/p99 latency, mean batch size and the error count (anything but 200).
Without a trained default-backbone run it serves an untrained one made by init_run, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import RESULTS, ROOT, Result, Table, ratio

TAPPER = [sys.executable, "-c", "from tapper.cli import app; app()"]
LOOPBACK = "127.0.0.1"  # the only address this script ever talks to
MAX_CLIENTS, MAX_REQUESTS, MAX_USERS = 64, 5000, 1000
REVIEWS = [
    "Works exactly as described, would buy again", "Stopped working after two weeks", "Decent for the price",
    "The battery life is excellent", "Arrived broken and support never answered", "Good but a bit noisy",
    "Fits perfectly and looks great", "Cheap materials, feels flimsy", "Best purchase this year",
    "Does the job, nothing special", "Instructions were confusing", "Fast shipping and solid build",
]


def find_default_run() -> Path | None:
    """The newest complete, full TAP-PER run (P_u and P_q on) under runs/ whose backbone is the default one."""
    found = []
    for config_path in (ROOT / "runs").glob("**/tapper_config.json"):
        config = json.loads(config_path.read_text())
        full = config.get("use_user_state", True) and config.get("use_query_prefix", True)
        default = str(config.get("backbone", "default")).lower() in ("default", "smollm2", "smollm2-135m-instruct")
        if full and default and (config_path.parent / "query_prefix.safetensors").exists():
            found.append(config_path.parent)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def untrained_run(backbone: str, task: str, where: Path) -> Path:
    import tapper.engine  # noqa: F401  (loads the model package before tapper.train, which needs it)
    from tapper.train import init_run

    return init_run(where / f"untrained-{backbone}", backbone=backbone, task=task)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_server(run: Path, db: str, port: int, max_batch: int, max_wait_ms: float, torch_threads: int,
                 log: Path, ready_s: float = 300.0) -> subprocess.Popen:
    argv = [*TAPPER, "serve", "--run", str(run), "--db", db, "--host", LOOPBACK, "--port", str(port),
            "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue-size", "4096",
            "--torch-threads", str(torch_threads)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after {ready_s} s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def record_for(i: int, rng: random.Random) -> dict:
    return {"id": f"r{i}", "text": rng.choice(REVIEWS), "title": f"item {i}", "score": rng.randint(1, 5),
            "label": "neutral", "date": f"2021-{1 + i % 12:02d}-{1 + i % 28:02d}"}


def query_for(task: str, rng: random.Random) -> str:
    review = rng.choice(REVIEWS)
    if task == "LaMP_3":
        return ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, "
                f"or 5 without further explanation. review: {review}")
    return f"Generate a headline for the following article: {review}"


async def drive(base: str, key: str, task: str, users: list[str], clients: int, requests: int,
                max_seconds: float, seed: int) -> dict:
    """`clients` concurrent loops sharing one budget of `requests`, stopped early at `max_seconds`."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sent = 0
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client(n: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        rng = random.Random(seed * 1000 + n)
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            body = {"user_id": rng.choice(users), "task": task, "input": query_for(task, rng)}
            t0 = time.perf_counter()
            try:
                reply = await http.post(f"{base}/v1/generate", json=body, headers=headers)
                status = str(reply.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=max_seconds + 60, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return {"latencies": latencies, "statuses": statuses, "seconds": time.perf_counter() - start}


def summarize(rounds: list[dict], requested: int) -> dict:
    latencies = [x for r in rounds for x in r["latencies"]]
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    elapsed = sum(r["seconds"] for r in rounds)
    ok = statuses.get("200", 0)
    qs = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else latencies * 99
    return {
        "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok, "statuses": statuses,
        "seconds": round(elapsed, 3), "throughput_rps": round(ok / elapsed, 3) if elapsed else 0.0,
        "p50_ms": round(qs[49] * 1000, 1), "p99_ms": round(qs[98] * 1000, 1),
        "stopped_by_time": len(latencies) < requested,
    }


def batch_stats(base: str) -> dict:
    """Mean batch size and total engine seconds, read from the server's own /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    wanted = ("tapper_batch_size_sum", "tapper_batch_size_count", "tapper_engine_seconds_sum")
    values = {name: 0.0 for name in wanted}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    count = values["tapper_batch_size_count"]
    return {"batches": int(count), "engine_seconds": round(values["tapper_engine_seconds_sum"], 2),
            "mean_batch_size": round(values["tapper_batch_size_sum"] / count, 2) if count else 0.0}


class Mode:
    """One server process (its own SQLite store) in one batching configuration, seeded with the same users."""

    def __init__(self, name: str, run: Path, max_batch: int, max_wait_ms: float, threads: int, work: Path) -> None:
        from tapper.serve import create_api_key
        from tapper.store import UserStore

        self.name, self.max_batch, self.max_wait_ms = name, max_batch, max_wait_ms
        db = f"sqlite:///{work / f'{name}.db'}"
        store = UserStore(db)
        self.key = create_api_key(store, "bench")
        store.close()
        port = free_port()
        self.proc = start_server(run, db, port, max_batch, max_wait_ms, threads, work / f"{name}.log")
        self.base = f"http://{LOOPBACK}:{port}"
        self.task = httpx.get(f"{self.base}/healthz", timeout=10).json()["task"]
        self.rounds: list[dict] = []
        self.warmup_errors = 0

    def seed(self, users: list[str], records_per_user: int, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.key}"}
        for user in users:
            records = [record_for(i, rng) for i in range(records_per_user)]
            httpx.post(f"{self.base}/v1/users/{user}/records", json={"records": records}, headers=headers,
                       timeout=60).raise_for_status()

    def drive(self, users: list[str], clients: int, requests: int, max_seconds: float, seed: int) -> dict:
        return asyncio.run(drive(self.base, self.key, self.task, users, clients, requests, max_seconds, seed))

    def result(self, requested: int) -> dict:
        out = summarize(self.rounds, requested)
        out.update(batch_stats(self.base))
        # warm-up batches are in the engine total too; over a long run they hardly move the share
        out["engine_busy_share"] = round(out["engine_seconds"] / out["seconds"], 3) if out["seconds"] else 0.0
        out.update({"mode": self.name, "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms,
                    "warmup_errors": self.warmup_errors})
        return out

    def stop(self) -> None:
        stop(self.proc)


def measure(run: Path, args: argparse.Namespace, work: Path) -> list[dict]:
    """Both servers up at once; rounds alternate between them, so drifting machine load hits both alike."""
    users = [f"user{u}" for u in range(args.users)]
    modes: list[Mode] = []
    try:
        modes.append(Mode("batched", run, args.max_batch, args.max_wait_ms, args.torch_threads, work))
        modes.append(Mode("unbatched", run, 1, 0.0, args.torch_threads, work))
        for mode in modes:
            mode.seed(users, args.records_per_user, args.seed)
            warm = mode.drive(users, min(args.clients, 4), args.warmup, 120.0, args.seed + 1)
            mode.warmup_errors = sum(warm["statuses"].values()) - warm["statuses"].get("200", 0)
        per_round = max(1, args.requests // args.rounds)
        for r in range(args.rounds):
            for mode in modes:
                mode.rounds.append(mode.drive(users, args.clients, per_round, args.max_seconds / args.rounds,
                                              args.seed + 10 + r))
        results = [mode.result(per_round * args.rounds) for mode in modes]
    finally:
        for mode in modes:
            mode.stop()
    for m in results:
        print(f"{m['mode']:>10}: {m['throughput_rps']:.2f} req/s, p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms, "
              f"errors {m['errors']}, mean batch {m['mean_batch_size']}")
    return results


def result_of(report: dict, started: float) -> Result:
    """The shared JSON + Markdown result (bench/common.py), stamped with command, commit and machine."""
    table = Table(
        "Throughput and latency per mode",
        ["mode", "max batch", "max wait ms", "requests", "throughput req/s", "p50 ms", "p99 ms", "mean batch",
         "engine busy", "errors"],
        [[m["mode"], m["max_batch"], m["max_wait_ms"], m["requests"], m["throughput_rps"], m["p50_ms"],
          m["p99_ms"], m["mean_batch_size"], m["engine_busy_share"], m["errors"]] for m in report["modes"]],
    )
    load = report["load_average_1min_before_after"]
    notes = [
        f"Run: {report['run']} ({report['run_note']}); backbone {report['backbone']}, task {report['task']}.",
        f"{report['clients']} concurrent clients on 127.0.0.1, {report['users']} users with "
        f"{report['records_per_user']} records each, {report['requests']} generate requests per mode in "
        f"{report['rounds']} rounds alternating between the two servers (cap {report['max_seconds']} s per mode); "
        f"SQLite store; {report['torch_threads']} torch thread(s) per server; no GPU.",
        f"Micro-batching throughput / unbatched: {report['batched_speedup']}x.",
        "Engine busy = engine seconds (from the server's tapper_engine_seconds) / driven wall time: near 1 means "
        "the forward passes are the bottleneck, well below 1 means time goes to the serving path or to the "
        "clients.",
        "Errors count every reply that is not 200 (a 503 from a full queue included); they must be 0. "
        f"Total errors, warm-up included: {report['total_errors']}.",
        f"Machine load average (1 min) before / after: {load[0]} / {load[1]}; other work shared the cores, so "
        "the numbers are indicative.",
    ]
    return Result("serve_load", "`tapper serve` under load: micro-batching on vs off", report, [table], notes,
                  started=started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory; default: newest default-backbone run in runs/")
    parser.add_argument("--backbone", default="default", help="backbone of the untrained run made when needed")
    parser.add_argument("--task", default="LaMP_3", help="task of the untrained run made when needed")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--records-per-user", type=int, default=12)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256, help="generate requests per mode")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per mode")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="time cap per mode")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="per server; 1 keeps two servers and the clients from thrashing 2 cores")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.time()
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.requests <= MAX_REQUESTS
            and 1 <= args.users <= MAX_USERS and 0 < args.max_seconds <= 3600 and 1 <= args.rounds <= 20):
        parser.error(f"bounds: clients 1-{MAX_CLIENTS}, requests 1-{MAX_REQUESTS}, users 1-{MAX_USERS}, "
                     "max-seconds up to 3600, rounds 1-20")

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        run = args.run or (find_default_run() if args.backbone == "default" else None)
        note, shown = "trained run", str(run)
        if run is None:
            run = untrained_run(args.backbone, args.task, work)
            note = "UNTRAINED: made by init_run because no trained run was found; speed only, outputs meaningless"
            shown = f"init_run(backbone={args.backbone!r}, task={args.task!r}) in a temporary directory"
        config = json.loads((run / "tapper_config.json").read_text())
        load_before = os.getloadavg()
        modes = measure(run, args, work)
        load_after = os.getloadavg()

    report = {
        "run": shown, "run_note": note,
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "backbone": config.get("backbone"), "task": config.get("task"),
        "clients": args.clients, "users": args.users, "records_per_user": args.records_per_user,
        "requests": args.requests, "rounds": args.rounds, "max_seconds": args.max_seconds,
        "torch_threads": args.torch_threads, "modes": modes,
        "batched_speedup": round(ratio(modes[0]["throughput_rps"], modes[1]["throughput_rps"]), 3),
        "total_errors": sum(m["errors"] + m["warmup_errors"] for m in modes),
    }
    written = result_of(report, started).write(args.out)
    print(f"wrote {', '.join(str(p) for p in written)}; errors: {report['total_errors']}")
    if report["total_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
