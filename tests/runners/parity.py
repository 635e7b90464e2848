"""The parity check shared by the Ray and Beam runner tests: one scan config, rows by name."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import DetectorConfig, EngineConfig, SamplingConfig, ScanConfig, ScorerConfig
from pipelines.scan import run_scan
from schemas.records import VideoScan

PARITY_VIDEOS = ("talking_head_d0.mp4", "hamilton_clip.mp4")


def scan_config(inputs: Path, out: Path, checkpoint: Path, runner: str) -> ScanConfig:
    return ScanConfig(
        input_uri=str(inputs),
        out_uri=str(out),
        warehouse_url=f"duckdb://{out}/scans.duckdb",
        run_id=f"parity-{runner}",
        sampling=SamplingConfig.parse("uniform:8"),
        detector=DetectorConfig.build("scrfd-500m"),
        scorer=ScorerConfig(checkpoint=str(checkpoint)),
        engine=EngineConfig(runner),
        progress=False,
    )


def scan(inputs: Path, out: Path, checkpoint: Path, runner: str) -> dict[str, VideoScan]:
    """Rows as the driver received them, by file name."""
    got: list[VideoScan] = []
    run_scan(scan_config(inputs, out, checkpoint, runner), on_row=lambda row, n: got.append(row))
    return {Path(r.uri).name: r for r in got}
