"""How ``fpncli diff`` pairs the images of its two extractions: by key (the image folder's path
below its root), a folder output's keys matched to a ``--format wds`` one's."""

from __future__ import annotations

import collections
from pathlib import PurePosixPath

from ..io.catalog import Extractions
from ..io.messages import utf8_text

__all__ = ["pair_images"]


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


def pair_images(
    found_a: Extractions, found_b: Extractions
) -> list[tuple[str, str | None, str | None]]:
    """(key, key in A, key in B) for every image of either root, in an order that reads each
    side's shards one after the other (A's storage order, then B's): a shard's member table is
    built once, not once per image."""
    keys_a, keys_b = found_a.keys(), found_b.keys()
    if found_a.single or found_b.single:  # an image folder against one image of the other side
        single = keys_a[0] if found_a.single else keys_b[0]
        other = keys_b if found_a.single else keys_a
        match = other[0] if len(other) == 1 else (single if single in other else None)
        return [(single, single, match) if found_a.single else (single, match, single)]
    canon_a, canon_b = _canonical(found_a, found_b), _canonical(found_b, found_a)
    b_of = {canon_b[k]: k for k in keys_b}
    rank_b = {k: i for i, k in enumerate(keys_b)}
    matched_b = set()
    pairs = []
    for k in keys_a:
        kb = b_of.get(canon_a[k])
        matched_b.add(kb)
        pairs.append((k, k, kb))
    if found_a.format == "wds":  # A shard by shard, and within one B's shards one by one
        shard_a = {k: found_a.shard(k) for k in keys_a}
        pairs.sort(key=lambda p: (shard_a[p[0]], rank_b.get(p[2], -1)))
    elif found_b.format == "wds":
        pairs.sort(key=lambda p: rank_b.get(p[2], -1))
    pairs += [(k, None, k) for k in keys_b if k not in matched_b]
    return pairs
