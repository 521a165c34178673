"""Stage 1 (VQ-GAN) on kinetics600: 128x128 frames -> 16x16 codes.

    python -m teco.train --config=configs/kinetics600_vqgan.py --workdir=workdirs/kinetics600/vqgan
"""
from configs.vqgan_model import published_vqgan


def get_config(arg=None):
    return published_vqgan("kinetics600", arg, image_size=128, n_codes=8192, ch_mult=(1, 1, 2, 2), has_actions=False)
