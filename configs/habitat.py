"""Stage 2 (TECO) on Habitat-200k: the published configuration.

    python -m teco.train --config=configs/habitat.py --workdir=workdirs/habitat/teco \
        --config.vqvae_ckpt=workdirs/habitat/vqgan
"""
from configs import common, teco_model


def get_config(arg=None):
    c = common.base_config("teco")
    c.data = common.data_config("habitat", image_size=128)
    teco_model.teco_model_config(c)
    c.data.source = "codes"
    c.data.data_dir = "data/codes/habitat"
    c.image_size = 128
    c.save_interval = 50_000
    c.encoder.blocks = 4
    c.decoder.blocks = 8
    c.z_ds = 4                          # 8x8 -> 2x2 tokens per frame
    c.z_git.tfm_kwargs.update(dict(embed_dim=1024, mlp_dim=4096, num_heads=16, num_layers=16))
    c.embedding_dim = 256
    c.codebook.n_codes = 2048
    return common.finish(c, arg, teco_model.tiny_teco)
