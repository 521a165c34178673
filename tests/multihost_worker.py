"""`python -m teco.train` that stops like a preempted machine (used by tests/multihost_test.py).

    python tests/multihost_worker.py <teco.train flags>

Same flags and code path as `python -m teco.train`; when TECO_TEST_STOP_AFTER=n is set the
training iterator raises after n batches and the process exits with code 17 (every process
of a multi-process run stops at the same batch, as they run the same steps).
"""
import os
import sys

EXIT_PREEMPTED = 17  # distinct from the exit codes teco.train itself uses


class Preempted(Exception):
    pass


class _Stopping:
    def __init__(self, it, n_batches: int):
        self.it, self.left = it, n_batches

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise Preempted()
        self.left -= 1
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)

    def __getattr__(self, name):  # anything else the trainer reads (e.g. `skipped`)
        return getattr(self.it, name)


def _stop_training_after(n_batches: int) -> None:
    from teco import data

    real = data.make_iterator

    def make(config, mesh, *, split, train, **kwargs):
        it = real(config, mesh, split=split, train=train, **kwargs)
        is_train = split == config.data.train_split and train and "seed" not in kwargs
        return _Stopping(it, n_batches) if is_train else it

    data.make_iterator = make


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
