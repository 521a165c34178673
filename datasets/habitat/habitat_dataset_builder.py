"""TFDS builder `habitat`: the authors' Habitat-200k videos (128x128), read from the release as it is.

    python -m datasets.build habitat --data_dir=data/tfds --manual_dir=/path/to/habitat_release

where the release directory holds {train,test}/<shard>/*.npz (or *.mp4 with sibling .npz actions).
"""
from datasets.video_release import VideoReleaseBuilder


class Habitat(VideoReleaseBuilder):
    IMAGE_SIZE = 128
    HAS_ACTIONS = True
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the authors' habitat release under <manual_dir>/{train,test}/<shard>/ as .npz files "
        "(keys video, actions) or .mp4 files with an optional sibling .npz holding actions.")
