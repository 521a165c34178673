"""A TFDS builder over the authors' released videos, as they are on disk.

The release (given as TFDS's manual-download directory) is laid out as
`<manual_dir>/{train,test}/<shard>/*.npz` (keys `video` uint8 THWC, `actions` int T) or as
`*.mp4` with an optional sibling `.npz` holding `actions`. Each file becomes one example
{video uint8 [T,S,S,3], actions int32 [T], source (the file's path under manual_dir)}.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from teco import video_io


class VideoReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
