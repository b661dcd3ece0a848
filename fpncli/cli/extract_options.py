"""``fpncli extract``'s command line: its command class and its arguments and options, in
``--help`` order. The command's body, its checks, inputs and run, live in ``extract``."""

from __future__ import annotations

import click

from .common import (
    CLIP_HELP,
    DEFAULT_WEIGHTS,
    ListFile,
    _clip_callback,
    _cmap_callback,
    _levels_callback,
    _out_folder,
    _shard_callback,
    verbose_option,
)
from .extract_checks import _processes_callback


class ExtractCommand(click.Command):
    """Keeps the command line as given, so an interrupted run can print how to resume it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["fpncli.argv"] = list(args)
        return super().parse_args(ctx, args)


#: ``extract``'s arguments and options, top to bottom as they were stacked on the command
EXTRACT_PARAMETERS = (
    click.argument("inputs", nargs=-1),
    click.option(
        "-o",
        "--out",
        "out_dir",
        default="fpn_out",
        show_default=True,
        type=click.Path(file_okay=False),
        callback=_out_folder,
        help="Output folder.",
    ),
    click.option(
        "--weights",
        default=DEFAULT_WEIGHTS,
        show_default=True,
        help="Registry name, checkpoint path, or 'random'.",
    ),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "bf16"]),
        default="fp32",
        show_default=True,
        help="fp16/bf16: on CUDA a copy of the model converted to that dtype, on a CPU autocast. "
        "On a CPU, fp16 is refused and bf16 needs AVX512-BF16 or AMX (recent Xeons: about 3x "
        "faster than fp32, about 1% relative error).",
    ),
    click.option(
        "--levels",
        default="p2,p3,p4,p5,p6",
        show_default=True,
        callback=_levels_callback,
        help="Levels to save: a comma list of p2..p6 (or all) and the bottom-up stem, res2..res5.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "float16"]),
        default="float32",
        show_default=True,
        help="dtype of the .npy files, and of the levels the heatmaps and statistics are "
        "computed from (so not a no-op with --no-npy).",
    ),
    click.option("--no-npy", is_flag=True, help="Do not save the .npy tensors."),
    click.option("--no-heatmaps", is_flag=True, help="Do not save per-level heatmap PNGs."),
    click.option("--no-overview", is_flag=True, help="Do not save overview.png."),
    click.option("--overlay", is_flag=True, help="Also save each heatmap laid over the photo."),
    click.option(
        "--channel",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Channel to draw (with --reduce channel); P2-P6 have 256 (0..255).",
    ),
    click.option(
        "--reduce",
        type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
        default="channel",
        show_default=True,
        help="How to turn 256 channels into a map (pca: signed to correlate with mean).",
    ),
    click.option(
        "--cmap",
        default="viridis",
        show_default=True,
        callback=_cmap_callback,
        help="Matplotlib colormap.",
    ),
    click.option(
        "--clip", default="1,99", show_default=True, callback=_clip_callback, help=CLIP_HELP
    ),
    click.option(
        "--min-size",
        type=click.IntRange(min=1),
        default=800,
        show_default=True,
        help="Shortest edge.",
    ),
    click.option(
        "--max-size",
        type=click.IntRange(min=1),
        default=1333,
        show_default=True,
        help="Longest edge cap.",
    ),
    click.option("--no-resize", is_flag=True, help="Keep the image size (still padded to 32)."),
    click.option(
        "--canvas",
        default=None,
        help="Pad every resized image to a fixed canvas, as Detectron2 pads a batch: WxH, width "
        "first as image sizes are given (multiples of 32), or auto (1344x800 for landscape, "
        "800x1344 for portrait with the default sizes). Fixed shapes, mixed sizes per batch; "
        "features near the right/bottom edge then match Detectron2's batched inference, not its "
        "single-image inference. Default: none.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Default: 1 on CPU, 8 on CUDA.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Decoding threads (default: the cores this process may use, max 8).",
    ),
    click.option(
        "--writers",
        type=click.IntRange(min=1),
        default=None,
        help="Writing threads (default: the cores this process may use, max 8).",
    ),
    click.option(
        "--compile",
        "compile_model",
        is_flag=True,
        help="torch.compile the backbone (slow start, faster steady state; batches padded).",
    ),
    click.option(
        "--from-list",
        "from_list",
        # any bytes a file name may hold: what is not UTF-8 is kept as os.fsdecode would
        type=ListFile("r", encoding="utf-8", errors="surrogateescape"),
        # collected only to refuse a second one: click keeps the last given, dropping the others
        multiple=True,
        help="Read more input paths from FILE, one per line ('-' for stdin); one list per run. "
        "Blank lines and lines starting with # are skipped; spaces at a name's ends are dropped "
        "unless a file has the name with them.",
    ),
    click.option(
        "--overwrite",
        is_flag=True,
        help="Redo images whose outputs are complete (the same as --no-resume). A --format "
        "wds output is redone whole (its shards are only appended to): refused where it holds "
        "other images than these.",
    ),
    click.option(
        "--resume/--no-resume",
        default=True,
        show_default=True,
        help="Skip images whose folder is complete (same input and settings).",
    ),
    click.option("--force", is_flag=True, help="Run even if the disk estimate exceeds free space."),
    click.option(
        "--shard",
        default=None,
        callback=_shard_callback,
        help="Process only shard I of N (I/N, I from 0); default from RANK/WORLD_SIZE (torchrun) "
        "or SLURM_PROCID/SLURM_NTASKS when set.",
    ),
    click.option(
        "--gpus",
        default=None,
        help="One worker process per GPU: all; N (the first N GPUs: 2 is GPUs 0 and 1); "
        "or a list of GPU indices, one process per entry (0,1; 0,0 is two processes on "
        "GPU 0; a trailing comma makes one index a list: 1, is GPU 1 alone).",
    ),
    click.option(
        "--processes",
        default="auto",
        show_default=True,
        callback=_processes_callback,
        help="Worker processes per GPU (one process's Python threads cannot keep a fast "
        "GPU busy). auto: with CUDA, 1,000 images or more and no .npy (--no-npy: a run "
        "that writes .npy is bound by its disk), one per 4 cores and 16 GB of GPU "
        "memory, at most 4 (never under torchrun or SLURM, or with --shard); else 1, "
        "this process. With --gpus, each GPU listed gets this many.",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=None,
        help="Refuse images with more pixels than this (default 89,478,485, as Pillow).",
    ),
    click.option(
        "--seed",
        type=click.IntRange(0, 2**32 - 1),
        default=0,
        show_default=True,
        help="Seed for --weights random.",
    ),
    click.option(
        "--format",
        "out_format",
        type=click.Choice(["files", "wds"]),
        default="files",
        show_default=True,
        help="files: a folder per image; wds: WebDataset tar shards plus OUT/index.parquet.",
    ),
    click.option(
        "--shard-size",
        default="1GB",
        show_default=True,
        help="Target size of a --format wds shard (e.g. 1GB, 256MB).",
    ),
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="ray: Ray Data (CPU decode tasks, a GPU actor pool); needs fpncli[ray].",
    ),
    click.option(
        "--ray-address",
        default=None,
        help="Ray cluster to join: HOST:PORT, ray://HOST:PORT or auto (default: RAY_ADDRESS, "
        "else a local Ray).",
    ),
    click.option("--gpu-workers", default=None, help="Ray GPU actors: N or auto (default auto)."),
    click.option(
        "--gpus-per-worker", type=float, default=None, help="GPUs per Ray actor (default 1)."
    ),
    click.option(
        "--scale",
        type=click.Choice(["image", "level", "shared"]),
        default="image",
        show_default=True,
        help="Colour range of the pictures: each map's own; or, redrawn once the run is done, one "
        "per level for the run's images, or one for all.",
    ),
    verbose_option,
)


def extract_options(command):
    """Stacks :data:`EXTRACT_PARAMETERS` on ``command``, the first one outermost."""
    for decorator in reversed(EXTRACT_PARAMETERS):
        command = decorator(command)
    return command
