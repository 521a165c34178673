"""The authors' DMLab-40k release as a TFDS data set (see dmlab_dataset_builder.py)."""
