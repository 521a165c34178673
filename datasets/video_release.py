"""TFDS builders over the authors' released videos (dmlab, minecraft, habitat, kinetics600), as on disk.

The release (given as TFDS's manual-download directory) is laid out as
`<manual_dir>/{train,test}/<shard>/*.npz` (keys `video` uint8 THWC, `actions` int T) or as
`*.mp4` with an optional sibling `.npz` holding `actions`. Each file becomes one example
{video uint8 [T,S,S,3], actions int32 [T], source (the file's path under manual_dir)}.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from datasets.local_build import SaysWhatItBuilds
from teco import video_io


class VideoReleaseBuilder(SaysWhatItBuilds, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the release builders below (one per data set, named by TFDS from the class)."""
    SOURCE = "from the release files in its manual directory"
    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SIZE = 64
    HAS_ACTIONS = True
    # 'error' stops the build naming the bad file; 'skip' leaves it out and counts it.
    on_bad_file = "error"

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.IMAGE_SIZE
        return self.dataset_info_from_configs(
            description=f"The authors' {self.name} videos ({s}x{s}).",
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(None, s, s, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "actions": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "source": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        splits = [s for s in ("train", "test") if (root / s).exists()]
        if not splits:
            raise video_io.DataError(f"{root}: no train/ or test/ directory. "
                                     + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {s: self._generate_examples(root, s) for s in splits}

    def _generate_examples(self, root, split: str):
        skipped = 0
        for path in video_io.find_videos(root, split):
            rel = str(path.relative_to(root))
            try:
                ep = video_io.load_video(path, has_actions=self.HAS_ACTIONS)
                video_io.check_episode(ep, name=str(path), image_size=self.IMAGE_SIZE, min_length=1)
            except video_io.DataError as e:
                if self.on_bad_file != "skip":
                    raise
                skipped += 1
                print(f"skipping bad file ({skipped} so far): {e}", flush=True)
                continue
            yield rel, {**ep, "source": rel}


def _instructions(name: str) -> str:
    return (f"Place the authors' {name} release under <manual_dir>/{{train,test}}/<shard>/ as "
            ".npz files (keys video, actions) or .mp4 files with an optional sibling .npz "
            "holding actions.")


class Dmlab(VideoReleaseBuilder):
    """`dmlab`: DMLab-40k, 64x64, actions.
    `python -m datasets.build dmlab --data_dir=data/tfds --manual_dir=/path/to/dmlab`"""
    IMAGE_SIZE, HAS_ACTIONS = 64, True
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("dmlab")


class Minecraft(VideoReleaseBuilder):
    """`minecraft`: Minecraft-200k, 128x128, actions.
    `python -m datasets.build minecraft --data_dir=data/tfds --manual_dir=/path/to/minecraft`"""
    IMAGE_SIZE, HAS_ACTIONS = 128, True
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("minecraft")


class Habitat(VideoReleaseBuilder):
    """`habitat`: Habitat-200k, 128x128, actions.
    `python -m datasets.build habitat --data_dir=data/tfds --manual_dir=/path/to/habitat`"""
    IMAGE_SIZE, HAS_ACTIONS = 128, True
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("habitat")


class Kinetics600(VideoReleaseBuilder):
    """`kinetics600`: Kinetics-600 .mp4 files, 128x128, no actions.
    `python -m datasets.build kinetics600 --data_dir=data/tfds --manual_dir=/path/to/kinetics`"""
    IMAGE_SIZE, HAS_ACTIONS = 128, False
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("kinetics600")


RELEASES = {"dmlab": Dmlab, "minecraft": Minecraft, "habitat": Habitat, "kinetics600": Kinetics600}
