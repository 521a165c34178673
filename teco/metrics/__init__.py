"""Evaluation metrics: per-frame PSNR / SSIM / LPIPS (`image`) and FVD from I3D features (`fvd`)."""
from teco.metrics.fvd import (I3D, MIN_FRAMES, feature_statistics, frechet_distance, fvd_chunked,
                              fvd_from_features, load_i3d_variables, preprocess)
from teco.metrics.image import LPIPS, frame_metrics, psnr, quantize, ssim

__all__ = [
    "I3D", "LPIPS", "MIN_FRAMES", "feature_statistics", "frame_metrics", "frechet_distance",
    "fvd_chunked", "fvd_from_features", "load_i3d_variables", "preprocess", "psnr", "quantize", "ssim",
]
