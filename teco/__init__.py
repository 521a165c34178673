"""teco: TECO (Temporally Consistent Transformers) video prediction in JAX / Flax NNX."""
import os as _os

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
