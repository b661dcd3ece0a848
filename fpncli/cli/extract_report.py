"""What ``fpncli extract`` says and leaves behind around a run: the volume note, the progress of an
interrupted run and how to resume it, ``--scale``'s redraw, the run log and the final report."""

from __future__ import annotations

import bisect
import os
import shlex
from pathlib import Path

import click

from ..io.messages import quote_name


def _volume_note(
    jobs, output, total: int | None = None, max_pixels: int | None = None
) -> str | None:
    """How much the run will write, said before it starts, with the options that cut it.

    ``jobs``: the images the run will do (those left after resume), of ``total`` given; None
    when there are none (the final report says they were already complete), or when the
    sampled images will all be refused (over ``max_pixels``, say: the failures say why). The
    size per image is that of an image written; the total counts only the images the run will
    not refuse (as many as in the sample), and says how many it will."""
    from dataclasses import replace

    from ..run.pipeline import estimate_run_volume

    if not jobs:
        return None
    total = len(jobs) if total is None else total
    if not (output.save_npy or output.save_heatmaps or output.save_overview or output.overlay):
        return ("output: statistics only: --no-npy, --no-heatmaps and --no-overview leave each "
                "image's manifest.json (every level's min, max and mean), and an earlier "
                "extraction's arrays and pictures in these folders are replaced by it")  # fmt: skip

    def per_image(options) -> int:
        return estimate_run_volume(jobs, options, max_pixels=max_pixels)[0]

    size, images = estimate_run_volume(jobs, output, max_pixels=max_pixels)
    if not size or not images:
        return None
    text = f"output: about {_size(size)} per image"
    count = f"the {len(jobs)} of {total} images left to do" if total > len(jobs) else ""
    if count or len(jobs) > 1:
        text += f", {_size(size * images)} for {count or f'{len(jobs)} images'}"
        refused = len(jobs) - round(images)
        if refused:  # they write nothing: not counted above
            text += f", about {refused} of which the run will refuse"
    tips = []
    if output.save_npy and output.dtype == "float32":
        tips.append(f"--dtype float16: {_size(per_image(replace(output, dtype='float16')))}")
    if output.save_npy and "p2" in output.levels and len(output.levels) > 1:
        rest = tuple(name for name in output.levels if name != "p2")
        tips.append(f"--levels {','.join(rest)}: {_size(per_image(replace(output, levels=rest)))}")
    return text + (f" (per image with {'; with '.join(tips)})" if tips else "")


def _replaced_note(replaced, out_dir: str) -> str:
    """The complete outputs a run redoes because they were made with other settings
    (``plan.Replaced``), said before it starts: resume redoes them, so they are replaced."""
    shown = ", ".join(replaced.settings[:4]) + (", ..." if len(replaced.settings) > 4 else "")
    return (
        f"note: {replaced.count} image(s) in {quote_name(out_dir)} have outputs made with other "
        f"settings ({shown}): they are replaced; use another -o to keep both"
    )


def _leftover_note(leftovers) -> str:
    """The folders an input's earlier outputs stay in now that its folder is renamed
    (``run.leftovers.renamed_leftovers``: the first, and how many more), said before the run:
    no run writes or removes them, and ``fpncli report`` counts each as an image."""
    folder, job = leftovers[0]
    more = f" (and {len(leftovers) - 1} more such folders)" if len(leftovers) > 1 else ""
    return (
        f"note: {quote_name(str(folder))} holds earlier outputs of {quote_name(str(job.path))}, "
        f"whose folder is now {quote_name(str(job.folder))}{more}: the run leaves it as it is, "
        "and fpncli report counts it as an image of its own; delete it"
    )


def _size(n_bytes: float) -> str:
    """Bytes in the unit that reads best (decimal): ``830 bytes``, ``4.2 KB``, ``83 MB``,
    ``8.3 GB``; a small run said "0 MB" or "0.000 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.1f} {unit}" if value < 10 or unit == "GB" else f"{value:.0f} {unit}"
    return f"{n_bytes:.0f} bytes"


def _inside(inputs, roots: set[Path]) -> dict[str, Path]:
    """The inputs named as files that lie in one of the output ``roots`` -> that root (they are
    passed over with it: a note or error naming only the folder would not say why)."""
    found = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.is_file():
            continue
        real = Path(os.path.realpath(path))
        root = next((r for r in roots if Path(r) in real.parents), None)
        if root is not None:
            found[raw] = root
    return found


def _skipped_note(roots: set[Path], files: dict[str, Path] | None = None) -> str:
    """The output folders passed over, or the files named as inputs that lie in one."""
    files = files or {}
    shown = [f"{quote_name(raw)} (in the output folder {quote_name(os.path.relpath(root))})"
             for raw, root in files.items()]  # fmt: skip
    shown += sorted(quote_name(os.path.relpath(r)) for r in roots - set(files.values()))
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return f"note: not reading outputs back as inputs: skipped {', '.join(shown[:5])}{more}"


def _hidden_left_out(hidden: list[tuple[Path, bool]], pairs) -> list[tuple[Path, bool]]:
    """The hidden entries the walks of folder inputs passed over (``(path, is a folder)``) that
    no input took (``pairs``: an image, or a folder holding one, named as an input too), each
    once, by its absolute path (two inputs walk the folder they share twice)."""
    taken = sorted(os.path.abspath(p) for p, _ in pairs)
    taken_set, seen, left = set(taken), set(), []
    for path, is_folder in hidden:
        key = os.path.abspath(path)
        if key in seen:
            continue
        seen.add(key)
        if is_folder:  # a taken image below it? the first taken path from FOLDER/ on says
            prefix = key + os.sep
            below = bisect.bisect_left(taken, prefix)
            if below < len(taken) and taken[below].startswith(prefix):
                continue
        elif key in taken_set:
            continue
        left.append((path, is_folder))
    return left


def _once(found: list[tuple]) -> list[tuple]:
    """``found``'s ``(path, ...)`` entries (the walks' unreadable and repeated folders), each
    path once, by its absolute path, as ``_hidden_left_out``'s: two inputs walk the folder they
    share twice (``d1 d1``), and would say its note, or count its failure, twice."""
    seen, once = set(), []
    for entry in found:
        key = os.path.abspath(entry[0])
        if key not in seen:
            seen.add(key)
            once.append(entry)
    return once


def _hidden_note(hidden: list[tuple[Path, bool]]) -> str:
    """The hidden folders and image files (names starting with ".") left out, ``(path, is a
    folder)`` each (``_hidden_left_out``'s)."""
    folders = sum(1 for _, is_folder in hidden if is_folder)
    images = len(hidden) - folders
    what = [f"{n} hidden {kind}{'s' if n > 1 else ''}"
            for n, kind in ((images, "image file"), (folders, "folder")) if n]  # fmt: skip
    shown = ", ".join(quote_name(str(p)) for p, _ in hidden[:3])
    more = ", ..." if len(hidden) > 3 else ""
    return (f"note: left out {' and '.join(what)} (names starting with '.': {shown}{more}); "
            "name one as an input to take it")  # fmt: skip


def _commented_note(listed: str, commented: list[tuple[int, str]]) -> str:
    """The ``#`` lines of the list ``listed`` that are the names of files (``(line number, name)``
    each, ``discover_inputs``'s ``commented``), comments all the same: the first, and how many."""
    number, name = commented[0]
    more = f" ({len(commented)} such # lines in all)" if len(commented) > 1 else ""
    return (f"note: {quote_name(listed)}, line {number}: {quote_name(name)} is a comment, but a "
            f"file of that name exists{more}: write it as {quote_name('./' + name)} to extract "
            "it")  # fmt: skip


def _report_interrupt(last, total: int, dropped: int = 0, stopped: str = "interrupted") -> None:
    """Ctrl-C: what was done, what is left, and the command that resumes. ``dropped``: images
    written into a ``--format wds`` run's open shard, which is dropped (to be redone);
    ``stopped``: what the line starts with (an error that ended the run says so)."""
    if last is None:
        done = failed = 0
        left, skipped = total, 0
    else:
        done, failed, skipped = last.done, last.failed, last.skipped
        left = last.todo - done - failed
    dropped = min(dropped, done)
    done, left = done - dropped, left + dropped
    shard = f", nor the {dropped} in the unfinished shard" if dropped else ""
    click.echo(
        f"{stopped}: {done} image(s) written by this run, {failed} failed, {skipped} were "
        f"already complete; {left} of {total} left (the images in progress were not saved"
        f"{shard}).",
        err=True,
    )
    click.echo(f"resume with: {_resume_command()}", err=True)


def _resume_command() -> str:
    """The command that finishes an interrupted run: the same one, without what redoes work."""
    ctx = click.get_current_context()
    args = [a for a in ctx.meta.get("fpncli.argv", []) if a not in ("--overwrite", "--no-resume")]
    return shlex.join(["fpncli", "extract", *args])


def _rescale(scale: str, jobs, summary, output, out_format: str, root: Path | None = None):
    """``--scale level|shared``: redraw the pictures of this run's complete folders on the run's
    ranges (not after a run stopped early: the rerun that finishes it redraws them). With
    ``image``, folders an earlier level/shared run redrew go back to their own ranges. The
    redraw's ``RedrawSummary``, or None where none was made."""
    if out_format == "wds" or (scale == "image" and not _may_hold_run_ranges(summary, output)):
        return None  # no folders; or none this run skipped can hold pictures on a run's ranges
    if summary.aborted:
        if scale != "image":
            click.echo(f"--scale {scale}: pictures left on per-image ranges (the run stopped "
                       "early)", err=True)  # fmt: skip
        return None
    from ..io.manifest import is_complete, read_manifest
    from ..run.rescale import redraw_run

    failed = {path for path, _ in summary.failed}
    folders = [j.folder for j in jobs if str(j.path) not in failed]
    if scale == "image":  # only those an earlier level|shared run redrew: one read each
        folders = [f for f in folders if "scale" in (read_manifest(f) or {})]
    folders = [f for f in folders if is_complete(f)]
    if not folders:
        return None
    try:
        result = redraw_run(folders, scale, output, root=root)
    except ValueError as e:  # (an OptionError's message: this line names --scale already)
        click.echo(f"--scale {scale}: pictures left on per-image ranges: "
                   f"{getattr(e, 'message', e)}", err=True)  # fmt: skip
        return None
    for folder, reason in result.failed:
        click.echo(f"--scale {scale}: not redrawn: {quote_name(folder)}: {quote_name(reason)}",
                   err=True)  # fmt: skip
    kept = f"{result.kept} image(s) already on the run's ranges" if result.kept else ""
    if result.redrawn:
        where = "their own ranges" if scale == "image" else "the run's ranges"
        click.echo(f"--scale {scale}: redrew {result.redrawn} image(s) on {where}"
                   f"{f' ({kept}: left as they are)' if kept else ''}", err=True)  # fmt: skip
    elif kept:  # a rerun of a finished run: nothing rewritten
        click.echo(f"--scale {scale}: nothing redrawn: {kept}", err=True)
    return result


def _may_hold_run_ranges(summary, output) -> bool:
    """Whether a ``--scale image`` run's skipped folders may hold pictures an earlier
    ``level|shared`` run redrew on its ranges (to be put back on their own). Such a folder was
    drawn from its .npy files, and the run key holds what is drawn and saved: a run that draws
    nothing or saves no .npy skipped none of them (it redid them); one that skipped none wrote
    every folder itself, on their own ranges."""
    from ..io.outputs import _needs_maps

    return bool(summary.skipped) and _needs_maps(output) and output.save_npy


def _write_run_log(summary, out: Path, weights: str, precision: str, shard,
                   redraw: dict | None = None) -> None:  # fmt: skip
    """``OUT/run.json`` (``run-I-of-N.json`` for a shard): what this run did, failures with
    reasons (read by ``fpncli report``); ``redraw``: what ``--scale``'s redraw then rewrote
    (``{"scale", "images", "bytes"}``; its bytes are not in ``bytes_written``, the run's own)."""
    import time

    from ..io.run_log import write_run_log

    write_run_log(out, {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": weights,
        "precision": precision, "total": summary.total, "done": summary.done,
        "skipped": summary.skipped, "seconds": round(summary.seconds, 3),
        "bytes_written": summary.bytes_written, "aborted": summary.aborted,
        "failed": [{"path": str(path), "reason": reason} for path, reason in summary.failed],
        "shard": list(shard) if shard else None, **({"redraw": redraw} if redraw else {}),
    }, shard)  # fmt: skip


def _interrupted_progress(e: BaseException, last):
    """What an interrupted run did: its summary where the run handed it over on the interrupt
    or the error that ended it (over the whole run: a resumed wds run's inner run counts only
    the images not in the index), else the last progress report."""
    from ..run.summary import Progress

    summary = getattr(e, "summary", None)
    if summary is None:
        return last
    return Progress(summary.done, len(summary.failed), summary.skipped,
                    summary.total - summary.skipped, summary.seconds,
                    summary.bytes_written)  # fmt: skip


def _write_interrupted_log(e: BaseException | None, last, total: int, out: Path, weights: str,
                           precision: str, shard, aborted: str | None = None,
                           started: float | None = None) -> None:  # fmt: skip
    """Ctrl-C (or a Ray job that failed midway, ``aborted`` saying why; or an error that ended
    a local run, its summary's ``aborted`` saying why): the run's log says what it did and that
    it stopped, so ``report`` does not show the previous run's log as this one's. A
    single-process run hands over its summary (failures with reasons); worker processes and Ray
    actors leave only the progress counts and bytes, and without any progress, the time since
    the run ``started`` (``time.monotonic()``)."""
    import time

    from ..run.summary import INTERRUPTED, RunSummary

    summary = getattr(e, "summary", None)
    if summary is None:
        summary = RunSummary(total=total, aborted=aborted or INTERRUPTED)
        if started is not None:
            summary.seconds = time.monotonic() - started
        if last is not None:
            summary.done, summary.skipped = last.done, last.skipped
            summary.seconds, summary.bytes_written = last.elapsed_s, last.bytes_written
            if last.failed:
                summary.aborted += f"; {last.failed} failed image(s) not listed here"
    for error in getattr(e, "worker_errors", None) or ():  # workers that had failed before
        summary.aborted = f"{summary.aborted}; {error}"
    dropped = min(getattr(e, "dropped_images", 0), summary.done)  # --format wds: open shard
    summary.done -= dropped
    _write_run_log(summary, out, weights, precision, shard)


def _report(summary, out_dir: str | Path, jobs: list, wds: bool = False,
            redraw: dict | None = None) -> None:  # fmt: skip
    """The run's closing lines; ``out_dir`` as given (a URL keeps its ``//``), ``jobs`` the
    run's (this shard's), ``wds`` a ``--format wds`` output, ``redraw`` what ``--scale``'s
    redraw rewrote (as the run log has it), counted in what the run wrote."""
    # one image and nothing else (the run's total also counts the folders it could not read)
    single = len(jobs) == 1 and summary.total == 1
    for path, reason in summary.failed:  # quoted: a newline in a name must not forge a line
        reason = _without_path(reason, str(path))
        click.echo(f"failed: {quote_name(str(path))}: {quote_name(reason)}", err=True)
    if summary.aborted:
        click.echo(f"stopped early: {summary.aborted}", err=True)
    if summary.float16_images:  # once, over the run (every worker's and actor's images)
        click.echo(
            f"warning: --dtype float16 overflowed in {summary.float16_images} image(s) "
            f"({summary.float16_levels} level(s) in all): values past its range (+-65504) "
            "became inf (each level's 'nonfinite' in the manifest counts them); --dtype float32 "
            "keeps them",
            err=True,
        )
    if single and summary.done == 1 and summary.last_folder is not None:
        click.echo(f"wrote {quote_name(str(summary.last_folder))}")
        return
    others = summary.left_to_others
    if single and summary.skipped == 1 and not others:  # which one: with --from-list and
        # --shard, the command line does not say
        (job,) = jobs
        if wds:
            from ..run.wds import job_key

            what = f"{quote_name(str(job.path))} (key {quote_name(job_key(job))})"
        else:
            what = quote_name(str(summary.last_folder or job.folder))
        click.echo(f"{what} is already complete with these settings (use --overwrite to redo)")
        return
    why = "already complete"
    if others:
        why = f"{summary.skipped - others} already complete, {others} left to another live run"
    redrawn = redraw["bytes"] if redraw else 0
    by_redraw = ""
    if redrawn:
        by_redraw = f" ({_size(redrawn)} of it by the --scale {redraw['scale']} redraw)"
    click.echo(
        f"done {summary.done}, skipped {summary.skipped} ({why}), failed "
        f"{len(summary.failed)} of {summary.total} in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.2f} images/s), {_size(summary.bytes_written + redrawn)} "
        f"written to {out_dir}{by_redraw}"
    )


def _without_path(reason: str, path: str) -> str:
    """The reason, without the path the library put in it: the line names the path once."""
    for prefix in (f"{path}: ", f"{path} "):
        if reason.startswith(prefix):
            return reason[len(prefix) :]
    for suffix in (f": {path}", f" {path}"):
        if reason.endswith(suffix):
            return reason[: -len(suffix)]
    return reason.replace(path, "the file")


def _remove_if_unused(out: Path, lock=None) -> None:
    """Remove the output folder this run made, if it holds nothing but its markers and lock
    files, and no other run holds one of those (a folder with anything else in it keeps them
    too). ``lock``: this run's ``io.formats.FormatLock``, released first."""
    from ..io.formats import run_lock_held
    from ..io.jobs import RUN_LOCKS
    from ..io.markers import OUTPUT_MARKER

    if lock is not None:
        lock.release()
    markers = {OUTPUT_MARKER, *RUN_LOCKS.values()}
    try:
        if {entry.name for entry in os.scandir(out)} - markers:
            return
        if any(run_lock_held(out, out_format) for out_format in RUN_LOCKS):
            return  # another run that has written nothing yet
        for marker in markers:
            (out / marker).unlink(missing_ok=True)
        out.rmdir()  # only when empty
    except (OSError, ValueError):
        pass
