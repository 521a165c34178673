"""`python -m teco.train` that stops like a preempted machine (used by tests/multihost_test.py).

    python tests/multihost_worker.py <teco.train flags>

Same flags and code path as `python -m teco.train`; when TECO_TEST_STOP_AFTER=n is set the
training iterator raises after n batches and the process exits with code 17 (every process
of a multi-process run stops at the same batch, as they run the same steps).
"""
import os
import sys

from iterators import Preempted, StopAfter, wrapping_training  # tests/ is on sys.path

EXIT_PREEMPTED = 17  # distinct from the exit codes teco.train itself uses


def _stop_training_after(n_batches: int) -> None:
    from teco import data

    data.make_iterator = wrapping_training(data.make_iterator,
                                           lambda it: StopAfter(it, n_batches))


def main() -> None:
    from absl import app

    from teco import train

    if os.environ.get("TECO_TEST_STOP_AFTER"):
        _stop_training_after(int(os.environ["TECO_TEST_STOP_AFTER"]))
    train._define_flags()
    try:
        app.run(train.main)
    except Preempted:
        print(f"preempted (TECO_TEST_STOP_AFTER={os.environ['TECO_TEST_STOP_AFTER']})",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
