"""TFDS builders of the data sets teco trains on (one sub-package each).

Build any of them with `python -m datasets.build NAME --data_dir=...` (see each builder's
docstring for its own inputs).
"""
