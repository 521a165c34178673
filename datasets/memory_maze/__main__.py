"""Builds the `memory_maze` TFDS data set.

    .venv/bin/python -m datasets.memory_maze --data_dir=data/tfds --config=small [--workers=2]

Writes <data_dir>/memory_maze/<config>/1.0.0/ (array_record shards + dataset_info.json).
Imports stay inside main(): spawned rendering workers re-import this module as __mp_main__ and
must not import tensorflow_datasets.
"""
import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/tfds")
    parser.add_argument("--config", default="small",
                        help="default, small, revisits, spins, revisits32 or tiny")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes (default: one per CPU core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from datasets.memory_maze import memory_maze_dataset_builder as builder_lib

    try:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        if Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data_dir {args.data_dir} is a file, not a directory")
        builder = builder_lib.build(args.data_dir, args.config, workers=args.workers)
    except (ValueError, OSError) as e:  # unknown config, unwritable data_dir: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = builder.info
    splits = ", ".join(f"{name} {split.num_examples} episodes"
                       for name, split in info.splits.items())
    print(f"built {info.full_name} at {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
