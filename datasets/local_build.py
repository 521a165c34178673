"""What a build prints: TFDS announces every build as a download ("Downloading and preparing
dataset Unknown size (download: Unknown size, ...)"), which these builders never do."""
from __future__ import annotations


class SaysWhatItBuilds:
    """Mixin for a tfds builder: its start and end lines name where the examples come from."""

    SOURCE = "generated here"   # what the examples are made from; nothing is downloaded

    def _build_name(self) -> str:
        config = getattr(self, "builder_config", None)
        return f"{self.name}/{config.name}" if config is not None else self.name

    def _log_download_bytes(self) -> None:
        print(f"building {self._build_name()} ({self.SOURCE}; nothing is downloaded) "
              f"in {self.data_dir} ...", flush=True)

    def _log_download_done(self) -> None:
        print(f"built {self._build_name()} in {self.data_dir}", flush=True)
