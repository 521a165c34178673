"""Stage 1 (VQ-GAN) on habitat: 128x128 frames -> 16x16 codes.

    python -m teco.train --config=configs/habitat_vqgan.py --workdir=workdirs/habitat/vqgan
"""
from configs.vqgan_model import published_vqgan


def get_config(arg=None):
    return published_vqgan("habitat", arg, image_size=128, n_codes=8192, ch_mult=(1, 1, 2, 2), has_actions=True)
