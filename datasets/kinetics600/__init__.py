"""The authors' Kinetics-600 release as a TFDS data set (see kinetics600_dataset_builder.py)."""
