"""Shared pieces of the HTTP benchmarks: the servers under test (fhirlake and the peer
FHIR server, Helios `helios-hfs`), the load client, generated data and peak memory.

Helios is built once with `cargo install --locked helios-hfs@0.2.7` into a cache folder
outside the repository (`$FHIRLAKE_BENCH_CACHE`, default /var/tmp/fhirlake-bench-cache;
about 40 minutes on 2 cores). --quick runs never build it: they use it only if it is
already there.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FHIRLAKE_BENCH_CACHE", "/var/tmp/fhirlake-bench-cache"))
HELIOS_VERSION = "0.2.7"
HELIOS_ROOT = CACHE / "helios"
HELIOS_BIN = HELIOS_ROOT / "bin" / "hfs"
# The R4 SearchParameter bundle fhirlake itself ships (gzip).
SEARCH_PARAMETERS = ROOT / "schemas" / "definitions" / "search-parameters.json.gz"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_with_headers(method, url, body=None, headers=None, timeout=600):
    """(status, parsed JSON or text, response headers with lower-case names) of one request."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Accept": "application/fhir+json", **(headers or {})})
    if data is not None:
        req.add_header("Content-Type", "application/fhir+json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, {k.lower(): v for k, v in e.headers.items()}
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def http(method, url, body=None, headers=None, timeout=600):
    """(status, parsed JSON or text) of one request."""
    status, parsed, _ = http_with_headers(method, url, body, headers, timeout)
    return status, parsed


def peak_rss_mib(pid):
    """Peak resident memory (VmHWM) of a running process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Server:
    """A FHIR server process on loopback; `base` is its FHIR base URL."""

    name = "?"

    def __init__(self):
        self.proc = None
        self.base = None
        self.log = None

    def wait_ready(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited at start-up; log: {self.log}\n{Path(self.log).read_text()[-3000:]}")
            try:
                status, _ = http("GET", f"{self.base}/metadata", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"{self.name} did not answer /metadata within {timeout} s; log: {self.log}")

    def peak_rss_mib(self):
        return peak_rss_mib(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Fhirlake(Server):
    name = "fhirlake"

    def __init__(self, binary, data, extra=()):
        super().__init__()
        port = free_port()
        self.log = str(Path(data).parent / f"fhirlake-{port}.log")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}", *extra],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG=os.environ.get("FHIRLAKE_BENCH_LOG", "warn")))
        self.base = f"http://127.0.0.1:{port}/fhir"
        self.wait_ready()


class Helios(Server):
    name = "helios"

    def __init__(self, binary, workdir, extra_env=None):
        super().__init__()
        workdir = Path(workdir)
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        with gzip.open(SEARCH_PARAMETERS, "rb") as src, open(data / "search-parameters-r4.json", "wb") as dst:
            shutil.copyfileobj(src, dst)
        port = free_port()
        self.log = str(workdir / "helios.log")
        self.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, HFS_DATA_DIR=str(data), HFS_DATABASE_URL=str(workdir / "hfs.db"),
                   DATABASE_URL=str(workdir / "hfs.db"), HFS_UI_ENABLED="false", HFS_BASE_URL=self.base,
                   HFS_LOG_LEVEL="warn", HFS_REQUEST_TIMEOUT="600", **(extra_env or {}))
        self.proc = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--port", str(port)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.wait_ready()


def helios_binary(build):
    """(path, None) when Helios is available, else (None, why not). Builds it when asked."""
    if HELIOS_BIN.exists():
        return HELIOS_BIN, None
    if not build:
        return None, f"not built (run a full-size benchmark once to build it into {HELIOS_ROOT}, ~40 min)"
    if not SEARCH_PARAMETERS.exists():
        return None, f"{SEARCH_PARAMETERS} is missing (Helios needs the R4 SearchParameter bundle)"
    if shutil.which("cargo") is None:
        return None, "cargo is not installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "helios-build.log"
    print(f"building Helios helios-hfs@{HELIOS_VERSION} into {HELIOS_ROOT} (once; ~40 min on 2 cores; log {log})", flush=True)
    with open(log, "w") as f:
        p = subprocess.run(["cargo", "install", "--locked", f"helios-hfs@{HELIOS_VERSION}", "--root", str(HELIOS_ROOT),
                            "--target-dir", str(CACHE / "helios-target")], stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0 or not HELIOS_BIN.exists():
        return None, f"cargo install failed (exit {p.returncode}); see {log}"
    return HELIOS_BIN, None


def loadgen_binary(quick):
    """The load client: the debug build CI made (--quick), else a release build."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/fhirlake-target"))
    if quick:
        b = target / "debug" / "loadgen"
        if not b.exists():
            subprocess.run(["cargo", "build", "-q", "-p", "fhirlake-loadgen"], cwd=ROOT, check=True)
        return b
    release = Path(os.environ.get("FHIRLAKE_RELEASE_TARGET_DIR", "/var/tmp/fhirlake-release"))
    subprocess.run(["cargo", "build", "-q", "--release", "--locked", "-p", "fhirlake-loadgen"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=str(release)))
    return release / "release" / "loadgen"


def loadgen(binary, base, *, method="GET", paths=(), paths_file=None, bodies_file=None, concurrency=8,
            duration=10.0, requests=None, headers=()):
    """Runs the load client; returns its JSON summary."""
    cmd = [str(binary), "--target", base, "--method", method, "--concurrency", str(concurrency), "--duration", str(duration)]
    for p in paths:
        cmd += ["--path", p]
    if paths_file:
        cmd += ["--paths-file", str(paths_file)]
    if bodies_file:
        cmd += ["--bodies-file", str(bodies_file)]
    if requests is not None:
        cmd += ["--requests", str(requests)]
    for h in headers:
        cmd += ["--header", h]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"loadgen failed: {p.stderr}")
    return json.loads(p.stdout)


def generate(binary, patients, out, fmt="ndjson", seed=1):
    """`fhirlake generate`; returns the resource count it printed."""
    p = subprocess.run([str(binary), "generate", "--patients", str(patients), "--seed", str(seed), "--out", str(out),
                        "--format", fmt, "--no-progress"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"fhirlake generate failed: {p.stderr}")
    last = p.stderr.strip().splitlines()[-1]
    return int(last.split()[1])


def ratio(a, b):
    """a / b as text, or '-' when either is missing."""
    if a is None or b is None or b == 0 or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def table(title, rows, columns):
    """Prints a Markdown table: rows are lists of cells."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()
