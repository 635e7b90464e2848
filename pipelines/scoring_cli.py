"""The classifier flags shared by ``dfscan scan``, ``rescore`` and ``eval``.

``--batch-size`` and ``--score-backend`` mean the same on all three, so they are defined
once here; ``scorer_settings`` turns them into values at the edge, where an unknown
backend is one line (``dfscan: error: unknown --score-backend ...``), not a worker crash.
"""

from __future__ import annotations

import argparse

from pipelines.config import DEFAULT_SCORE_BACKEND
from pipelines.limits_cli import _positive


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size",
        type=_positive(int),
        default=None,
        help="faces per forward pass (default: 64 on CPU, 256 on CUDA)",
    )
    p.add_argument(
        "--score-backend",
        default=DEFAULT_SCORE_BACKEND,
        metavar="NAME",
        help="how the classifier runs: auto (default: onnx on CPU, the fastest that keeps "
        "AUC in benchmarks/bench_scoring.py; torch with fp16 autocast on CUDA), torch, "
        "torch-cl (channels_last), onnx (ONNX Runtime) or int8 (torch dynamic "
        "quantisation, CPU only)",
    )


def scorer_settings(args: argparse.Namespace) -> tuple[int, str]:
    """(batch size, backend name) from the flags; bad values fail here in one line."""
    from operators.models.backends import backend_name
    from operators.models.scorers import default_batch_size

    backend_name(args.score_backend)
    return args.batch_size or default_batch_size(args.device), args.score_backend
