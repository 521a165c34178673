"""teco: TECO (Temporally Consistent Transformers) video prediction in JAX / Flax NNX."""
import os as _os

from teco import host_memory as _host_memory

# Before JAX starts its threads: see teco/host_memory.py (CPU-only hosts; TECO_MALLOC=default
# leaves glibc's defaults).
_host_memory.apply()

# TensorFlow only reads data (tfds) and writes summaries (clu) here, yet at import it prints
# INFO lines and a notice about oneDNN numerics, which concern TensorFlow's own maths that teco
# never runs; turning oneDNN off is the only switch that silences that notice. Warnings and
# errors still show. Set before any import of TensorFlow; values the user exported win.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from flax import nnx as _nnx  # noqa: E402

# Parameters carry logical axis names; shardings are derived from them explicitly
# (eval_shape -> shardings -> jit(init, out_shardings)), never eagerly at construction.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
