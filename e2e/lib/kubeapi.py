"""The local control plane's API for the benchmarks' Python parts (e2e/bench/*.sh put this
directory on PYTHONPATH through e2e/lib/bench.sh): the kubeconfig's server and token, one
connection per thread, calls that fail loudly, watches, parallel writers, percentiles, and the
machine's description for the reports. Standard library only.
"""

import json
import os
import platform
import re
import ssl
import sys
import threading
import time
import http.client
import urllib.parse


def fatal(message):
    """Ends the whole process from any thread (SystemExit would end only the thread, quietly)."""
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


class Api:
    """The API server of a kubeconfig written by e2e/cluster (a bearer token)."""

    def __init__(self, kubeconfig, timeout=600):
        cfg = open(kubeconfig).read()
        self.server = urllib.parse.urlparse(re.search(r"server:\s*(\S+)", cfg).group(1))
        self.token = re.search(r"token:\s*(\S+)", cfg).group(1)
        self.ctx = ssl._create_unverified_context()  # a local, throwaway control plane
        self.timeout = timeout
        self.lock = threading.Lock()
        self.watch_restarts = 0

    def conn(self):
        return http.client.HTTPSConnection(self.server.hostname, self.server.port,
                                           context=self.ctx, timeout=self.timeout)

    def call(self, c, method, path, body=None, ctype="application/json", missing_ok=False):
        """One request on connection `c`; the decoded answer. Exits on an error status (a
        DELETE's 404 too, unless `missing_ok`)."""
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Authorization": "Bearer " + self.token, "Content-Type": ctype})
        r = c.getresponse()
        data = r.read()
        if r.status >= 300 and not (missing_ok and r.status == 404):
            raise SystemExit(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else {}

    def resource_version(self, path):
        """The list's current resourceVersion (to watch from)."""
        sep = "&" if "?" in path else "?"
        return self.call(self.conn(), "GET", f"{path}{sep}limit=1")["metadata"]["resourceVersion"]

    def watch(self, path, on):
        """Watches `path` from now in a daemon thread: `on(type, object, monotonic time)`. The API
        server ends a watch whose client reads too slowly; the watch is then resumed from the last
        resourceVersion seen (the events in between arrive late, so their times are too) and
        counted in `self.watch_restarts`."""
        rv = self.resource_version(path)

        def run():
            nonlocal rv
            sep = "&" if "?" in path else "?"
            while True:
                c = self.conn()
                # The server ends the watch before the socket's timeout would in a quiet spell.
                c.request("GET", f"{path}{sep}watch=1&resourceVersion={rv}&timeoutSeconds={self.timeout // 2}",
                          headers={"Authorization": "Bearer " + self.token})
                r = c.getresponse()
                if r.status != 200:
                    fatal(f"watch {path}: {r.status} {r.read()[:300]!r}")
                while True:
                    try:
                        line = r.readline()
                    except OSError:  # a timeout or a reset: resume as after the server's end
                        break
                    if not line.endswith(b"\n"):
                        break
                    ev = json.loads(line)
                    if ev["type"] == "ERROR":
                        fatal(f"watch {path}: {ev['object']}")
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    on(ev["type"], ev["object"], time.monotonic())
                c.close()
                with self.lock:
                    self.watch_restarts += 1
                print(f"watch {path} ended by the server; resumed from {rv}", file=sys.stderr)

        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.5)

    def parallel(self, fn, items, writers=8):
        """`fn(connection, item)` for every item, over `writers` threads of their own connection.
        A writer that fails (an error status raises SystemExit, which would end its thread
        quietly) fails the whole call once every writer has stopped."""
        items = list(items)
        failures = []

        def run(part):
            try:
                c = self.conn()
                for x in part:
                    fn(c, x)
            except BaseException as e:  # noqa: B036 - SystemExit too, see above
                failures.append(e)

        threads = [threading.Thread(target=run, args=(items[k::writers],)) for k in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise SystemExit(f"{len(failures)} of {writers} writers failed; the first: {failures[0]}")


def pct(xs, p):
    """The p-th percentile (nearest rank) of `xs`."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def machine():
    """The machine, for the reports."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3]}
