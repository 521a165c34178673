"""Wrappers around the trainer's data iterator, for tests that interrupt or alter training."""


class Preempted(Exception):
    """Raised by `StopAfter` where a preempted machine would have died."""


class Wrapped:
    """Passes everything through to the wrapped `teco.data.BatchIterator` (position included)."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)

    def __getattr__(self, name):  # anything else the trainer reads (e.g. `skipped`)
        return getattr(self.it, name)


class StopAfter(Wrapped):
    """Raises `Preempted` when asked for batch n_batches + 1."""

    def __init__(self, it, n_batches: int):
        super().__init__(it)
        self.left = n_batches

    def __next__(self):
        if self.left == 0:
            raise Preempted()
        self.left -= 1
        return next(self.it)


def wrapping_training(make_iterator, wrap):
    """A `teco.data.make_iterator` whose training stream (not evaluation) is `wrap(it)`."""

    def make(config, mesh, *, split, train, **kwargs):
        it = make_iterator(config, mesh, split=split, train=train, **kwargs)
        is_train = split == config.data.train_split and train and "seed" not in kwargs
        return wrap(it) if is_train else it

    return make
