"""Stage 2 (TECO) on Kinetics-600 (no actions, 100-frame clips): the published configuration.

    python -m teco.train --config=configs/kinetics600.py --workdir=workdirs/kinetics600/teco \
        --config.vqvae_ckpt=workdirs/kinetics600/vqgan
"""
from configs import common, teco_model


def get_config(arg=None):
    c = common.base_config("teco")
    c.data = common.data_config("kinetics600", image_size=128, has_actions=False)
    teco_model.teco_model_config(c)
    c.data.source = "codes"
    c.data.data_dir = "data/codes/kinetics600"
    c.image_size = 128
    c.seq_len = 100
    c.eval_seq_len = 100
    c.save_interval = 50_000
    c.encoder.blocks = 8
    c.decoder.blocks = 10
    c.z_ds = 2                          # 8x8 -> 4x4 tokens per frame
    c.z_tfm_kwargs.update(dict(embed_dim=1536, mlp_dim=6144, num_heads=24, num_layers=24))
    c.z_git.tfm_kwargs.update(dict(embed_dim=1024, mlp_dim=4096, num_heads=16, num_layers=24))
    c.embedding_dim = 256
    c.use_actions = False
    c.dropout_actions = False
    c.open_loop_ctx = 20
    return common.finish(c, arg, teco_model.tiny_teco)
