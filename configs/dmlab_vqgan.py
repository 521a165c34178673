"""Stage 1 (VQ-GAN) on dmlab: 64x64 frames -> 16x16 codes.

    python -m teco.train --config=configs/dmlab_vqgan.py --workdir=workdirs/dmlab/vqgan
"""
from configs.vqgan_model import published_vqgan


def get_config(arg=None):
    return published_vqgan("dmlab", arg, image_size=64, n_codes=1024, ch_mult=(1, 2, 2), has_actions=True)
