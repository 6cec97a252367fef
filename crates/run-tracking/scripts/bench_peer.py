"""The peer of `run-tracking bench`: TensorBoard's own event writer (a background
thread writing protobuf events, as ours does), logging `metrics_per_call` scalars per
step for `seconds`. Prints the same JSON fields: the calling thread's cost per scalar
and the scalars per second that reached the file (the writer drained).

python bench_peer.py DIR SECONDS METRICS_PER_CALL
"""

import json
import sys
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def main() -> None:
    directory, seconds, per_call = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    writer = EventFileWriter(directory, max_queue_size=16384, flush_secs=0.1)
    tags = [f"bench/metric_{k}" for k in range(per_call)]
    started = time.perf_counter()
    in_log = 0.0
    calls = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        values = [
            summary_pb2.Summary.Value(tag=tag, simple_value=calls + i * 0.5)
            for i, tag in enumerate(tags)
        ]
        writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=calls, summary=summary_pb2.Summary(value=values))
        )
        in_log += time.perf_counter() - t
        calls += 1
    logging = time.perf_counter() - started
    writer.close()
    total = time.perf_counter() - started
    scalars = calls * per_call
    print(json.dumps({
        "calls": calls,
        "scalars": scalars,
        "hot_path_ns_per_scalar": 1e9 * in_log / max(scalars, 1),
        "scalars_per_second": scalars / total,
        "logging_seconds": logging,
        "drain_seconds": total - logging,
    }))


if __name__ == "__main__":
    main()
