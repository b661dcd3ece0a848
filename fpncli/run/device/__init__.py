"""Everything device-specific in a run, in one place, so that the pipeline reads as the
pipeline: which device and the process's settings for it (``runtime``), pinned host buffers,
streams and events and the results' way back to the host (``transfer``), and the heatmap maps
and statistics computed where the features are (``reductions``).

On the CPU the same functions run with plain tensors (no copies, no events), so every CPU test
exercises the code a GPU run uses; only the stream, event and pinned-memory branches are
CUDA-only. Every CUDA object is made for the model's device (never "the current device").
"""

from .reductions import order_stats, reduce_map, reduce_maps
from .runtime import (
    bind_thread,
    device_broken,
    device_context,
    free_cached_memory,
    is_out_of_memory,
    local_rank_from_env,
    model_for_run,
    run_settings,
    select_device,
    worker_threads,
)
from .transfer import (
    BatchResult,
    ByteBudget,
    InputStager,
    PinnedPool,
    StageClock,
    results_to_host,
)

__all__ = [
    "BatchResult",
    "ByteBudget",
    "InputStager",
    "PinnedPool",
    "StageClock",
    "bind_thread",
    "device_broken",
    "device_context",
    "free_cached_memory",
    "is_out_of_memory",
    "local_rank_from_env",
    "model_for_run",
    "order_stats",
    "reduce_map",
    "reduce_maps",
    "results_to_host",
    "run_settings",
    "select_device",
    "worker_threads",
]
