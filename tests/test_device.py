"""The device layer on the CPU: device selection from torchrun/SLURM variables, torch-side
preprocessing and reductions against the numpy references, the TF32 context, the byte budget,
and what comes back to the host."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from forked import each_case

import fpncli
from fpncli.api import autocast_context
from fpncli.io.image_load import LoadedImage
from fpncli.io.image_writer import write_image_outputs
from fpncli.io.outputs import OutputOptions, level_results, valid_size
from fpncli.io.preprocess import normalize_and_pad, prepare, resize_for_model, to_color_order
from fpncli.model.names import LEVELS, OUTPUT_STRIDES
from fpncli.model.normalize import normalize_batch
from fpncli.run.device import (
    is_out_of_memory,
    local_rank_from_env,
    model_for_run,
    select_device,
    worker_threads,
)
from fpncli.run.device.reductions import order_stats, reduce_map, reduce_maps
from fpncli.run.device.transfer import ByteBudget, results_to_host
from fpncli.viz.maps import REDUCTIONS, range_from_order_stats, reduce_channels, value_range
from fpncli.weights.registry import DETECTRON2_INPUT, TORCHVISION_INPUT


def test_local_rank_picks_the_gpu_and_explicit_index_wins():
    assert select_device("auto", env={}, cuda_count=0) == torch.device("cpu")
    assert select_device("auto", env={}, cuda_count=2) == torch.device("cuda", 0)
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert select_device("auto", env=torchrun, cuda_count=2) == torch.device("cuda", 1)
    assert select_device("cuda", env=torchrun, cuda_count=2) == torch.device("cuda", 1)
    assert select_device("cuda:0", env=torchrun, cuda_count=2) == torch.device("cuda", 0)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert select_device("auto", env=slurm, cuda_count=2) == torch.device("cuda", 1)
    assert select_device("cpu", env=torchrun, cuda_count=2) == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK 2: only 2 CUDA"):
        select_device("auto", env={"LOCAL_RANK": "2"}, cuda_count=2)
    with pytest.raises(ValueError, match="cuda:3: only 2 CUDA"):
        select_device("cuda:3", env={}, cuda_count=2)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda", env={}, cuda_count=0)
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu0", env={}, cuda_count=0)


def test_a_process_bound_to_one_gpu_uses_it_whatever_its_local_rank():
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"}
    # srun --gpus-per-task=1: each task sees only its own GPU, as cuda:0
    bound = {**slurm, "CUDA_VISIBLE_DEVICES": "3"}
    assert select_device("auto", env=bound, cuda_count=1) == torch.device("cuda", 0)
    assert select_device("cuda", env=bound, cuda_count=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="cuda:1: only 1 CUDA"):
        select_device("cuda:1", env=bound, cuda_count=1)
    # not bound: the local rank must name a GPU, and the message names the variable it came from
    with pytest.raises(ValueError, match="SLURM_LOCALID 3: only 2 CUDA"):
        select_device("auto", env={**slurm, "CUDA_VISIBLE_DEVICES": "0,1"}, cuda_count=2)
    with pytest.raises(ValueError, match="SLURM_LOCALID 3: only 1 CUDA"):
        select_device("auto", env=slurm, cuda_count=1)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LOCAL_RANK": "one"}, r"LOCAL_RANK='one' is not a whole number"),
        ({"SLURM_LOCALID": "-1"}, r"SLURM_LOCALID='-1' is negative"),
    ],
)
def test_garbage_in_the_local_rank_is_a_one_line_error(env, message):
    with pytest.raises(ValueError, match=message) as info:
        local_rank_from_env(env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK='x' is not a whole number"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"need 0 <= RANK < WORLD_SIZE"),
        ({"RANK": "0"}, r"RANK and WORLD_SIZE must be set together"),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "2"},
         r"need 0 <= SLURM_PROCID < SLURM_NTASKS, got SLURM_PROCID=3 SLURM_NTASKS=2"),
        ({"SLURM_NTASKS": "2"}, r"SLURM_PROCID and SLURM_NTASKS must be set together"),
    ],
)  # fmt: skip
def test_garbage_in_the_shard_variables_is_the_shards_error_not_the_devices(env, message):
    """RANK/WORLD_SIZE (SLURM_PROCID/SLURM_NTASKS) choose a shard: ``shard_env`` refuses their
    garbage where a shard is chosen, and device selection does not read them (``--shard``
    overrides them; bench never shards)."""
    from fpncli.io.run_shard import shard_env

    with pytest.raises(ValueError, match=message) as info:
        shard_env(env)
    assert "\n" not in str(info.value)
    assert local_rank_from_env(env) is None
    assert select_device("cpu", env=env, cuda_count=0) == torch.device("cpu")


def test_cli_refuses_garbage_local_rank(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("LOCAL_RANK", "abc")
    for device in ("auto", "cpu"):  # a usage error, as RANK's garbage is, whichever device
        args = ["extract", str(tmp_path), "--weights", "random", "--device", device]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "LOCAL_RANK='abc' is not a whole number" in result.output
        assert "Traceback" not in result.output


def test_shard_variables_stop_no_command_that_takes_no_shard_from_them(tmp_path, monkeypatch):
    """``RANK=abc`` with ``--shard 0/2``: the explicit shard is used, the variable not read;
    ``RANK=0`` alone (no WORLD_SIZE) does not stop bench, which never shards."""
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / f"a{i}.png")
    monkeypatch.setenv("RANK", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    args = ["extract", str(tmp_path), "-o", str(out), "--weights", "random", "--device", "cpu",
            "--shard", "0/2", "--min-size", "32", "--max-size", "64"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "a0").is_dir() and not (out / "a1").exists()  # shard 0 of 2: the first image
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE")
    args = ["bench", "--device", "cpu", "--sizes", "64x64", "--model-only", "--seconds", "0",
            "--iters", "1", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "64x64" in result.output


def test_load_backbone_takes_the_devices_its_docstring_names(monkeypatch):
    """``device="auto"`` (CUDA when present: here the CPU), as ``load_backbone`` documents."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = fpncli.load_backbone("random", device="auto")
    assert next(model.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        fpncli.load_backbone("random", device="cuda")


def test_worker_threads_share_the_cores():
    assert [worker_threads(16, n) for n in (1, 2, 3, 8, 32)] == [16, 8, 5, 2, 1]


@pytest.mark.parametrize("fmt", [DETECTRON2_INPUT, TORCHVISION_INPUT], ids=["bgr", "rgb"])
def test_torch_normalize_is_bit_identical_to_numpy(fmt):
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(37, 50), (64, 30)]]
    pixels = np.zeros((2, 64, 50, 3), np.uint8)
    for i, im in enumerate(images):
        pixels[i, : im.shape[0], : im.shape[1]] = im
    pixels[0, 40:, :] = 255  # garbage outside an image must not leak into its padding
    batch = normalize_batch(
        torch.from_numpy(pixels), [im.shape[:2] for im in images], color_order=fmt.color_order,
        pixel_mean=fmt.pixel_mean, pixel_std=fmt.pixel_std,
    )  # fmt: skip
    assert batch.shape == (2, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last)
    for i, im in enumerate(images):
        ref = normalize_and_pad(to_color_order(im, fmt.color_order), fmt, pad_to=(64, 64))
        assert np.array_equal(batch[i].numpy(), ref)


def test_normalize_pads_a_partial_batch_with_zero_images_in_its_memory_format():
    pixels = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (2, 8, 10, 3), np.uint8))
    kwargs = dict(color_order="BGR", pixel_mean=DETECTRON2_INPUT.pixel_mean,
                  pixel_std=DETECTRON2_INPUT.pixel_std)  # fmt: skip
    for sizes in ([(8, 10), (8, 10)], [(8, 10), (5, 7)]):  # one region or one per image
        for layout in (torch.channels_last, torch.contiguous_format):
            last = layout == torch.channels_last
            alone = normalize_batch(pixels, sizes, channels_last=last, **kwargs)
            padded = normalize_batch(pixels, sizes, channels_last=last, rows=5, **kwargs)
            assert padded.shape == (5, *alone.shape[1:])
            assert padded.is_contiguous(memory_format=layout)
            assert torch.equal(padded[:2], alone) and not padded[2:].any()
    with pytest.raises(ValueError, match="rows 1 is fewer than the batch's 2 images"):
        normalize_batch(pixels, [(8, 10)] * 2, rows=1, **kwargs)


def test_resize_for_model_matches_prepare():
    rgb = np.random.RandomState(1).randint(0, 256, (30, 47, 3), dtype=np.uint8)
    pixels, prepared = resize_for_model(rgb, DETECTRON2_INPUT, min_size=64, max_size=96)
    assert pixels.dtype == np.uint8 and pixels.shape == (61, 96, 3)
    assert (prepared.padded_height, prepared.padded_width) == (64, 96)
    reference = prepare(rgb, DETECTRON2_INPUT, min_size=64, max_size=96).tensor
    ours = fpncli.api.model_input(pixels, DETECTRON2_INPUT, torch.device("cpu"))[0]
    assert np.array_equal(ours.numpy(), reference)


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_torch_reductions_match_numpy(reduce):
    level = torch.randn(16, 7, 9, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ours = reduce_map(level, reduce, channel=5).numpy()
    ref = reduce_channels(level.numpy(), reduce, channel=5)
    assert ours.dtype == np.float32 and ours.shape == (7, 9)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_torch_pca_of_a_level_holding_nan_or_inf_is_refused_as_in_numpy(bad):
    """reduce_map(level, "pca") gave an all-NaN map where reduce_channels (numpy) refuses the
    level with a ValueError saying why: both now raise that one message."""
    level = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    level[1, 2, 3] = bad
    level[0, 0, 0] = float("nan")
    with pytest.raises(ValueError) as reference:
        reduce_channels(level.numpy(), "pca")
    with pytest.raises(ValueError) as ours:
        reduce_map(level, "pca")
    assert str(ours.value) == str(reference.value)
    assert str(ours.value).startswith("--reduce pca needs finite values, and this level holds 2 ")
    assert np.isfinite(reduce_map(level, "mean").numpy()).sum() == 13  # the others: per cell


def test_pca_sign_is_the_same_on_the_device_as_in_numpy():
    """Loadings whose sum and largest entry disagree in sign (the convention follows the sum:
    the map correlates with the mean map), and a level whose mean map is flat (the largest
    loading then decides), in one batch."""
    gen = torch.Generator().manual_seed(2)
    strength = torch.randn(1, 7, 9, generator=gen)
    levels = torch.stack([
        torch.tensor([-3.0, 2.0, 2.0, 0.0])[:, None, None] * strength,
        torch.tensor([0.5, -0.5, 0.7, -0.7])[:, None, None] * strength,
    ]) + 0.001 * torch.randn(2, 4, 7, 9, generator=gen)  # fmt: skip
    batched = reduce_maps(levels, "pca")
    for one, level in zip(batched, levels):
        ref = reduce_channels(level.numpy(), "pca")
        np.testing.assert_allclose(one.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    mean_map = levels[0].mean(dim=0).flatten().numpy()
    assert np.corrcoef(batched[0].flatten().numpy(), mean_map)[0, 1] > 0.99


def test_pca_sign_ties_fall_to_the_largest_loading_on_the_device_as_in_numpy(monkeypatch):
    """Where the loadings' sum counts as 0, both take the largest loading's sign: forced here by
    a tolerance above the sum (0.24) on a level whose largest loading (-0.73) has the other
    sign, so the two rules give opposite maps and a swapped branch would show."""
    from fpncli.run.device import reductions
    from fpncli.viz import maps

    monkeypatch.setattr(reductions, "PCA_SIGN_TOLERANCE", 1.0)
    monkeypatch.setattr(maps, "PCA_SIGN_TOLERANCE", 1.0)
    gen = torch.Generator().manual_seed(2)
    strength = torch.randn(1, 7, 9, generator=gen)
    level = torch.tensor([-3.0, 2.0, 2.0, 0.0])[:, None, None] * strength
    level = level + 0.001 * torch.randn(4, 7, 9, generator=gen)
    ours = reduce_maps(level[None], "pca")[0].numpy()
    ref = reduce_channels(level.numpy(), "pca")
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    mean_map = level.mean(dim=0).flatten().numpy()
    assert np.corrcoef(ours.flatten(), mean_map)[0, 1] < -0.99  # the largest loading's sign


@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_batched_reductions_match_numpy_per_image_and_read_nothing_on_the_host(reduce):
    levels = torch.randn(3, 16, 7, 9, generator=torch.Generator().manual_seed(1)) * 3 + 1
    levels[1] = -levels[1]  # pca: the other sign of the same component
    levels[2, :, :3] = 0
    batched = reduce_maps(levels, reduce, channel=5)
    assert batched.dtype == torch.float32 and batched.shape == (3, 7, 9)
    for one, level in zip(batched, levels):
        ref = reduce_channels(level.numpy(), reduce, channel=5)
        np.testing.assert_allclose(one.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # meta tensors hold no values: a step that reads one on the host (.item(), indexing with a
    # tensor: a host sync per image on CUDA) raises here
    assert reduce_maps(levels.to("meta"), reduce, channel=5).shape == (3, 7, 9)


@pytest.mark.parametrize("save_npy, heatmaps", [(True, False), (False, True)])
def test_results_to_host_brings_back_only_what_is_written(save_npy, heatmaps):
    gen = torch.Generator().manual_seed(0)
    features = {f"p{k}": torch.randn(3, 8, 32 >> k, 48 >> k, generator=gen) for k in range(2, 7)}
    options = OutputOptions(
        levels=("p2", "p4"), dtype="float16", save_npy=save_npy, save_heatmaps=heatmaps,
        save_overview=False, reduce="l2",
    )  # fmt: skip
    resized = [(30, 45), (17, 48)]  # the third row is batch padding
    result = results_to_host(features, resized, options)
    result.wait()
    assert set(result.arrays) == ({"p2", "p4"} if save_npy else set())
    assert set(result.maps) == ({"p2", "p4"} if heatmaps else set())
    for i, (h, w) in enumerate(resized):
        ours = result.image(i)
        blank = np.zeros((h, w, 3), np.uint8)
        prepared = resize_for_model(blank, DETECTRON2_INPUT, resize=False)[1]
        one = {k: v[i : i + 1].numpy() for k, v in features.items()}
        ref = level_results(one, prepared, options)
        for name in ("p2", "p4"):
            assert ours[name].shape == ref[name].shape
            assert ours[name].min == ref[name].min and ours[name].max == ref[name].max
            assert ours[name].mean == pytest.approx(ref[name].mean, rel=1e-6, abs=1e-6)
            if save_npy:
                assert ours[name].array.dtype == np.float16
                assert np.array_equal(ours[name].array, ref[name].array)
            else:
                assert ours[name].array is None
            if heatmaps:
                np.testing.assert_allclose(ours[name].map2d, ref[name].map2d, rtol=1e-5)
            assert ours[name].order_stats is None  # on the CPU the writers sort the maps


def _reference_pca(cells: np.ndarray) -> np.ndarray:
    """The map of ``(C, h, w)`` cells projected on their first principal component (by SVD, in
    float64), signed so that it correlates positively with their channel-mean map."""
    c, h, w = cells.shape
    samples = cells.reshape(c, h * w).astype(np.float64)
    samples -= samples.mean(axis=1, keepdims=True)
    projected = np.linalg.svd(samples, full_matrices=False)[0][:, 0] @ samples
    if np.corrcoef(projected, cells.reshape(c, h * w).mean(axis=0))[0, 1] < 0:
        projected = -projected
    return projected.reshape(h, w)


def test_pca_heatmaps_are_fitted_on_each_images_valid_cells_only():
    """A padded level (``--canvas``, or the rounding up to 32) has cells that cover no image:
    the pca was fitted over them too, so an image's heatmap changed with its padding (p5 of a
    96x64 image on a 256x256 canvas correlated 0.48 with that of its own cells). The map of the
    valid region is now the same whatever the padding holds, in numpy (``level_results``) and in
    torch (``results_to_host``), and it is the first principal component of the valid cells."""
    gen = torch.Generator().manual_seed(6)
    resized = [(40, 56), (24, 64)]  # a batch padded to 64x64: p3 valid 5x7 and 3x8 of 8x8
    options = OutputOptions(levels=("p3", "p4"), save_npy=False, save_overview=False,
                            reduce="pca")  # fmt: skip
    features = {f"p{k}": torch.randn(2, 16, 64 >> k, 64 >> k, generator=gen) for k in (3, 4)}
    padded = {}  # the same valid cells, other padding: far off, along other channels
    for name, level in features.items():
        padded[name] = 30 * torch.randn(level.shape, generator=gen) + 20
        for i, (h, w) in enumerate(resized):
            vh, vw = valid_size(h, w, OUTPUT_STRIDES[name])
            padded[name][i, :, :vh, :vw] = level[i, :, :vh, :vw]
    torch_maps = [results_to_host(f, resized, options) for f in (features, padded)]
    for i, (h, w) in enumerate(resized):
        prepared = resize_for_model(np.zeros((h, w, 3), np.uint8), DETECTRON2_INPUT,
                                    resize=False)[1]  # fmt: skip
        numpy_maps = [level_results({k: v[i : i + 1].numpy() for k, v in f.items()}, prepared,
                                    options) for f in (features, padded)]  # fmt: skip
        for name in options.levels:
            vh, vw = valid_size(h, w, OUTPUT_STRIDES[name])
            want = _reference_pca(features[name][i, :, :vh, :vw].numpy())
            tol = {"rtol": 1e-5, "atol": 1e-5 * np.abs(want).max()}
            for ours in numpy_maps:
                np.testing.assert_allclose(ours[name].map2d, want, **tol, err_msg=name)
            assert np.array_equal(numpy_maps[0][name].map2d, numpy_maps[1][name].map2d)
            for result in torch_maps:
                ours = result.image(i)[name].map2d
                np.testing.assert_allclose(ours, want, **tol, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_batchs_pca_maps_take_one_eigh_call_and_equal_a_call_per_level(monkeypatch, dtype):
    """On CUDA eigh is a host sync: one call for the five FPN levels (256 channels each), one
    more for a level of another channel count; each level's maps exactly (torch.equal) those
    that ``reduce_maps`` makes for the level alone (fitted on each image's valid cells), from
    the levels cast to the .npy dtype."""
    gen = torch.Generator().manual_seed(4)
    features = {f"p{k}": torch.randn(3, 256, 96 >> k, 128 >> k, generator=gen) for k in range(2, 7)}
    features["res3"] = torch.randn(3, 512, 16, 24, generator=gen)
    options = OutputOptions(levels=("res3", *LEVELS), dtype=dtype, save_npy=False,
                            save_overview=False, reduce="pca")  # fmt: skip
    calls, eigh = [], torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: calls.append(tuple(a.shape)) or eigh(a))
    resized = [(90, 128), (96, 100)]  # and a padding row
    result = results_to_host(features, resized, options)
    assert calls == [(2, 512, 512), (10, 256, 256)]
    for name in options.levels:
        valid = [valid_size(h, w, OUTPUT_STRIDES[name]) for h, w in resized]
        alone = reduce_maps(features[name][:2].to(getattr(torch, dtype)), "pca", valid=valid)
        assert torch.equal(result.maps[name], alone), name


def test_a_pca_level_holding_inf_fails_its_image_alone_and_no_eigh_sees_it(monkeypatch):
    """An overflow past float16's range in one image's p3: LAPACK failed to converge on the
    batch's eigh call for 16 channels (every image of the batch failed) and drew an all-NaN map
    for 256. No eigh sees a non-finite matrix now; that image's results are refused as
    ``reduce_channels`` refuses the level, naming it; the other images' maps are those of the
    batch without the overflow, bit for bit, also one whose padding (no pca fits it) holds a
    NaN."""
    gen = torch.Generator().manual_seed(7)
    features = {f"p{k}": torch.randn(3, 16, 64 >> k, 64 >> k, generator=gen) for k in (3, 4)}
    options = OutputOptions(levels=("p3", "p4"), dtype="float16", save_overview=False,
                            reduce="pca")  # fmt: skip
    resized = [(64, 64), (64, 64), (40, 56)]
    clean = results_to_host(features, resized, options)
    bad = {name: level.clone() for name, level in features.items()}
    bad["p3"][1, 4, 2, 3] = 1e6  # inf once cast to float16
    bad["p4"][2, 0, -1, -1] = float("nan")  # padding: image 2's p4 is valid on 3x4 of 4x4
    seen, eigh = [], torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: seen.append(a) or eigh(a))
    result = results_to_host(bad, resized, options)
    assert len(seen) == 1 and bool(torch.isfinite(seen[0]).all())
    with pytest.raises(ValueError) as refused:
        result.image(1)
    valid = bad["p3"][1].to(torch.float16).numpy()
    with pytest.raises(ValueError) as reference:
        reduce_channels(valid, "pca")
    assert str(refused.value) == f"p3: {reference.value}"
    assert str(refused.value).startswith("p3: --reduce pca needs finite values, and this level "
                                         "holds 1 NaN or infinite ones")  # fmt: skip
    for i in (0, 2):
        ours, want = result.image(i), clean.image(i)
        for name in options.levels:
            assert np.array_equal(ours[name].map2d, want[name].map2d), (i, name)
            stats = [
                (r[name].min, r[name].max, r[name].mean, r[name].nonfinite) for r in (ours, want)
            ]  # of the valid cells: not the padding's NaN
            assert stats[0] == stats[1], (i, name)


def test_order_stats_give_value_range_bit_for_bit():
    """The colour range from the order statistics picked out in torch (on CUDA, with the maps)
    is the very range value_range sorts for on the host: maps with ties, NaN and infinities,
    over 60 decades, none finite, constant or sparse; any clip; one map or a batch."""
    rng = np.random.default_rng(2)
    for trial in range(300):
        b, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 60))
        kind = trial % 5
        if kind == 0:
            maps = rng.standard_normal((b, h, w)) * 10 ** rng.uniform(-30, 30)
        elif kind == 1:
            maps = rng.integers(-3, 4, (b, h, w)).astype(np.float64)
        elif kind == 2:  # some NaN and infinities
            maps = rng.standard_normal((b, h, w))
            maps[rng.random((b, h, w)) < 0.2] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == 3:  # none finite, or constant
            maps = np.full((b, h, w), rng.choice([np.nan, np.inf, 2.5]))
        else:  # sparse: the percentiles coincide
            maps = np.zeros((b, h, w))
            maps[:, 0, 0] = 5.0
        maps = torch.from_numpy(maps.astype(np.float32))
        lo = float(rng.choice([0.0, 0.5, 1.0, rng.uniform(0.01, 50)]))
        hi = float(rng.choice([99.0, 100.0, rng.uniform(50, 99.99)]))
        picked = order_stats(maps, (lo, hi))
        assert picked.dtype == torch.float64 and picked.shape == (b, 7)
        for i in range(b):
            want = value_range(maps[i].numpy(), (lo, hi))
            assert range_from_order_stats(picked[i].tolist(), (lo, hi)) == want, (trial, i)


def test_results_to_host_picks_out_each_maps_order_stats_when_asked():
    gen = torch.Generator().manual_seed(3)
    features = {f"p{k}": torch.randn(3, 8, 64 >> k, 96 >> k, generator=gen) for k in range(2, 7)}
    features["p3"][1, 0, :2, :3] = float("nan")
    options = OutputOptions(levels=("p2", "p3", "p6"), save_npy=False, save_overview=False,
                            clip=(2.0, 97.0))  # fmt: skip
    resized = [(60, 90), (33, 96), (64, 17)]
    result = results_to_host(features, resized, options, order=True)
    result.wait()
    for i in range(len(resized)):
        for name, level in result.image(i).items():
            assert range_from_order_stats(level.order_stats, options.clip) == (
                value_range(level.map2d, options.clip)), (i, name)  # fmt: skip


def test_the_writer_takes_the_colour_range_from_the_order_stats(tmp_path, monkeypatch):
    """A level whose order statistics came with it is drawn and recorded with the range they
    give, and its map is not sorted again on the host."""
    from fpncli.viz import maps, overview, visualize

    gen = torch.Generator().manual_seed(4)
    features = {f"p{k}": torch.randn(1, 8, 64 >> k, 96 >> k, generator=gen) for k in range(2, 7)}
    options = OutputOptions(levels=("p2", "p5"), save_npy=False, save_overview=False)
    rgb = np.zeros((64, 96, 3), np.uint8)
    image, prepared = LoadedImage(rgb=rgb), resize_for_model(rgb, DETECTRON2_INPUT, resize=False)[1]
    result = results_to_host(features, [(64, 96)], options, order=True)
    levels = result.image(0)
    want = {name: list(value_range(levels[name].map2d, options.clip)) for name in levels}

    def no_sorting(*args, **kwargs):
        raise AssertionError("value_range called: the map was sorted on the host")

    for module in (maps, visualize, overview):  # each module that draws takes it by name
        monkeypatch.setattr(module, "value_range", no_sorting)
    write_image_outputs(tmp_path / "one", levels=levels, image=image, prepared=prepared,
                        options=options, weights={"name": "random"}, device="cuda:0",
                        precision="bf16")  # fmt: skip
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert {name: manifest["levels"][name]["range"] for name in levels} == want
    assert (tmp_path / "one" / "p2.png").stat().st_size > 0


def test_fp32_context_restores_tf32_flags_even_on_error():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with autocast_context(torch.device("cuda"), "fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(KeyError), autocast_context(torch.device("cuda"), "fp32"):
            raise KeyError("boom")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        torch.set_float32_matmul_precision("highest" if not saved[0] else "high")


#: Imports torch and fpncli once, then checks autocast_context after each way a user sets TF32
#: (argv: a JSON list of the settings' code) in a process of its own, forked from the state the
#: imports left (these settings are global: as a fresh process, without importing torch again
#: for each; where there is no fork, one case, checked in this process). One JSON line a case
#: (``forked.each_case`` runs it).
_TF32_CHECK = """
import json, traceback, torch
from fpncli.api import autocast_context
b = torch.backends
def effective(*levels):  # a setting left "none" inherits from the level above; "none" on top: ieee
    value = next((v.fp32_precision for v in levels if v.fp32_precision != "none"), "none")
    return "ieee" if value == "none" else value
def state():
    return effective(b.cuda.matmul, b), effective(b.cudnn.conv, b.cudnn, b)
def raw():  # every setting as stored ("none" inherits: a later global change must still reach it)
    levels = (b, b.cuda.matmul, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.mkldnn, b.mkldnn.matmul,
              b.mkldnn.conv, b.mkldnn.rnn)
    return [level.fp32_precision for level in levels]
def legacy():  # what torch's own code reads (inductor: get_float32_matmul_precision); a mixed
    out = []  # state of the two APIs makes these raise
    for read in (torch.get_float32_matmul_precision, lambda: b.cudnn.allow_tf32,
                 lambda: b.cuda.matmul.allow_tf32):
        try:
            out.append(read())
        except RuntimeError:
            out.append("raised")
    return out
def check(user):
    try:
        exec(user)  # how the user set TF32
        before, before_raw, before_legacy = state(), raw(), legacy()
        with autocast_context(torch.device("cuda"), "fp32"):
            inside = state()
            mkldnn = effective(b.mkldnn.matmul, b.mkldnn, b), effective(b.mkldnn.conv, b.mkldnn, b)
            read = legacy()
        said = {"inside": inside, "restored": state() == before, "raw": raw() == before_raw,
                "mkldnn": mkldnn, "legacy": read, "legacy after": legacy() == before_legacy}
    except BaseException:
        said = {"error": traceback.format_exc()}
    return json.dumps(said)
"""

TF32_USERS = {
    "default": "",
    "legacy": "b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True",
    "new-api": "b.fp32_precision = 'tf32'",
    "new-api-matmul": "b.cuda.matmul.fp32_precision = 'tf32'",
    "matmul-precision-high": "torch.set_float32_matmul_precision('high')",
}


@pytest.fixture(scope="module")
def tf32_checked() -> dict[str, dict]:
    """What ``_TF32_CHECK`` says for each of ``TF32_USERS``: all from one process that forks
    one per case (one process each without fork). Importing torch in a fresh process for each
    case was a few seconds each on two cores."""
    if not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        pytest.skip("torch < 2.9: no fp32_precision settings")
    said = each_case(_TF32_CHECK, list(TF32_USERS.values()))
    return dict(zip(TF32_USERS, said, strict=True))


@pytest.mark.parametrize("user", TF32_USERS)
def test_fp32_context_with_either_tf32_api(tf32_checked, user):
    """torch >= 2.9 raises when the legacy allow_tf32 flags are read after a user set TF32 with
    the fp32_precision settings: the context must work, turn TF32 off and restore, whichever
    API the user used (each case in a process of its own: these settings are global). Inside,
    no setting is left at TF32 (oneDNN's neither) and the legacy readers work: after
    ``set_float32_matmul_precision('high')`` oneDNN's matmul had stayed at TF32, and
    ``get_float32_matmul_precision()``, which inductor calls, raised."""
    assert tf32_checked[user] == {
        "inside": ["ieee", "ieee"],
        "restored": True,
        "raw": True,
        "mkldnn": ["ieee", "ieee"],
        "legacy": ["highest", False, False],
        "legacy after": True,
    }


def test_byte_budget_blocks_until_writers_release():
    budget = ByteBudget(100)
    budget.acquire(80)
    got = threading.Event()

    def second():
        budget.acquire(50)
        got.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    assert not got.is_set()  # 80 + 50 > 100: waits
    budget.release(80)
    thread.join(timeout=5)
    assert got.is_set() and budget.used == 50
    budget.release(50)
    budget.acquire(1000)  # over the limit, but nothing else is held: one item always fits
    assert budget.used == 1000


def test_model_for_run_leaves_the_model_alone_on_the_cpu():
    model = fpncli.load_backbone("random")
    assert model_for_run(model, "fp32") is model
    compiled = model_for_run(model, "fp32", compile=True)
    assert compiled is not model and model_for_run(model, "fp32", compile=True) is compiled
    assert next(model.parameters()).dtype == torch.float32


def test_bf16_is_refused_on_gpus_without_it(monkeypatch):
    from fpncli.api import check_precision

    capability = {"cap": (7, 5)}  # a T4: cuDNN would fail every bf16 batch
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["cap"])
    with pytest.raises(ValueError, match=r"compute capability 7\.5\) has no bf16"):
        check_precision("bf16", torch.device("cuda", 0))
    check_precision("fp16", torch.device("cuda", 0))
    capability["cap"] = (9, 0)
    check_precision("bf16", torch.device("cuda", 0))


def test_a_converted_variant_after_a_compiled_one():
    """A compiled variant in the model's cache must not be deep-copied (it cannot be) when a
    converted copy is made next, e.g. `bench --compile --precisions fp32,bf16` on CUDA."""
    model = fpncli.load_backbone("random", cpu_kernels=False)
    compiled = model_for_run(model, "fp32", compile=True)
    bf16 = model_for_run(model, "bf16", convert=True)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert "_fpncli_run_variants" not in bf16.__dict__  # no copies of the other variants
    assert model_for_run(model, "bf16", convert=True) is bf16
    assert model_for_run(model, "fp32", compile=True) is compiled
    # the compiled bf16 variant runs the converted copy's weights: no second copy
    assert model_for_run(model, "bf16", compile=True, convert=True)._orig_mod is bf16
    assert model_for_run(model, "bf16") is model  # on the CPU, bf16 is autocast by default


@pytest.mark.parametrize(
    "error, expected",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be..."), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"), True),
        (RuntimeError("FIND was unable to find an engine to execute this computation"), True),
        (RuntimeError("GET was unable to find an engine to execute this computation"), True),
        (RuntimeError("cuDNN Frontend error: [cudnn_frontend] Error: No execution plans"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
        (MemoryError(), False),
    ],
)
def test_what_counts_as_out_of_memory(error, expected):
    assert is_out_of_memory(error) is expected


def test_packed_views_hold_each_source_apart():
    """The layout of the one pinned buffer a CUDA batch comes back in (run here on the CPU)."""
    from fpncli.run.device.transfer import _pack, _packed_bytes

    gen = torch.Generator().manual_seed(0)
    sources = {
        ("a", "p2"): torch.randn(3, 5, 7, 9, generator=gen).half(),  # odd byte count
        ("m", 0, "p2"): torch.randn(7, 9, generator=gen),
        ("m", 1, "p2"): torch.randn(1, 1, generator=gen),
        ("s",): torch.randn(3, 2, 4, generator=gen).double(),
    }
    nbytes = _packed_bytes(sources)
    buffer = torch.full((nbytes,), 255, dtype=torch.uint8)
    views = _pack(sources, buffer)
    for key, src in sources.items():
        assert views[key].dtype == src.dtype and views[key].shape == src.shape
        assert views[key].data_ptr() % 64 == buffer.data_ptr() % 64
        views[key].copy_(src)
    for key, src in sources.items():  # no view overlaps another
        assert torch.equal(views[key], src)
    assert nbytes < sum(t.numel() * t.element_size() for t in sources.values()) + 64 * 4


def test_batched_statistics_equal_per_image_ones():
    from fpncli.run.device.reductions import finite_stats, finite_stats_batch

    valid = torch.randn(3, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    valid[1, 2, 3, 4] = float("nan")
    valid[2] = float("inf")
    batched = finite_stats_batch(valid)
    for i in range(3):
        single = finite_stats(valid[i])
        torch.testing.assert_close(batched[i], single, equal_nan=True)
    assert batched[1, 3] == 1 and batched[2, 3] == 8 * 5 * 7 and batched[2, :3].isnan().all()


def test_decode_and_write_threads_take_the_model_device(monkeypatch):
    from fpncli.run import runner

    calls = []
    monkeypatch.setattr(runner, "bind_thread", lambda d: calls.append(str(d)))
    runner.background(torch.device("cpu"))()
    runner.background(torch.device("cuda", 1))()
    assert calls == ["cpu", "cuda:1"]


def test_a_compiled_cpu_run_freezes_the_weights_only_during_the_run():
    from torch._inductor import config

    from fpncli.run.device import run_settings

    before = config.freezing
    with run_settings(torch.device("cpu"), compile=True):
        assert config.freezing is True  # oneDNN prepacks the weights once: the CPU speed-up
    assert config.freezing == before
    with run_settings(torch.device("cpu")):
        assert config.freezing == before  # an eager run changes nothing


def test_the_device_stages_start_once_the_batch_is_staged(monkeypatch):
    """The clock's ``start`` is marked after the host has filled the batch, right before the
    upload: the host's staging time is the feeding thread's (``host``), not ``h2d``, so a GPU
    waiting for that thread reads as host-bound."""
    from fpncli.run.device.transfer import InputStager, StageClock

    slow_stack = np.stack

    def stack(arrays):
        time.sleep(0.3)  # a slow fill
        return slow_stack(arrays)

    monkeypatch.setattr(np, "stack", stack)
    clock = StageClock(torch.device("cpu"))
    images = [np.full((8, 12, 3), i, np.uint8) for i in range(2)]
    pixels = InputStager(torch.device("cpu")).stage(images, clock)
    clock.mark("h2d")
    assert [name for name, _ in clock.marks] == ["start", "h2d"]
    assert clock.seconds()["h2d"] < 0.3
    assert torch.equal(pixels, torch.from_numpy(slow_stack(images)))


def test_cli_says_when_the_environment_shards_the_inputs(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    for name in "abc":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.png")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    out = tmp_path / "out"
    args = ["extract", str(tmp_path), "-o", str(out), "--weights", "random", "--min-size", "32",
            "--max-size", "64"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "shard 1/3 from SLURM_PROCID/SLURM_NTASKS: this process takes 1 of the 3" in (
        result.output
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["b"]


def test_cudnn_fusion_marks_folded_convolutions_and_leaves_the_cpu_path_alone():
    from fpncli.model import cuda_kernels
    from fpncli.model.layers import Conv2d

    folded = fpncli.load_backbone("random", device="cpu", cpu_kernels=False)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = folded(x.contiguous(memory_format=torch.channels_last))
    cuda_kernels.use_cudnn_fusion(folded)
    convs = [m for m in folded.modules() if isinstance(m, Conv2d)]
    assert convs and all(c.fused for c in convs) and cuda_kernels.uses_cudnn_fusion(folded)
    with torch.inference_mode():  # CPU tensors never take the cuDNN ops
        got = folded(x.contiguous(memory_format=torch.channels_last))
    for name in want:
        assert torch.equal(got[name], want[name])
    unfolded = fpncli.load_backbone("random", device="cpu", fold_bn=False)
    cuda_kernels.use_cudnn_fusion(unfolded)  # a conv with its norm is never fused
    normed = [m for m in unfolded.modules() if isinstance(m, Conv2d) and m.norm is not None]
    assert normed and not any(c.fused for c in normed)
    assert not cuda_kernels.fusion_works(torch.device("cpu"), torch.bfloat16)


def test_cudnn_fusion_can_be_turned_off_or_let_into_compiled_models(monkeypatch):
    from fpncli.model import cuda_kernels
    from fpncli.model.layers import Conv2d

    monkeypatch.delenv("FPNCLI_CUDNN_FUSION", raising=False)  # the default: eager and compiled
    assert cuda_kernels.enabled() and cuda_kernels.under_compile()
    monkeypatch.setenv("FPNCLI_CUDNN_FUSION", "0")
    assert not cuda_kernels.enabled() and not cuda_kernels.under_compile()
    monkeypatch.setenv("FPNCLI_CUDNN_FUSION", "eager")  # the A/B: compiled over the plain ops
    assert cuda_kernels.enabled() and not cuda_kernels.under_compile()
    monkeypatch.setenv("FPNCLI_CUDNN_FUSION", "compile")  # the former opt-in: the default now
    assert cuda_kernels.enabled() and cuda_kernels.under_compile()
    model = fpncli.load_backbone("random", device="cpu", cpu_kernels=False)
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    cuda_kernels.use_cudnn_fusion(model)
    assert not any(c.fused_when_compiled for c in convs)  # traced code reads only this flag
    cuda_kernels.use_cudnn_fusion(model, compiled=True)
    assert all(c.fused_when_compiled for c in convs)
    cuda_kernels.use_cudnn_fusion(model, on=False, compiled=True)
    assert not any(c.fused or c.fused_when_compiled for c in convs)


_NO_ENGINE = "cuDNN Frontend error: [cudnn_frontend] Error: unable to find an engine"
_RETRIED = ["fused", "empty_cache", "fused"]


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize(
    "errors, calls, fused_after",
    [
        ([RuntimeError(_NO_ENGINE)], _RETRIED, True),  # the workspace did not fit: retry runs
        ([RuntimeError(_NO_ENGINE)] * 2, _RETRIED, False),  # a real refusal: plain ops from now
        ([RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")], ["fused"], False),  # no retry for others
        ([RuntimeError(_NO_ENGINE), torch.cuda.OutOfMemoryError("CUDA out of memory")],
         _RETRIED, True),
    ],
)  # fmt: skip
def test_a_fused_convolution_without_an_engine_is_retried_once_after_freeing_memory(
    monkeypatch, errors, calls, fused_after, add
):
    """cuDNN's "unable to find an engine" is also what it says when its workspace did not fit:
    the cached memory is freed and the fused op tried once more; only a second refusal unfuses
    the layer, and out of memory still goes to the caller (a smaller batch may fit)."""
    from torch.nn import functional as F

    from fpncli.model import layers

    oom = isinstance(errors[-1], torch.cuda.OutOfMemoryError)
    errors, events = list(errors), []

    def fused_op(x, weight, *args):
        events.append("fused")
        if errors:
            raise errors.pop(0)
        # cudnn_convolution_add_relu(x, weight, other, alpha, bias, stride, padding, ...)
        other, (bias, *rest) = (args[0], args[2:]) if add else (0, args)
        return F.relu(F.conv2d(x, weight, bias, *rest) + other)

    name = "cudnn_convolution_add_relu" if add else "cudnn_convolution_relu"
    monkeypatch.setattr(torch, name, fused_op)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    monkeypatch.setattr(layers, "_fuses", lambda conv, x: conv.fused)  # as on CUDA
    gen = torch.Generator().manual_seed(0)
    conv = layers.Conv2d(4, 4, 3, padding=1)
    conv.fused = True
    x, other = torch.randn(1, 4, 5, 6, generator=gen), torch.randn(1, 4, 5, 6, generator=gen)
    with torch.inference_mode():
        want = F.relu(conv(x) + other) if add else F.relu(conv(x))
        if oom:
            with pytest.raises(torch.cuda.OutOfMemoryError):
                layers.conv_add_relu(conv, x, other) if add else layers.conv_relu(conv, x)
        else:
            got = layers.conv_add_relu(conv, x, other) if add else layers.conv_relu(conv, x)
            torch.testing.assert_close(got, want)
    assert conv.fused is fused_after
    assert events == calls


@pytest.mark.parametrize("retried", [False, True])
def test_out_of_memory_in_a_fused_convolution_leaves_no_cycle_that_holds_the_batch(
    monkeypatch, retried
):
    """The run retries a smaller batch after out of memory, outside its ``except`` block, so
    that the failed batch's memory is free first: the exception that leaves a fused convolution
    must hold no reference cycle (exception, traceback, a frame holding the exception), which
    would keep the failed forward's tensors allocated until the cyclic collector ran."""
    import gc
    import weakref

    from fpncli.model import layers

    errors = [RuntimeError(_NO_ENGINE)] if retried else []
    errors.append(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB"))

    def fused_op(x, *args):
        raise errors.pop(0)

    monkeypatch.setattr(torch, "cudnn_convolution_relu", fused_op)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(layers, "_fuses", lambda conv, x: conv.fused)  # as on CUDA
    conv = layers.Conv2d(4, 4, 3, padding=1)
    conv.fused = True
    x = torch.randn(1, 4, 5, 6)
    alive = weakref.ref(x)
    gc.disable()
    try:
        try:
            with torch.inference_mode():
                layers.conv_relu(conv, x)
        except torch.cuda.OutOfMemoryError:
            pass
        else:
            raise AssertionError("out of memory did not reach the caller")
        del x
        assert alive() is None, "the failed forward's input outlived its exception"
    finally:
        gc.enable()
    assert conv.fused  # out of memory is no refusal of the fused kernel


def test_a_run_keeps_opencv_in_the_calling_thread_and_restores_its_pool(tmp_path, monkeypatch):
    """OpenCV's pool spins after every call it splits (the upload copy of each image: several
    CPU ms an image on a 16-core host), so a run sets one thread, and gives the caller's
    setting back after."""
    import cv2
    import numpy as np
    from PIL import Image

    import fpncli
    from fpncli.io.outputs import OutputOptions
    from fpncli.run import steps
    from fpncli.run.pipeline import Job, RunOptions, run_jobs

    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "a.png")
    seen = []
    real = steps.write_image_outputs

    def write(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "write_image_outputs", write)
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        model = fpncli.load_backbone("random", device="cpu")
        options = RunOptions(output=OutputOptions(min_size=32, max_size=64, save_overview=False))
        assert run_jobs([Job(tmp_path / "a.png", tmp_path / "out")], model, options).done == 1
        assert seen == [1] and cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_overlapping_runs_give_the_process_settings_back_once_the_last_ends():
    """Two runs in threads of one process: the first to end must not change OpenCV's and
    torch's thread counts or cudnn.benchmark under the other, and the last to end restores
    those from before the first (OpenCV's, then torch's, were left at the first's)."""
    import cv2

    from fpncli.run.device import run_settings

    before = cv2.getNumThreads(), torch.get_num_threads(), torch.backends.cudnn.benchmark
    cv2.setNumThreads(3)
    torch.set_num_threads(2)
    torch.backends.cudnn.benchmark = False
    try:
        a = run_settings(torch.device("cpu"), threads=1)
        b = run_settings(torch.device("cpu"))
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (1, 1)  # b still runs
        b.__exit__(None, None, None)
        assert (cv2.getNumThreads(), torch.get_num_threads()) == (3, 2)
        assert torch.backends.cudnn.benchmark is False
    finally:
        cv2.setNumThreads(before[0])
        torch.set_num_threads(before[1])
        torch.backends.cudnn.benchmark = before[2]
