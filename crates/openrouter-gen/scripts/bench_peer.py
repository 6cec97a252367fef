"""Peer of `openrouter-gen bench-client`: the same chat-completion requests from
Python's standard library (http.client, one persistent connection per thread), so the
benchmark compares our client's overhead with a minimal Python client side by side.

Usage: bench_peer.py BASE_URL REQUESTS IN_FLIGHT  -> one JSON line
"""

import http.client
import itertools
import json
import resource
import sys
import threading
import time
import urllib.parse


def main():
    base_url, requests, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    url = urllib.parse.urlparse(base_url)
    path = url.path.rstrip("/") + "/chat/completions"
    body = json.dumps({
        "model": "mock/problem-writer",
        "messages": [{"role": "user", "content": "Domain: arithmetic\nDifficulty: 1\nWrite exactly 1 new problems"}],
        "seed": 1,
    }).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    counter = itertools.count()
    errors = []

    def worker():
        connection = http.client.HTTPConnection(url.hostname, url.port)
        try:
            while next(counter) < requests:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                reply = json.loads(response.read())
                if response.status != 200 or not reply["choices"][0]["message"]["content"]:
                    raise RuntimeError(f"bad reply {response.status}")
        except Exception as error:  # reported below; the benchmark fails
            errors.append(error)
        finally:
            connection.close()

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    if errors:
        sys.exit(f"peer failed: {errors[0]}")
    print(json.dumps({
        "requests": requests,
        "in_flight": in_flight,
        "seconds": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 1),
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
    }))


if __name__ == "__main__":
    main()
