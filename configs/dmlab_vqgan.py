"""Stage 1 (VQ-GAN) on dmlab.

    python -m teco.train --config=configs/dmlab_vqgan.py --workdir=workdirs/dmlab/vqgan
"""
from configs import common, vqgan_model


def get_config(arg=None):
    c = common.base_config("vqgan")
    c.data = common.data_config("dmlab", image_size=64, has_actions=True)
    vqgan_model.vqgan_model_config(c, image_size=64, n_codes=1024, ch_mult=(1, 2, 2))
    c.batch_size = 64
    c.lr = 1e-4
    c.warmup_steps = 5000
    c.total_steps = 300_000
    c.weight_decay = 0.0
    return common.finish(c, arg, vqgan_model.tiny_vqgan)
