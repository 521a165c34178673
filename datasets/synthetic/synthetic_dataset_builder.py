"""TFDS builder `synthetic`: procedural videos with actions (see generate.py).

Build (any frame size; the tiny configs use 16x16):

    python -m datasets.build synthetic --data_dir=data/tfds --image_size=16 \
        --episodes_train=16 --episodes_test=4 --length=24
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from datasets.local_build import SaysWhatItBuilds
from datasets.synthetic import generate


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    image_size: int = 16
    length: int = 24
    episodes_train: int = 16
    episodes_test: int = 4
    seed: int = 0


def config_name(image_size: int, length: int, episodes_train: int, episodes_test: int, seed: int) -> str:
    return f"s{image_size}_t{length}_n{episodes_train}-{episodes_test}_seed{seed}"


def make_config(image_size=16, length=24, episodes_train=16, episodes_test=4, seed=0) -> SyntheticConfig:
    return SyntheticConfig(
        name=config_name(image_size, length, episodes_train, episodes_test, seed),
        image_size=image_size, length=length, episodes_train=episodes_train,
        episodes_test=episodes_test, seed=seed)


class Synthetic(SaysWhatItBuilds, tfds.core.GeneratorBasedBuilder):
    SOURCE = "procedural videos generated here"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [make_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description="Procedural videos of a walk over a fixed 2-D world, with actions.",
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(None, s, s, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "actions": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "positions": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {"train": self._generate_examples("train", c.episodes_train),
                "test": self._generate_examples("test", c.episodes_test)}

    def _generate_examples(self, split: str, n: int):
        c = self.builder_config
        offset = 0 if split == "train" else 1_000_000
        for i in range(n):
            yield f"{split}_{i:06d}", generate.episode(
                c.seed * 10_000_019 + offset + i, length=c.length, image_size=c.image_size)


def make_builder(data_dir: str, **config_kwargs) -> Synthetic:
    config = make_config(**config_kwargs)
    known = {c.name for c in Synthetic.BUILDER_CONFIGS}
    # TFDS refuses a custom config object named like a listed one; pass the name instead.
    return Synthetic(config=config.name if config.name in known else config, data_dir=data_dir,
                     file_format="array_record")
