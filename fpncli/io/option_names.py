"""How the library's messages name what the user can change to get past a limit: the CLI's
options (``--max-pixels``) or the keyword arguments of ``fpncli.extract`` (``max_pixels``).
Here, not in ``preprocess``, so that ``canvas`` (which ``preprocess`` imports) names them too."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OptionNames", "CLI_NAMES", "API_NAMES"]


@dataclass(frozen=True)
class OptionNames:
    """How a message names what the user can change to get past a limit: the CLI's options
    (``CLI_NAMES``, the default) or the keyword arguments of ``fpncli.extract`` (``API_NAMES``)."""

    max_pixels: str
    min_size: str
    max_size: str
    no_resize: str  # what turns the resize off
    canvas_auto: str  # what picks the canvas from the resize's sizes

    @property
    def sizes(self) -> str:
        """Both sizes, as in "lower --min-size/--max-size"."""
        return f"{self.min_size}/{self.max_size}"


CLI_NAMES = OptionNames("--max-pixels", "--min-size", "--max-size", "--no-resize", "--canvas auto")
API_NAMES = OptionNames("max_pixels", "min_size", "max_size", "resize=False", 'canvas="auto"')
