"""An image TARGET of ``fpncli show``, extracted on the fly into a ``Source`` (nothing written
but the picture), and the checks that refuse one that is no photo: fpncli's own pictures, files
Pillow cannot open, decompression bombs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ..io.manifest import MANIFEST
from ..io.messages import quote_name
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..weights.hub import LoggedProgress
from .sources import Source

__all__ = ["PHOTO_SIZE", "check_image", "check_not_drawn", "from_image"]

#: The resize of a photo ``show`` extracts on the fly (``min_size``, ``max_size``): Detectron2's
#: test-time resize, extract's defaults (the tests make it smaller).
PHOTO_SIZE = (800, 1333)


def from_image(path: Path, weights: str, device: str, max_pixels: int,
                download_progress=LoggedProgress) -> Source:  # fmt: skip
    from ..api import extract, load_backbone, resolve_device
    from ..io.image_load import load_image
    from ..io.jobs import image_stem

    model = load_backbone(weights, device=resolve_device(device),
                          download_progress=download_progress)  # fmt: skip
    min_size, max_size = PHOTO_SIZE
    result = extract(load_image(path, max_pixels=max_pixels), model, min_size=min_size,
                     max_size=max_size)  # fmt: skip
    prepared = result.prepared
    return Source(
        {k: v.numpy() for k, v in result.features.items()},
        result.image.rgb,
        (prepared.resized_height, prepared.resized_width),
        (prepared.scale_y, prepared.scale_x),
        model.weights_info.random,
        path.stem,
        Path(f"fpn_show_{image_stem(path)}"),  # a.jpg and a.png beside it: a_jpg, a_png
        photo=path.name,
        weights_name=model.weights_info.name,
    )


#: A level's picture extract writes in an image's folder (``p3.png``, ``p3_overlay.png``), or
#: show's (``show_p3.png``, ``show_p3_pca_overlay.png``, ``show_all.png``): group 1 is the level.
_LEVEL_PICTURE = re.compile(r"^(?:show_)?(p[2-6]|stem|res[2-5]|all)[_.]")


def check_not_drawn(path: Path) -> None:
    """Refuse an image TARGET that is one of fpncli's outputs (a level's heatmap or overlay, an
    overview, show's or the report's pictures), as ``extract`` refuses outputs as inputs
    (``io.inputs.output_root``): the network would run on a picture of maps. A ValueError, one
    line saying what to run instead: for a picture show left in the current folder
    (``fpn_show_*.png``), the photo or extraction it was drawn from; ``fpncli show FOLDER
    --level LEVEL`` for a picture in an image's folder (the level its name gives, ``all`` for
    the overview); for a picture of a report's (its pictures folder holds ``REPORT_MARKER``) or
    of diff's (``DIFF_MARKER``), which command drew it; else, which output folder it lies in."""
    from ..io.inputs import output_root
    from ..io.markers import DIFF_MARKER, REPORT_MARKER
    from ..io.pillow_open import pillow_extensions

    if path.suffix.lower() not in pillow_extensions():  # (not an image: check_image says so)
        return
    root = output_root(path)
    if root is None:
        return
    if root == Path(os.path.realpath(path)):  # a picture show left in a folder (fpn_show_*.png)
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli show drew, not a photo (extract skips "
            "it too): show the photo or the extraction it was drawn from instead"
        )
    folder = path.parent
    if (folder / MANIFEST).is_file():  # an image's folder: draw its extraction
        name = path.name.casefold()
        found = _LEVEL_PICTURE.match(name)
        level = "all" if name == "overview.png" else found[1] if found else None
        what = {None: "that extraction", "all": "all levels of that extraction"}.get(
            level, f"{level} of that extraction"
        )
        again = f" --level {level}" if level else ""
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli drew, not a photo; to draw {what}: "
            f"fpncli show {shlex.quote(str(folder))}{again}"
        )
    # marked_root also stops at a report's pictures or diff's folder, which hold no extraction
    shown = quote_name(os.path.relpath(root))
    if (root / REPORT_MARKER).is_file():  # OUT/report/: a report's assets, in the folder it read
        above = os.path.relpath(root.parent)
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli report drew for the report of "
            f"{quote_name(above)}, not a photo (extract skips it too; fpncli report "
            f"{shlex.quote(above)} rewrites it): show an extraction folder in {quote_name(above)} "
            "instead"
        )
    if (root / DIFF_MARKER).is_file():
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli diff drew (in {shown}), not a photo "
            "(extract skips it too): show an extraction folder instead"
        )
    raise ValueError(
        f"{quote_name(str(path))} is a file of the fpncli output folder {shown}: not a photo "
        "(extract skips it too); name an extraction folder in it, or a photo outside it"
    )


def check_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse a TARGET that is not an image Pillow can open (a list, a text file...), a FIFO
    (never waited for) and a decompression bomb, as ``extract`` does
    (``pillow_open.open_image``)."""
    from PIL import Image, UnidentifiedImageError

    from ..io.pillow_open import open_image, pillow_extensions

    if path.suffix.lower() not in pillow_extensions():  # read when named, as extract does
        raise ValueError(
            f"{path} is not an image, an output folder or a p*.npy file; "
            "to extract a list of files, use fpncli extract --from-list"
        )
    try:
        with open_image(path, max_pixels):
            pass
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: refused as a decompression bomb") from None
    except UnidentifiedImageError:  # its text names an open file object, not the path
        raise ValueError(f"{path} is not an image Pillow can read") from None
    except OSError as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e})") from None
