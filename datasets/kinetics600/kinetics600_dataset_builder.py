"""TFDS builder `kinetics600`: the authors' Kinetics-600 videos (128x128), read from the release as it is.

    python -m datasets.build kinetics600 --data_dir=data/tfds --manual_dir=/path/to/kinetics600_release

where the release directory holds {train,test}/<shard>/*.npz (or *.mp4 with sibling .npz actions).
"""
from datasets.video_release import VideoReleaseBuilder


class Kinetics600(VideoReleaseBuilder):
    IMAGE_SIZE = 128
    HAS_ACTIONS = False
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the authors' kinetics600 release under <manual_dir>/{train,test}/<shard>/ as .npz files "
        "(keys video, actions) or .mp4 files with an optional sibling .npz holding actions.")
