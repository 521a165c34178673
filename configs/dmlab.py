"""Stage 2 (TECO) on DMLab-40k: the published configuration.

    python -m teco.train --config=configs/dmlab.py --workdir=workdirs/dmlab/teco \
        --config.vqvae_ckpt=workdirs/dmlab/vqgan
"""
from configs import common, teco_model


def get_config(arg=None):
    c = common.base_config("teco")
    c.data = common.data_config("dmlab", image_size=64)
    teco_model.teco_model_config(c)   # the published values are DMLab's
    c.data.source = "codes"
    c.data.data_dir = "data/codes/dmlab"
    return common.finish(c, arg, teco_model.tiny_teco)
