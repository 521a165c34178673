"""Launchers for teco training at scale: TPU VMs / pod slices (`tpu_vm`) and SLURM GPU clusters
(`slurm`). Both compute and check a `plan.Plan` before they create or submit anything."""
