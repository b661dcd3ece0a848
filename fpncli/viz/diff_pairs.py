"""How ``fpncli diff`` pairs the images of its two extractions.

By key (the image folder's path below its root), a folder output's keys matched to a ``--format
wds`` one's (``_canonical``), except where both sides record the input file each image was made
from (a manifest's ``input.real_path``, a wds index's ``source``: ``Extractions.source``) and an
image of A records the same file as an image of B under another key: those two are one photo and
are compared, with a note. Two runs of the same photos given in another order (``extract r1 r2``,
then ``extract r2 r1``) give the two ``q.png`` each other's keys (``q``, ``q_2``). Paths recorded
on another machine (or before the photos moved) match nothing, and key pairing stays; a pair whose
recorded inputs are two different files here is compared with a note saying so.
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
    note: str | None = None  # why these two (keys that differ), or a doubt about them


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
    """Every image of either root paired with its counterpart, in an order that reads each
    side's shards one after the other (A's storage order, then B's): a shard's member table is
    built once, not once per image. An image folder (``single``) is paired with one image of
    the other side (``_pair_single``); two image folders with each other, whatever their
    names."""
    keys_a, keys_b = found_a.keys(), found_b.keys()
    if found_a.single and found_b.single:  # both named by the user: compared as given
        note = _other_files(found_a.source(keys_a[0]), found_b.source(keys_b[0]))
        return [Pair(keys_a[0], keys_a[0], keys_b[0], note)]
    if found_a.single or found_b.single:
        return [_pair_single(found_a, found_b)]
    canon_a, canon_b = _canonical(found_a, found_b), _canonical(found_b, found_a)
    b_of = {canon_b[k]: k for k in keys_b}
    sources_a = {k: found_a.source(k) for k in keys_a}
    sources_b = {k: found_b.source(k) for k in keys_b}
    in_b = _by_source(sources_b)
    # an image of A and one of B made from the same file are one photo, whatever their keys
    same = {k: in_b[path] for path, k in _by_source(sources_a).items() if path in in_b}
    matched_b = set(same.values())
    pairs = []
    for k in keys_a:
        by_key = b_of.get(canon_a[k])
        kb = same.get(k)
        if kb is not None and kb != by_key:
            note = f"compared with B's {kb}, made from the same input, {quote_name(sources_a[k])}"
            if by_key is not None:
                note += f" (B's {by_key} was made from {_named(sources_b[by_key])})"
        elif kb is None and by_key is not None and by_key in matched_b:  # another A image's
            note = (f"B's {by_key} was made from another input, {_named(sources_b[by_key])}, "
                    "and compared with the image of A made from it")  # fmt: skip
        else:
            kb = by_key
            note = None if kb is None else _other_files(sources_a[k], sources_b[kb])
        if kb is not None:
            matched_b.add(kb)
        pairs.append(Pair(k, k, kb, note))
    rank_b = {k: i for i, k in enumerate(keys_b)}
    if found_a.format == "wds":  # A shard by shard, and within one B's shards one by one
        shard_a = {k: found_a.shard(k) for k in keys_a}
        pairs.sort(key=lambda p: (shard_a[p.key_a], rank_b.get(p.key_b, -1)))
    elif found_b.format == "wds":
        pairs.sort(key=lambda p: rank_b.get(p.key_b, -1))
    pairs += [Pair(k, None, k) for k in keys_b if k not in matched_b]
    return pairs


def _pair_single(found_a: Extractions, found_b: Extractions) -> Pair:
    """An image folder (``single``) against a root of the other side: paired with the image
    made from the same input file, else the one of its key (its folder's name), else the one
    image whose key ends in that name (``sub/a`` for ``a``); else with none, and said. Never
    with an image of another key only because the root holds one image."""
    one, other = (found_a, found_b) if found_a.single else (found_b, found_a)
    (key,) = one.keys()
    side = "B" if one is found_a else "A"  # the root's
    names = _canonical(other, one)
    target = _canonical(one, other)[key]  # as the other side spells it (wds: b%2Ev1)
    match = next((k for k in other.keys() if names[k] == target), None)
    path, note = one.source(key), None
    if path is not None and (match is None or other.source(match) != path):
        by_source = _by_source({k: other.source(k) for k in other.keys()}).get(path)
        if by_source is not None and by_source != match:
            match = by_source
            note = f"compared with {side}'s {match}, made from the same input, {quote_name(path)}"
    if match is None:
        ends = [k for k in other.keys() if names[k].rsplit("/", 1)[-1] == target]
        match = ends[0] if len(ends) == 1 else None
    if match is None:
        note = (f"{side} holds no image {target} nor one made from its input: to compare it "
                f"with another image, give that image's folder as {side}")  # fmt: skip
    elif note is None:
        sources = (path, other.source(match))
        note = _other_files(*(sources if one is found_a else sources[::-1]))
    return Pair(key, key, match, note) if one is found_a else Pair(key, match, key, note)


def _by_source(sources: dict[str, str | None]) -> dict[str, str]:
    """Recorded input -> key, for each input that one image only records."""
    counts = collections.Counter(path for path in sources.values() if path)
    return {path: k for k, path in sources.items() if path and counts[path] == 1}


def _named(path: str | None) -> str:
    return "an input it does not record" if path is None else quote_name(path)


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
    return f"made from different files: {quote_name(path_a)} in A, {quote_name(path_b)} in B"
