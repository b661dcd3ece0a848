"""``fpncli weights``: list, download and verify the registry's checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from .common import _friendly, _sigterm_as_ctrl_c, verbose_option


@click.group()
@verbose_option
def weights() -> None:
    """The registry of named checkpoints and the local cache."""


@weights.command("list")
@verbose_option
@_friendly
def weights_list() -> None:
    """List named checkpoints, their addresses and cache state."""
    from ..weights.cache import cache_state
    from ..weights.registry import DEFAULT_WEIGHTS as default
    from ..weights.registry import REGISTRY

    for spec in REGISTRY.values():
        entry = cache_state(spec)  # size and, where known, sha256: a damaged file is not cached
        path = entry.path
        state = entry.status + (f" ({entry.detail})" if entry.detail else "")
        mark = " (default)" if spec.name == default else ""
        click.echo(f"{spec.name}{mark}: {spec.description}")
        click.echo(f"    {spec.url}")
        click.echo(
            f"    {spec.input.color_order}, stride_in_1x1={spec.arch.get('stride_in_1x1')}, "
            f"{state}: {path}"
        )
    click.echo("random: a seeded, untrained network (offline; for trying the tool)")


@weights.command("download")
@click.argument("names", nargs=-1, required=True)
@verbose_option
@_friendly
@_sigterm_as_ctrl_c  # a killed download's temporary file is removed as on Ctrl-C
def weights_download(names) -> None:
    """Download named checkpoints into the cache (checked, then renamed into place)."""
    from ..weights.cache import cached_path, verify_cached
    from ..weights.hub import download
    from ..weights.registry import get_spec
    from .download_bar import DownloadBar

    _check_names(names)  # all of them, before any download
    for name in names:
        if name == "random":
            click.echo(
                "random: nothing to download: --weights random builds a seeded, untrained "
                "network on the fly"
            )
            continue
        spec = get_spec(name)
        if cached_path(spec).is_file():  # as verify judges it: a damaged file is not cached
            (entry,) = verify_cached([name], check=_strict_load)
            if entry.status in ("damaged", "mismatch"):
                click.echo(f"{name}: {_status_text(entry.status)} {entry.detail}")
                raise click.ClickException(_verify_fix([entry], []))
            click.echo(f"{name}: already cached at {entry.path}")
            continue
        path = download(spec, progress=DownloadBar, check=_strict_load)
        click.echo(f"{name}: saved {path}")


@weights.command("verify")
@click.argument("names", nargs=-1)
@verbose_option
@_friendly
def weights_verify(names) -> None:
    """Re-hash cached checkpoints against the recorded and published sha256.

    A file of the wrong size is damaged; one placed by hand whose sha256 is not published must
    also load strictly before its sha256 is recorded. With NAMES, each must be cached and
    match (exit 1 otherwise); without, every cached one is checked and the others are listed
    as not cached.
    """
    from ..weights.cache import verify_cached

    names = tuple(dict.fromkeys(names))  # each once: a name given twice is hashed once
    _check_names(names)
    if "random" in names:
        click.echo("random: nothing to verify: --weights random is built on the fly, not a file")
        names = tuple(name for name in names if name != "random")
        if not names:
            return
    damaged, missing = [], []
    for entry in verify_cached(list(names) or None, check=_strict_load):
        click.echo(f"{entry.name}: {_status_text(entry.status)} {entry.detail}".rstrip())
        if entry.status in ("damaged", "mismatch"):
            damaged.append(entry)
        elif entry.status == "missing" and names:
            missing.append(entry)
    if damaged or missing:
        raise click.ClickException(_verify_fix(damaged, missing))


def _check_names(names) -> None:
    """An unknown name is a usage error (exit 2), as an unknown ``--weights`` is."""
    from ..weights.registry import get_spec

    for name in names:
        if name == "random":
            continue
        try:
            get_spec(name)
        except ValueError as e:
            ctx = click.get_current_context()
            param = next(p for p in ctx.command.params if p.name == "names")
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def _status_text(status: str) -> str:
    """A cache entry's status as verify and download say it: a file whose sha256 differs from
    the recorded or published one is damaged, as ``weights list`` calls it."""
    return {"missing": "not cached", "mismatch": "damaged:"}.get(status, status)


def _strict_load(path: Path, spec) -> None:
    """What a file must pass before it is accepted as ``spec``'s checkpoint: read safely, load
    strictly into the architecture of ``spec`` (not the one the file shows: a file of another
    checkpoint would pass, then fail in extract)."""
    from ..weights.checkpoint import check_registry_file

    check_registry_file(path, spec)


def _verify_fix(damaged: list, missing: list) -> str:
    """The failed verify's one line: what is wrong and the command(s) that fix it (a damaged
    file must go first: ``weights download`` keeps a cached file as it is; and so must what
    is not a file where a checkpoint goes, a folder, FIFO or symlink loop: the download
    refuses it)."""
    import shlex

    mismatch = ": sha256 mismatch" if all(e.status == "mismatch" for e in damaged) else ""
    what = [f"{len(damaged)} damaged{mismatch}"] if damaged else []
    what += [f"{len(missing)} not cached"] if missing else []
    what = f"{len(damaged) + len(missing)} checkpoint(s) not usable ({', '.join(what)})"
    download = shlex.join(["fpncli", "weights", "download", *(e.name for e in damaged + missing)])
    in_the_way = [str(e.path) for e in missing if e.detail]  # (verify_cached says what is there)
    if in_the_way:  # never removed for the user: a folder may hold anything
        what += f": move away what is in place of the checkpoint(s) ({', '.join(in_the_way)})"
        what += ", then" if not damaged else ";"
    else:
        what += ":"
    if not damaged:
        return f"{what} run {download}"
    remove = shlex.join(["rm", *(str(e.path) for e in damaged)])
    return f"{what} delete the damaged file(s) and download again: {remove} && {download}"
