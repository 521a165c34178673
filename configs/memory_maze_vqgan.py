"""Stage 1 (VQ-GAN) on the locally generated Memory Maze set, sized for a 2-core CPU
(~2M parameters, L1 + LPIPS, dead-code restarts; the GAN term is off by default because on this
machine the time is better spent on reconstruction).

    python -m teco.train --config=configs/memory_maze_vqgan.py --workdir=workdirs/memory_maze/vqgan
"""
from configs import common, vqgan_model


def get_config(arg=None):
    c = common.base_config("vqgan")
    c.data = common.data_config("memory_maze/default", image_size=64)
    # 64x64 -> 16x16: 2x2 pixel-unshuffle, then one stride-2 level, so every convolution runs
    # at 32x32 or 16x16 (64x64 convolutions are the slow part on CPUs).
    vqgan_model.vqgan_model_config(c, image_size=64, n_codes=1024, ch=64, ch_mult=(1, 2))
    c.vqgan.patch_size = 2
    c.vqgan.num_res_blocks = 1
    c.vqgan.embedding_dim = 64
    c.loss.lpips_weight = 0.1
    c.loss.disc_start = 10**9      # no discriminator within the CPU budget
    c.batch_size = 16
    c.lr = 5e-4
    c.warmup_steps = 100
    c.total_steps = 1700            # ~30 minutes on 2 CPU cores
    c.weight_decay = 0.0
    c.log_interval = 25
    c.log_eval_interval = 250
    c.viz_interval = 500
    c.save_interval = 250
    c.save_interval_secs = 600.0
    return common.finish(c, arg, vqgan_model.tiny_vqgan)
