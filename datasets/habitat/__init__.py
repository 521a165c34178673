"""The authors' Habitat-200k release as a TFDS data set (see habitat_dataset_builder.py)."""
