"""teco: TECO (Temporally Consistent Transformers) video prediction in JAX / Flax NNX."""
from flax import nnx as _nnx

# Parameters carry logical axis names; shardings are derived from them explicitly
# (eval_shape -> shardings -> jit(init, out_shardings)), never eagerly at construction.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
