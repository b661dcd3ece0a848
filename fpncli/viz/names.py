"""The default file names of ``fpncli show``'s pictures: one name per distinct drawing.

A picture is ``PREFIX`` (``show`` in an extraction's folder, ``fpn_show_NAME`` in the current
folder) followed by ``picture_suffix``: the level, then each option that changed what is drawn as
``_OPTIONVALUE``. The default drawing (channel 0) adds nothing, so it keeps its name
``show_p3.png``; two drawings that differ get two names, so one never replaces the other. The
colours (``--cmap``, ``--clip``, ``--scale``) are not named: the same map drawn in other colours
replaces its picture.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["picture_suffix", "MAX_NAMED_CHANNELS"]

#: ``--channels`` lists longer than this are named by their first ones, the count left and a
#: digest of the whole list (a file name holds 255 bytes: 256 channels would not fit)
MAX_NAMED_CHANNELS = 16


def _number(value: float) -> str:
    """``300.0`` -> ``300``, ``12.5`` -> ``12.5`` (never an exponent)."""
    return f"{value:.10g}"


def _channel_list(channels: Sequence[int]) -> str:
    named = ",".join(str(c) for c in channels[:MAX_NAMED_CHANNELS])
    if len(channels) <= MAX_NAMED_CHANNELS:
        return named
    digest = hashlib.sha1(",".join(str(c) for c in channels).encode()).hexdigest()[:8]
    return f"{named}+{len(channels) - MAX_NAMED_CHANNELS}-{digest}"


def picture_suffix(
    level: str | None,
    *,
    reduce: str = "channel",
    channel: int = 0,
    top: int | None = None,
    channels: Sequence[int] | None = None,
    overlay: bool = False,
    at: tuple[float, float] | None = None,
) -> str:
    """What follows a picture's prefix in its default name, ``.png`` excluded.

    ``level``: ``p3``, ``all``, a receptive field's levels joined by commas (``p3,p6``), or None
    (a ``.npy`` of unknown level: nothing). Then, as drawn: ``_top{K}`` (K the channels drawn),
    ``_channels{0,5,17}``, ``_{reduce}`` for a reduction other than ``channel``, ``_channel{N}``
    for a channel other than 0, ``_overlay``, and ``_rf_at{X},{Y}`` for a receptive field.

    >>> picture_suffix("p3"), picture_suffix("p3", reduce="pca"), picture_suffix("p3", channel=5)
    ('_p3', '_p3_pca', '_p3_channel5')
    """
    parts = [level] if level else []
    if top is not None:
        parts.append(f"top{top}")
    elif channels is not None:
        parts.append(f"channels{_channel_list(channels)}")
    elif reduce != "channel":
        parts.append(reduce)
    elif channel != 0:
        parts.append(f"channel{channel}")
    if overlay:
        parts.append("overlay")
    if at is not None:
        parts.append(f"rf_at{_number(at[0])},{_number(at[1])}")
    return "".join(f"_{part}" for part in parts)
