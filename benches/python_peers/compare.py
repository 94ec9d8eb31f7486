#!/usr/bin/env python3
"""The arm against the Python servers a team would otherwise run for this model:
FastAPI + uvicorn + prometheus_client (the seed's kind of server, `/predict`) and MLServer
with a custom runtime (Open Inference Protocol v2), all three serving the shipped
`best_model` (the Python ones with a numpy forward pass over model.safetensors), each
given both cores: the arm `workers = 2`, uvicorn `--workers 2`, MLServer
`parallel_workers: 2`.

    python3 benches/python_peers/compare.py            # 3 rounds x 5 s per measurement
    python3 benches/python_peers/compare.py --quick    # agreement check + 1 s per cell

1. Agreement: 50 rows of data/winequality-red.csv, one request per row on every
   server and protocol (arm /predict and OIP, FastAPI /predict, MLServer OIP) plus one
   50-row batch each, must give the same predictions as the arm's /predict to 1e-4
   (and match the numpy forward pass here). Any mismatch: exit 1 before measuring.
2. Closed loop, interleaved rounds: `wrk -t2 -c50` (Lua script for the POST body, as
   benches/compare.py), req/s and CPU microseconds per request of the server's processes
   (the server and every descendant, utime+stime from /proc/<pid>/stat).
3. Fixed rate, interleaved rounds: half the slowest server's closed-loop median (or
   --rate), p50/p99/p99.9 from wrk driving `openloop.lua` (one connection per wrk thread,
   latency from each request's intended send time, wrk2-style; loadgen only speaks
   /predict). On the /predict cells loadgen's open loop runs too, as a cross-check.
4. Peak RSS: VmHWM summed over the server's processes, at the end.

Needs wrk (Debian), target/release/{abgate,loadgen} (cargo build --release --locked -p abgate
-p abgate-bench), fastapi uvicorn[standard] prometheus_client safetensors numpy for python3,
and MLServer in its own venv (--mlserver-python; see README.md beside this file).
"""

import argparse
import importlib.util
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from wine_model import WineModel  # noqa: E402

# The process accounting, port and log helpers are benches/compare.py's (loaded by
# path: this file has the same module name).
_spec = importlib.util.spec_from_file_location(
    "abgate_bench_compare", os.path.join(ROOT, "benches", "compare.py"))
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
log, free_port = _common.log, _common.free_port
cpu_seconds, peak_rss_kib = _common.cpu_seconds, _common.peak_rss_kib

ARM = "best_model"
MODEL_NAME = "wine-quality"
OIP_PATH = f"/v2/models/{MODEL_NAME}/infer"
ROW = [7.4, 0.7, 0, 1.9, 0.076, 11, 34, 0.9978, 3.51, 0.56, 9.4]
# mlserver_pw0: MLServer with parallel_workers: 0 (inference in its one HTTP process), its
# faster setting for a model this small, measured beside the two-worker one.
CELLS = [("arm", "predict"), ("arm", "oip"), ("fastapi", "predict"), ("mlserver", "oip"),
         ("mlserver_pw0", "oip")]
MLSERVERS = {"mlserver": 2, "mlserver_pw0": 0}
TOLERANCE = 1e-4


def descendants(pid):
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def http(method, url, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


def predict_body(model, row):
    return {"features": dict(zip(model.features, row))}


def oip_body(rows):
    return {"inputs": [{"name": "features", "shape": [len(rows), len(rows[0])],
                        "datatype": "FP32", "data": [v for r in rows for v in r]}]}


class Servers:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.procs, self.urls = args, tmp, {}, {}

    def start(self, name, cmd, ready_url, env=None, timeout=90):
        logf = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs[name] = p
        deadline = time.time() + timeout
        while True:
            try:
                if http("GET", ready_url, timeout=1)[0] == 200:
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if p.poll() is not None or time.time() > deadline:
                with open(os.path.join(self.tmp, f"{name}.log")) as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"{name} did not become ready ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.2)

    def start_all(self, bins):
        ports = {k: free_port() for k in ("arm", "fastapi")}
        # The arm: abgate's model server, two HTTP workers.
        cfg = os.path.join(self.tmp, "arm.toml")
        with open(cfg, "w") as f:
            f.write(f'variant = "{ARM}"\nlisten = "127.0.0.1:{ports["arm"]}"\n'
                    f'model_dir = "{ROOT}/models/{ARM}"\nmodel_name = "{MODEL_NAME}"\n'
                    f'workers = 2\n')
        self.urls["arm"] = f"http://127.0.0.1:{ports['arm']}"
        self.start("arm", [bins["abgate"], "model-server", "--config", cfg],
                   self.urls["arm"] + "/api/health", env={"RUST_LOG": "warn"})
        # FastAPI + uvicorn, two worker processes (uvloop + httptools when installed).
        self.urls["fastapi"] = f"http://127.0.0.1:{ports['fastapi']}"
        self.start("fastapi", [sys.executable, "-m", "uvicorn", "--app-dir", HERE,
                               "fastapi_arm:app", "--host", "127.0.0.1",
                               "--port", str(ports["fastapi"]), "--workers", "2",
                               "--log-level", "warning", "--no-access-log"],
                   self.urls["fastapi"] + "/api/health",
                   env={"ABGATE_MODEL_DIR": f"{ROOT}/models/{ARM}", "ABGATE_VARIANT": ARM})
        # MLServer: the shipped settings with free ports (parallel_workers 2, and 0 beside it).
        for name, workers in MLSERVERS.items():
            mls = os.path.join(self.tmp, name)
            os.makedirs(os.path.join(mls, "metrics"))
            with open(os.path.join(HERE, "mlserver", "settings.json")) as f:
                settings = json.load(f)
            http_port = free_port()
            settings.update(http_port=http_port, grpc_port=free_port(), metrics_port=free_port(),
                            metrics_dir=os.path.join(mls, "metrics"), parallel_workers=workers)
            with open(os.path.join(mls, "settings.json"), "w") as f:
                json.dump(settings, f, indent=2)
            with open(os.path.join(HERE, "mlserver", "model-settings.json")) as f:
                model_settings = json.load(f)
            model_settings["parameters"]["uri"] = f"{ROOT}/models/{ARM}"
            with open(os.path.join(mls, "model-settings.json"), "w") as f:
                json.dump(model_settings, f, indent=2)
            self.urls[name] = f"http://127.0.0.1:{http_port}"
            mlserver = os.path.join(os.path.dirname(self.args.mlserver_python), "mlserver")
            self.start(name, [mlserver, "start", mls],
                       f"{self.urls[name]}/v2/models/{MODEL_NAME}/ready", env={"PYTHONPATH": HERE})
        time.sleep(1)  # let every worker settle before listing the processes
        return {name: descendants(p.pid) for name, p in self.procs.items()}

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # workers left behind by a slow shutdown
            except ProcessLookupError:
                pass


def wine_rows(n):
    with open(os.path.join(ROOT, "data", "winequality-red.csv")) as f:
        reader = csv.reader(f)
        next(reader)
        return [[float(v) for v in row[:11]] for _, row in zip(range(n), reader)]


def agreement(urls, model):
    """Every server and protocol against the arm's /predict, row by row and batched."""
    rows = wine_rows(50)
    got = {k: [] for k in ("arm/predict", "arm/oip", "fastapi/predict", "mlserver/oip",
                           "mlserver_pw0/oip")}
    for row in rows:
        got["arm/predict"].append(http("POST", urls["arm"] + "/predict",
                                       predict_body(model, row))[1]["prediction"])
        got["fastapi/predict"].append(http("POST", urls["fastapi"] + "/predict",
                                           predict_body(model, row))[1]["prediction"])
        for name in ("arm", "mlserver", "mlserver_pw0"):
            out = http("POST", urls[name] + OIP_PATH, oip_body([row]))[1]["outputs"]
            assert out[0]["name"] == "quality" and out[0]["shape"] == [1], out
            got[f"{name}/oip"].append(out[0]["data"][0])
    batched = {
        "arm/predict batch": http("POST", urls["arm"] + "/predict", {
            "instances": [dict(zip(model.features, r)) for r in rows]})[1]["predictions"],
        "fastapi/predict batch": http("POST", urls["fastapi"] + "/predict", {
            "instances": [dict(zip(model.features, r)) for r in rows]})[1]["predictions"],
    }
    for name in ("arm", "mlserver", "mlserver_pw0"):
        out = http("POST", urls[name] + OIP_PATH, oip_body(rows))[1]["outputs"][0]
        assert out["shape"] == [len(rows)], out
        batched[f"{name}/oip batch"] = out["data"]
    got.update(batched)
    got["numpy here"] = [float(v) for v in model.predict(rows)]
    ref = got["arm/predict"]
    diffs = {k: max(abs(a - b) for a, b in zip(v, ref)) for k, v in got.items()}
    counts = {k: len(v) for k, v in got.items()}
    ok = all(d <= TOLERANCE for d in diffs.values()) and all(c == len(rows) for c in counts.values())
    return {"rows": len(rows), "tolerance": TOLERANCE, "max_abs_diff_vs_arm_predict": diffs,
            "ok": ok, "first_predictions": ref[:3]}


def lua_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def scripts(tmp, model, rate=None, conns=None):
    bodies = {"predict": json.dumps(predict_body(model, ROW)), "oip": json.dumps(oip_body([ROW]))}
    paths = {"predict": "/predict", "oip": OIP_PATH}
    out = {}
    for proto in ("predict", "oip"):
        if rate is None:
            text = ("request = function()\n  return wrk.format(\"POST\", %s, "
                    "{[\"Content-Type\"] = \"application/json\"}, %s)\nend\n"
                    % (lua_str(paths[proto]), lua_str(bodies[proto])))
            name = f"closed-{proto}.lua"
        else:
            with open(os.path.join(HERE, "openloop.lua")) as f:
                text = f.read()
            text = (text.replace("%PATH%", lua_str(paths[proto]))
                    .replace("%BODY%", lua_str(bodies[proto]))
                    .replace("%RATE%", str(rate)).replace("%CONNS%", str(conns)))
            name = f"open-{proto}.lua"
        out[proto] = os.path.join(tmp, name)
        with open(out[proto], "w") as f:
            f.write(text)
    return out


def wrk_closed(url, seconds, script):
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = next(float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec"))
    total = next(int(l.split()[0]) for l in out.splitlines() if "requests in" in l)
    problems = [l.strip() for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    return rps, total, problems


def wrk_open(url, seconds, script, conns):
    # The schedule starts 0.3 s after wrk's setup and its first 0.5 s is a warm-up; wrk takes
    # whole seconds: +2 s, of which about seconds + 1.2 are recorded.
    out = subprocess.run(["wrk", f"-t{conns}", f"-c{conns}", f"-d{seconds + 2}s", "-T5s",
                          "-s", script, url], capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("OPENLOOP "))
    report = json.loads(line[len("OPENLOOP "):])
    report["rate_achieved"] = round(report["count"] / (seconds + 1.2))
    return report


def loadgen_open(binary, url, rate, seconds, tmp):
    out_json = os.path.join(tmp, "loadgen.json")
    subprocess.run([binary, "--target", url, "--mode", "open", "--rate", str(int(rate)),
                    "--connections", "64", "--duration", f"{seconds}s", "--users", "10000",
                    "--json", out_json, "--no-progress"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out_json) as f:
        report = json.load(f)
    lat = report["overall"]["latency_us"]
    return {"p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"],
            "errors": report["totals"]["errors"]}


def rotate(items, r):
    return items[r % len(items):] + items[:r % len(items)]


def measure(args, bins, urls, pids, model, tmp):
    closed = scripts(tmp, model)
    name = lambda c: f"{c[0]} {c[1]}"
    res = {name(c): {"rps": [], "cpu_us": [], "errors": [], "open": [], "loadgen": []} for c in CELLS}
    for server, proto in CELLS:  # warm every server, pool and cache once
        wrk_closed(urls[server], 1, closed[proto])
    for r in range(args.rounds):
        for server, proto in rotate(CELLS, r):
            before = cpu_seconds(pids[server])
            rps, total, errors = wrk_closed(urls[server], args.duration, closed[proto])
            after = cpu_seconds(pids[server])
            cell = res[name((server, proto))]
            cell["rps"].append(rps)
            cell["errors"] += errors
            cell["cpu_us"].append((after - before) * 1e6 / max(total, 1))
            log(f"  [round {r + 1} closed] {server:8} {proto:7} {rps:9.0f} req/s "
                f"{cell['cpu_us'][-1]:7.1f} us CPU/req")
    slowest = min(statistics.median(v["rps"]) for v in res.values())
    rate = args.rate or max(100, int(round(slowest * 0.5, -2)))
    opened = scripts(tmp, model, rate, args.connections)
    for r in range(args.rounds):
        for server, proto in rotate(CELLS, r):
            cell = res[name((server, proto))]
            rep = wrk_open(urls[server], args.duration, opened[proto], args.connections)
            cell["open"].append(rep)
            log(f"  [round {r + 1} open {rate}/s] {server:8} {proto:7} p50 {rep['p50']} "
                f"p99 {rep['p99']} p99.9 {rep['p999']} us (sent {rep['rate_achieved']}/s, "
                f"errors {rep['status_errors'] + rep['socket_errors']})")
            if proto == "predict" and not args.no_loadgen:
                lg = loadgen_open(bins["loadgen"], urls[server], rate, args.duration, tmp)
                cell["loadgen"].append(lg)
                log(f"  [round {r + 1} loadgen {rate}/s] {server:8} {proto:7} p50 {lg['p50']} "
                    f"p99 {lg['p99']} us")
    for server, proto in CELLS:
        res[name((server, proto))]["peak_rss_mib"] = round(peak_rss_kib(pids[server]) / 1024, 1)
        res[name((server, proto))]["processes"] = len(pids[server])
    return rate, res


def summarize(res):
    rows = {}
    for cell, v in res.items():
        med = lambda xs, k: int(statistics.median(x[k] for x in xs)) if xs else None
        rows[cell] = {
            "rps_median": round(statistics.median(v["rps"])),
            "rps_min": round(min(v["rps"])), "rps_max": round(max(v["rps"])),
            "cpu_us_per_req": round(statistics.median(v["cpu_us"]), 1),
            "p50_us": med(v["open"], "p50"), "p99_us": med(v["open"], "p99"),
            "p999_us": med(v["open"], "p999"),
            "p99_rounds_us": [x["p99"] for x in v["open"]],
            "open_errors": sum(x["status_errors"] + x["socket_errors"] for x in v["open"]),
            "open_sent_per_s": med(v["open"], "rate_achieved"),
            "loadgen_p50_us": med(v["loadgen"], "p50"), "loadgen_p99_us": med(v["loadgen"], "p99"),
            "loadgen_errors": sum(x["errors"] for x in v["loadgen"]),
            "wrk_errors": v["errors"],
            "peak_rss_mib": v["peak_rss_mib"], "processes": v["processes"],
        }
    return rows


def ratios(rows):
    """The arm against each peer on the protocol they share, and against the best peer."""
    out = {}
    for peer, proto in (("fastapi", "predict"), ("mlserver", "oip"), ("mlserver_pw0", "oip")):
        a, p = rows[f"arm {proto}"], rows[f"{peer} {proto}"]
        out[f"arm {proto} vs {peer}"] = {
            "rps_x": round(a["rps_median"] / p["rps_median"], 1),
            "cpu_x_less": round(p["cpu_us_per_req"] / a["cpu_us_per_req"], 1),
            "p99_x_lower": round(p["p99_us"] / a["p99_us"], 1) if a["p99_us"] else None,
            "rss_x_less": round(p["peak_rss_mib"] / a["peak_rss_mib"], 1),
        }
    return out


def markdown(report):
    rate = report["rate"]
    lines = [
        f"Run {report['date']} on {report['machine']} (shared with other work: compiles were "
        f"running); model `{ARM}`; every server on both cores (arm `workers = 2`, uvicorn "
        f"`--workers 2`, MLServer `parallel_workers: 2`; `mlserver_pw0` is MLServer with `parallel_workers: 0`). Closed loop `wrk -t2 -c50`, "
        f"{report['duration_s']} s x {report['rounds']} rounds interleaved; fixed rate "
        f"{rate} req/s with wrk + openloop.lua ({report['connections']} connections, latency "
        f"from the intended send time), median over the rounds; CPU = the server's processes.",
        "",
        f"| server | protocol | req/s median (min-max) | CPU us/req | p50 / p99 / p99.9 us @ {rate}/s "
        f"| loadgen p50 / p99 us @ {rate}/s | peak RSS MiB (processes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, r in report["rows"].items():
        server, proto = cell.split()
        lg = (f"{r['loadgen_p50_us']} / {r['loadgen_p99_us']}"
              if r["loadgen_p50_us"] is not None else "-")
        lines.append(f"| {server} | {'/predict' if proto == 'predict' else 'OIP v2'} "
                     f"| {r['rps_median']} ({r['rps_min']}-{r['rps_max']}) | {r['cpu_us_per_req']} "
                     f"| {r['p50_us']} / {r['p99_us']} / {r['p999_us']} | {lg} "
                     f"| {r['peak_rss_mib']} ({r['processes']}) |")
    lines += ["", "| arm vs | req/s | CPU per request | p99 @ fixed rate | peak RSS |",
              "|---|---|---|---|---|"]
    for k, v in report["ratios"].items():
        lines.append(f"| {k.split(' vs ')[1]} ({k.split()[1]}) | {v['rps_x']}x more "
                     f"| {v['cpu_x_less']}x less | {v['p99_x_lower']}x lower | {v['rss_x_less']}x less |")
    ag = report["agreement"]
    lines += ["", f"Agreement: {ag['rows']} rows, max |difference| vs the arm's /predict: " +
              ", ".join(f"{k} {v:.2g}" for k, v in ag["max_abs_diff_vs_arm_predict"].items()) +
              f" ({'all' if ag['ok'] else 'NOT all'} within {ag['tolerance']})."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--rate", type=int, help="fixed rate (default: half the slowest median)")
    ap.add_argument("--connections", type=int, default=32, help="fixed-rate connections")
    ap.add_argument("--no-loadgen", action="store_true", help="skip loadgen's /predict cross-check")
    ap.add_argument("--quick", action="store_true", help="agreement check, then 1 round of 1 s cells")
    ap.add_argument("--mlserver-python", default=os.environ.get(
        "ABGATE_MLSERVER_PYTHON", os.path.join(tempfile.gettempdir(), "abgate-mlserver", "bin", "python")))
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bins = {b: os.path.join(target, "release", b) for b in ("abgate", "loadgen")}
    missing = [p for p in bins.values() if not os.access(p, os.X_OK)]
    missing += [] if shutil.which("wrk") else ["wrk (apt-get install wrk)"]
    missing += [] if os.access(args.mlserver_python, os.X_OK) else [
        f"{args.mlserver_python} (a venv with mlserver; see benches/python_peers/README.md)"]
    if missing:
        log("missing: " + ", ".join(missing) +
            "\nbuild with: cargo build --release --locked -p abgate -p abgate-bench")
        return 2

    model = WineModel(os.path.join(ROOT, "models", ARM))
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(args, tmp)
        try:
            log("starting the arm, FastAPI and MLServer ...")
            pids = servers.start_all(bins)
            ag = agreement(servers.urls, model)
            log("agreement: " + json.dumps(ag["max_abs_diff_vs_arm_predict"]))
            if not ag["ok"]:
                log(f"FAILED: predictions differ by more than {TOLERANCE}")
                return 1
            rate, res = measure(args, bins, servers.urls, pids, model, tmp)
        finally:
            servers.stop()

    rows = summarize(res)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {os.uname().release}",
        "rounds": args.rounds, "duration_s": args.duration, "rate": rate,
        "connections": args.connections, "agreement": ag, "rows": rows,
        "ratios": ratios(rows), "raw": res,
    }
    os.makedirs(args.out, exist_ok=True)
    name = "peers-quick" if args.quick else "peers"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    errors = [c for c, r in rows.items() if r["open_errors"] or r["wrk_errors"] or r["loadgen_errors"]]
    if errors:
        log(f"FAILED: errors in {', '.join(errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
