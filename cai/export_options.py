"""How to export a run: the options `cai export` takes, below the export and its card.

`card.py` reads these options to describe an export and `export.py` writes the export with
them; here they import neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cai.errors import ConfigError
from cai.filters import FilterConfig

__all__ = ["FORMATS", "STYLES", "ExportOptions"]

FORMATS = ("dpo", "sft", "hf")
STYLES = ("conversational", "standard")


@dataclass(frozen=True)
class ExportOptions:
    """How to export a run; the CLI's `export` options map one to one onto these fields."""

    fmt: str = "dpo"
    style: str = "conversational"
    sft_share: float = 0.5
    test_size: float = 0.1
    seed: int = 0
    filters: FilterConfig = field(default_factory=FilterConfig)
    # AI-feedback labels (cai label): a label run's own pairs, or --labels checking this run's.
    labels: str | Path | None = None
    min_margin: float = 0.0
    keep_inconsistent: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {self.fmt!r}")
        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {', '.join(STYLES)}, not {self.style!r}")
        if not 0 <= self.sft_share <= 1:
            raise ConfigError(f"--sft-share must be between 0 and 1, got {self.sft_share}")
        if not 0 <= self.test_size < 1:
            raise ConfigError(f"--test-size must be at least 0 and below 1, got {self.test_size}")
        if not 0 <= self.min_margin <= 0.5:
            raise ConfigError(f"--min-margin must be between 0 and 0.5, got {self.min_margin}")
