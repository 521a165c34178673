"""The authors' Minecraft-200k release as a TFDS data set (see minecraft_dataset_builder.py)."""
