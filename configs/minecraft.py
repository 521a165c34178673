"""Stage 2 (TECO) on Minecraft-200k: the published configuration.

    python -m teco.train --config=configs/minecraft.py --workdir=workdirs/minecraft/teco \
        --config.vqvae_ckpt=workdirs/minecraft/vqgan
"""
from configs import common, teco_model


def get_config(arg=None):
    c = common.base_config("teco")
    c.data = common.data_config("minecraft", image_size=128)
    teco_model.teco_model_config(c)
    c.data.source = "codes"
    c.data.data_dir = "data/codes/minecraft"
    c.image_size = 128
    c.encoder.blocks = 4
    c.decoder.blocks = 6
    c.z_ds = 8
    c.z_tfm_kwargs.num_layers = 12
    c.z_git.tfm_kwargs.update(dict(embed_dim=768, mlp_dim=3072, num_heads=12, num_layers=6))
    c.embedding_dim = 128
    c.dropout_actions = False
    return common.finish(c, arg, teco_model.tiny_teco)
