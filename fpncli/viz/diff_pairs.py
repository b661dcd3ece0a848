"""How ``fpncli diff`` pairs the images of its two extractions: by key (the image folder's path
below its root), a folder output's keys matched to a ``--format wds`` one's (``_canonical``).

A pair whose recorded inputs (a manifest's ``input.real_path``, a wds index's ``source``:
``Extractions.source``) are two different files here is still compared, with a note saying so:
its differences may be the photos' (two runs of the same photos given in another order,
``extract r1 r2`` then ``extract r2 r1``, give the two ``q.png`` each other's keys). The recorded
inputs never change which images are paired: a path may name another photo now (a file moved, a
new one put in its place), and an image whose manifest cannot be read is reported with its read
error, not as found on one side only.
"""

from __future__ import annotations

import collections
import os
from pathlib import PurePosixPath
from typing import NamedTuple

from ..io.catalog import Extractions
from ..io.messages import quote_name, utf8_text

__all__ = ["Pair", "pair_images"]


class Pair(NamedTuple):
    """One image of A and its counterpart in B (None: found on one side only)."""

    key: str  # as reported: A's key; B's for an image of B only, or against a B image folder
    key_a: str | None
    key_b: str | None
    note: str | None = None  # a doubt about the pair, or why an image folder has none


def _canonical(found: Extractions, other: Extractions) -> dict[str, str]:
    """Each image key of ``found`` -> the key it is matched by. A folder output against a
    ``--format wds`` one: the folder's keys as wds names them (``shards.wds_key``: ``b.v1`` is
    ``b%2Ev1`` in the shards), or as earlier versions did where ``other`` has that key instead
    (dots became ``_``: ``b_v1``), unless that is the key of another of ``found``'s images (the
    photo ``b_v1.jpg`` beside ``b.v1.jpg``) or two of them would take it (``x.y_z`` and
    ``x_y.z``): a key ``other`` holds is never matched by another photo's."""
    keys = found.keys()
    if found.format == other.format or found.format == "wds":
        return {k: k for k in keys}
    from ..io.shards import wds_key

    theirs = set(other.keys())
    new = {k: wds_key(k) for k in keys}
    old = {k: "/".join(utf8_text(p).replace(".", "_") for p in PurePosixPath(k).parts)
           for k in keys}  # fmt: skip
    owned = set(new.values())
    claims = collections.Counter(old.values())

    def key(k: str) -> str:
        earlier = old[k]
        if new[k] in theirs or earlier not in theirs or earlier in owned or claims[earlier] > 1:
            return new[k]
        return earlier

    return {k: key(k) for k in keys}


def pair_images(found_a: Extractions, found_b: Extractions) -> list[Pair]:
    """Every image of either root paired with its counterpart of the same key, in an order that
    reads each side's shards one after the other (A's storage order, then B's): a shard's member
    table is built once, not once per image. An image folder (``single``) is paired with one
    image of the other side (``_pair_single``); two image folders with each other, whatever their
    names."""
    keys_a, keys_b = found_a.keys(), found_b.keys()
    if found_a.single and found_b.single:  # both named by the user: compared as given
        return [_noted(found_a, keys_a[0], found_b, keys_b[0], keys_a[0])]
    if found_a.single or found_b.single:
        return [_pair_single(found_a, found_b)]
    canon_a, canon_b = _canonical(found_a, found_b), _canonical(found_b, found_a)
    b_of = {canon_b[k]: k for k in keys_b}
    pairs = [_noted(found_a, k, found_b, b_of.get(canon_a[k]), k) for k in keys_a]
    matched_b = {p.key_b for p in pairs}
    rank_b = {k: i for i, k in enumerate(keys_b)}
    if found_a.format == "wds":  # A shard by shard, and within one B's shards one by one
        shard_a = {k: found_a.shard(k) for k in keys_a}
        pairs.sort(key=lambda p: (shard_a[p.key_a], rank_b.get(p.key_b, -1)))
    elif found_b.format == "wds":
        pairs.sort(key=lambda p: rank_b.get(p.key_b, -1))
    pairs += [Pair(k, None, k) for k in keys_b if k not in matched_b]
    return pairs


def _pair_single(found_a: Extractions, found_b: Extractions) -> Pair:
    """An image folder (``single``) against a root of the other side: paired with the image of
    its key (its folder's name, as the root spells it: wds ``b%2Ev1``), else the one image whose
    key ends in that name (``sub/a`` for ``a``); else with none, and said. Never with an image
    of another key only because the root holds one image."""
    one, other = (found_a, found_b) if found_a.single else (found_b, found_a)
    (key,) = one.keys()
    side = "B" if one is found_a else "A"  # the root's
    names = _canonical(other, one)
    target = _canonical(one, other)[key]  # as the other side spells it (wds: b%2Ev1)
    match = next((k for k in other.keys() if names[k] == target), None)
    if match is None:
        ends = [k for k in other.keys() if names[k].rsplit("/", 1)[-1] == target]
        match = ends[0] if len(ends) == 1 else None
    if match is None:
        note = (f"{side} holds no image {target}: to compare it with another image, give that "
                f"image's folder as {side}")  # fmt: skip
        return Pair(key, key, None, note) if one is found_a else Pair(key, None, key, note)
    if one is found_a:
        return _noted(found_a, key, found_b, match, key)
    return _noted(found_a, match, found_b, key, key)


def _noted(
    found_a: Extractions, key_a: str, found_b: Extractions, key_b: str | None, key: str
) -> Pair:
    """The pair (``key``: as reported), with a note where its recorded inputs are two
    different files here. A source that cannot be read (``Extractions.source``: None) says
    nothing: the image's read error is reported when it is compared."""
    if key_b is None:
        return Pair(key, key_a, None)
    return Pair(key, key_a, key_b, _other_files(found_a.source(key_a), found_b.source(key_b)))


def _other_files(path_a: str | None, path_b: str | None) -> str | None:
    """The note of two images compared although their recorded inputs are two different files
    here; None where they are the same file, or a path names no file here (recorded on another
    machine, or the photos moved since: it says nothing about the photo)."""
    if not path_a or not path_b or path_a == path_b:
        return None
    try:
        if os.path.samefile(path_a, path_b):
            return None
    except (OSError, ValueError):
        return None
    return (f"made from different files: {quote_name(path_a)} in A, {quote_name(path_b)} in B; "
            "its differences may be the photos', not the extractions'")  # fmt: skip
