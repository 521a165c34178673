"""Networks only: explicit constructor arguments, never a whole ConfigDict.

Stage 2 (TECO): `layers` (norms, ResNet blocks, position biases), `quantizer` (factorised l2
codebook, shared with the VQ-GAN), `transformer` (the authors' Transformer with a key/value-cached
incremental path), `maskgit` (MaskGit prior and its training-mask sampler), `teco` (the network and
its loss). Stage 1: `vqgan`, `discriminator`.
"""
