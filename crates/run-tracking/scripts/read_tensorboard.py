"""Reads a TensorBoard run folder with the `tensorboard` package itself and prints, per
scalar tag, how many points it holds and the first and last (step, value), as JSON.

Used by run-tracking's tests: python scripts/read_tensorboard.py RUN/tensorboard
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main() -> None:
    # size_guidance 0 keeps every scalar (the default keeps a 10,000-point reservoir).
    accumulator = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        out[tag] = {
            "count": len(events),
            "first": [events[0].step, events[0].value],
            "last": [events[-1].step, events[-1].value],
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
