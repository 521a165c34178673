"""TFDS builder `dmlab`: the authors' DMLab-40k videos (64x64), read from the release as it is.

    python -m datasets.build dmlab --data_dir=data/tfds --manual_dir=/path/to/dmlab_release

where the release directory holds {train,test}/<shard>/*.npz (or *.mp4 with sibling .npz actions).
"""
from datasets.video_release import VideoReleaseBuilder


class Dmlab(VideoReleaseBuilder):
    IMAGE_SIZE = 64
    HAS_ACTIONS = True
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the authors' dmlab release under <manual_dir>/{train,test}/<shard>/ as .npz files "
        "(keys video, actions) or .mp4 files with an optional sibling .npz holding actions.")
