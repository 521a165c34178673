"""Builds a data set into a TFDS directory (array_record), with one clear message on bad input.

    python -m datasets.build synthetic   --data_dir=data/tfds [--image_size=16 --length=24 ...]
    python -m datasets.build dmlab       --data_dir=data/tfds --manual_dir=/path/to/release
    python -m datasets.build minecraft   --data_dir=data/tfds --manual_dir=/path/to/release
    python -m datasets.build habitat     --data_dir=data/tfds --manual_dir=/path/to/release
    python -m datasets.build kinetics600 --data_dir=data/tfds --manual_dir=/path/to/release
    python -m datasets.build memory_maze --data_dir=data/tfds --config=small
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RELEASES = ("dmlab", "minecraft", "habitat", "kinetics600")


def build_release(name: str, data_dir: str, manual_dir: str, on_bad_file: str = "error"):
    import tensorflow_datasets as tfds

    from datasets.video_release import RELEASES as builders
    from teco.video_io import DataError

    # Checked here: TFDS reports a missing or empty manual_dir with an AssertionError.
    release = Path(manual_dir)
    if not release.is_dir():
        raise DataError(f"--manual_dir {manual_dir} does not exist (the authors' {name} release)")
    if not any((release / split).is_dir() for split in ("train", "test")):
        raise DataError(f"--manual_dir {manual_dir} has no train/ or test/ directory: expected "
                        f"the authors' {name} release as <manual_dir>/{{train,test}}/<shard>/*")
    cls = builders[name]
    cls.on_bad_file = on_bad_file
    builder = cls(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["synthetic", "memory_maze", *RELEASES])
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--manual_dir", help="the authors' release (for dmlab/minecraft/habitat/kinetics600)")
    p.add_argument("--on_bad_file", choices=["error", "skip"], default="error")
    p.add_argument("--config", default="small", help="memory_maze builder config")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--episodes_train", type=int, default=16)
    p.add_argument("--episodes_test", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        for flag in ("image_size", "length", "episodes_train", "episodes_test"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        if Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data_dir {args.data_dir} is a file, not a directory")
        if args.name == "synthetic":
            from datasets.synthetic import synthetic_dataset_builder as synth

            builder = synth.make_builder(args.data_dir, image_size=args.image_size, length=args.length,
                                         episodes_train=args.episodes_train,
                                         episodes_test=args.episodes_test, seed=args.seed)
            builder.download_and_prepare()
        elif args.name == "memory_maze":
            from datasets.memory_maze import memory_maze_dataset_builder as maze

            builder = maze.build(args.data_dir, args.config)
        else:
            if not args.manual_dir:
                raise ValueError(f"{args.name} is built from the authors' release: pass "
                                 "--manual_dir")
            builder = build_release(args.name, args.data_dir, args.manual_dir, args.on_bad_file)
    except (ValueError, OSError) as e:  # bad data (DataError) or config: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"built {builder.name} at {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
