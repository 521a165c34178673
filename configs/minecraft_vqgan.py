"""Stage 1 (VQ-GAN) on minecraft: 128x128 frames -> 16x16 codes.

    python -m teco.train --config=configs/minecraft_vqgan.py --workdir=workdirs/minecraft/vqgan
"""
from configs.vqgan_model import published_vqgan


def get_config(arg=None):
    return published_vqgan("minecraft", arg, image_size=128, n_codes=1024, ch_mult=(1, 1, 2, 2), has_actions=True)
