"""The scan on Apache Beam: the same operators as every engine, behind thin Beam adapters.

``build_pipeline`` walks the operator list it is given and translates each operator
(``TRANSLATIONS``; anything not listed becomes a batched ``OperatorDoFn``). The full
scan list gives::

    Create((index, record))
      -> hash            BatchElements(16) + OperatorDoFn(VideoHasher)
      -> decode_detect   OperatorDoFn(FaceExtractor), one video per call
                         error statuses -> TaggedOutput("dead_letter")
      -> write_shards    GroupByKey(index // videos_per_shard) + OperatorDoFn(FaceShardWriter)
      -> score_faces     one element per face -> RunInference(KeyedModelHandler(
                         ScorerModelHandler)) -> CombinePerKey (a video's scores in face
                         order) -> CoGroupByKey with its video
      -> aggregate       Flatten with the dead letters + OperatorDoFn(VideoAggregator)
      -> write_warehouse OperatorDoFn(WarehouseWriter) (any warehouse URL, BigQuery included)
      -> WriteToParquet(results) -> read back by the driver, in input order

``run_scan`` also calls the runner with the hasher alone (to plan an incremental scan)
and then with the rest; ``dfscan rescore`` with shard reader -> scorer -> aggregate ->
warehouse. All are the same walk over a shorter list.

Every element is keyed by its position in the input list, not by video_id: two listed
files with the same bytes share a video_id but each get a row, as on the local runner,
and the key puts the results back in input order for the driver.

Batching is the operators' own declaration (``Resources.batch_size``) turned into
fixed-size ``BatchElements``; a declared ``concurrency`` (DuckDB: one writer) becomes
that many keys into ``GroupIntoBatches``, whose per-key processing is serial on every
runner. Face shards are grouped by position, exactly as the local runner batches them,
so the same input gives the same shard names on every engine and a retried bundle
replaces its shard rather than writing a second one.

Locally the pipeline runs on the in-process ``FnApiRunner`` (Beam's default runner
would download the Prism binary first, which hangs offline); everything after ``--`` on
the command line reaches ``PipelineOptions`` untouched, so ``--runner=DataflowRunner
--setup_file=./setup.py ...`` runs the same graph on Dataflow.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.pvalue import TaggedOutput
from apache_beam.runners.runner import PipelineResult

from operators.aggregate import VideoAggregator
from operators.base import Operator
from operators.extract_faces import FaceExtractor
from operators.list_videos import VideoHasher
from operators.metrics import FACES_DETECTED, VIDEOS, ScanMetrics
from operators.models.scorers import Scorer
from operators.score_faces import FaceScorer
from operators.write_face_shards import FaceShardWriter
from operators.write_warehouse import WarehouseWriter
from pipelines.config import EngineConfig, ScorerConfig
from schemas.arrow import VIDEO_SCANS_SCHEMA
from schemas.records import ScoredVideo, VideoFaces, VideoRef, VideoScan, VideoStatus

# Beam metrics use the Prometheus names of operators/metrics.py. A labelled family is
# the namespace and its label value the name (dfscan_videos_total / "scored"), so one
# MetricsFilter finds the family; an unlabelled counter lives in "dfscan". Beam
# distributions hold integers, so stage time is kept in microseconds (the name says so)
# and converted to seconds for dfscan_stage_seconds on the driver.
STAGE_NAMESPACE = "dfscan_stage_microseconds"
COUNTER_NAMESPACE = "dfscan"

DEAD_LETTER = "dead_letter"
# Statuses that end a video before scoring; no_face is a normal outcome and stays on
# the main path (it simply gets no scores).
ERROR_STATUSES = frozenset(VideoStatus) - {VideoStatus.SCORED, VideoStatus.NO_FACE}


INDEX_COLUMN = "_index"  # input position, added to the results hand-off files

Keyed = tuple[int, Any]  # (position in the input list, record)


def _micros(seconds: float) -> int:
    return int(round(seconds * 1e6))


# --- adapters -------------------------------------------------------------------------


class OperatorDoFn(beam.DoFn):
    """Any operator as a DoFn over a batch of keyed records.

    ``setup()`` runs the operator's setup once per DoFn instance on the worker (models
    and clients load there, never on the driver); each element is a list of
    ``(key, record)`` and the operator sees only the records. Operators map a batch
    one-to-one, so outputs are re-keyed by position.
    """

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.seconds = Metrics.distribution(STAGE_NAMESPACE, op.name)

    def setup(self) -> None:
        self.op.setup()

    def process(self, batch: Sequence[Keyed]) -> Iterator[Keyed]:
        keys = [k for k, _ in batch]
        t0 = time.perf_counter()
        out = self.op.process_batch([v for _, v in batch])
        self.seconds.update(_micros(time.perf_counter() - t0))
        if len(out) != len(keys):
            raise RuntimeError(f"{self.op.name} returned {len(out)} records for {len(keys)}")
        yield from zip(keys, out, strict=True)

    def teardown(self) -> None:
        self.op.teardown()


class _Batches(beam.PTransform):
    """Keyed records -> lists of keyed records, as the operator's resources declare."""

    def __init__(self, size: int, concurrency: int | None = None) -> None:
        super().__init__()
        self.size = max(1, size)
        self.concurrency = concurrency

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if self.concurrency is not None:
            # n keys, each processed serially: at most n instances run at once.
            n = max(1, self.concurrency)
            return (
                pcoll
                | "Slot" >> beam.Map(lambda kv: (kv[0] % n, kv)).with_output_types(tuple[int, Any])
                | "GroupIntoBatches" >> beam.GroupIntoBatches(self.size)
                | "Batch" >> beam.Map(lambda kv: sorted(kv[1], key=lambda r: r[0]))
            )
        if self.size == 1:
            return pcoll | "Single" >> beam.Map(lambda kv: [kv])
        # Fixed size, not Beam's adaptive growth from 1: the operator chose its batch.
        return pcoll | "BatchElements" >> beam.BatchElements(
            min_batch_size=self.size, max_batch_size=self.size
        )


def _stage(pcoll: beam.PCollection, op: Operator) -> beam.PCollection:
    res = op.resources
    return (
        pcoll
        | f"Batch {op.name}" >> _Batches(res.batch_size, res.concurrency)
        | op.name >> beam.ParDo(OperatorDoFn(op))
    )


class _RouteByStatus(beam.DoFn):
    """Videos that failed before scoring leave as dead letters; they still get a row."""

    def __init__(self) -> None:
        self.faces = Metrics.counter(COUNTER_NAMESPACE, FACES_DETECTED)

    def process(self, kv: Keyed) -> Iterator[Any]:
        video: VideoFaces = kv[1]
        self.faces.inc(len(video.faces))
        if video.status in ERROR_STATUSES:
            yield TaggedOutput(DEAD_LETTER, kv)
        else:
            yield kv


class _CountStatus(beam.DoFn):
    """dfscan_videos_total by status, counted where the row is made."""

    def process(self, kv: Keyed) -> Iterator[Keyed]:
        row: VideoScan = kv[1]
        Metrics.counter(VIDEOS, VideoStatus(row.status).value).inc()
        yield kv


class ScorerModelHandler(ModelHandler[tuple[int, bytes], PredictionResult, Scorer]):
    """The project's Scorer as a RunInference model: (face index, JPEG) -> fake probability.

    The JPEGs are decoded with ``decode_crops``, as FaceScorer does, so both engines
    feed the network identical pixels. Each prediction carries its face's share of the
    forward pass time, so a video's ``score_s`` means what it means on the local runner.
    """

    def __init__(self, cfg: ScorerConfig, storage_options: Mapping[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        self.storage_options = dict(storage_options or {})
        self.seconds = Metrics.distribution(STAGE_NAMESPACE, FaceScorer.name)

    def load_model(self) -> Scorer:
        from operators.models.scorers import build_scorer

        return build_scorer(
            self.cfg.checkpoint,
            device=self.cfg.device,
            num_threads=self.cfg.num_threads,
            storage_options=self.storage_options or None,
            backend=self.cfg.backend,
        )

    def run_inference(
        self,
        batch: Sequence[tuple[int, bytes]],
        model: Scorer,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        from operators.score_faces import decode_crops

        t0 = time.perf_counter()
        crops = decode_crops([jpeg for _, jpeg in batch], model.input_size)
        probs = model.predict(crops)
        elapsed = time.perf_counter() - t0
        self.seconds.update(_micros(elapsed))
        share = elapsed / max(1, len(batch))
        # The JPEG is dropped from the result: nothing downstream needs the bytes again.
        return [
            PredictionResult(example=idx, inference=(float(p), share), model_id=model.model_version)
            for (idx, _), p in zip(batch, probs, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[tuple[int, bytes]]) -> int:
        return sum(len(jpeg) for _, jpeg in batch)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        # Full forward passes of the operator's size (a bundle's last one may be short),
        # not Beam's adaptive growth from 1, which would run dozens of tiny passes.
        size = self.cfg.batch_size
        return {"min_batch_size": size, "max_batch_size": size}

    def share_model_across_processes(self) -> bool:
        """One model per machine on GPU (one device, Beam starts a process per core);
        one per process on CPU, where a shared model would serialise every batch
        through a proxy process. Asked on the worker, which knows its own hardware."""
        if self.cfg.device == "cpu":
            return False
        import torch

        return self.cfg.device.startswith("cuda") or torch.cuda.is_available()


FaceScore = tuple[int, float, float, str]  # (face index, probability, seconds, model id)


class _FaceScores(beam.CombineFn):
    """The scores of one video's faces -> all of them in face order."""

    def create_accumulator(self) -> list[FaceScore]:
        return []

    def add_input(self, acc: list[FaceScore], item: FaceScore) -> list[FaceScore]:
        acc.append(item)
        return acc

    def merge_accumulators(self, accs: Iterable[list[FaceScore]]) -> list[FaceScore]:
        return [item for acc in accs for item in acc]

    def extract_output(self, acc: list[FaceScore]) -> tuple[FaceScore, ...]:
        return tuple(sorted(acc))


def _face_elements(kv: Keyed) -> Iterator[tuple[int, tuple[int, bytes]]]:
    key, video = kv
    for idx, face in enumerate(video.faces):
        yield key, (idx, face.jpeg)


def _face_score(key: int, pr: Any) -> tuple[int, FaceScore]:
    score, seconds = pr.inference  # as run_inference made it: (probability, seconds)
    return key, (pr.example, score, seconds, str(pr.model_id))


def _without_jpegs(kv: Keyed) -> Keyed:
    """The video record minus its crops: they are on their way to the model (and in the
    shard), and the join that follows should not shuffle them a second time."""
    key, video = kv
    faces = tuple(dataclasses.replace(f, jpeg=b"") for f in video.faces)
    return key, dataclasses.replace(video, faces=faces)


def _join_scores(kv: tuple[int, Mapping[str, Iterable[Any]]]) -> Keyed:
    key, groups = kv
    videos = list(groups["video"])
    scored = list(groups["scores"])
    if len(videos) != 1 or len(scored) > 1:
        raise RuntimeError(f"key {key}: {len(videos)} videos, {len(scored)} score lists")
    video: VideoFaces = videos[0]
    scores: tuple[FaceScore, ...] = scored[0] if scored else ()
    if [s[0] for s in scores] != list(range(len(video.faces))):
        raise RuntimeError(f"{video.ref.uri}: {len(scores)} scores for {len(video.faces)} faces")
    return key, ScoredVideo(
        video=video,
        scores=tuple(s[1] for s in scores),
        model_version=scores[0][3] if scores else "",  # no face: no model ran on it
        score_seconds=sum(s[2] for s in scores),
    )


def _unscored(kv: Keyed) -> Keyed:
    key, video = kv
    return key, ScoredVideo(video=video, scores=(), model_version="")


# --- results: hand-off files for the driver, rows for BigQuery ------------------------


def scan_record(row: VideoScan) -> dict[str, Any]:
    """A row as a dict for VIDEO_SCANS_SCHEMA (status as text, scanned_at as UTC time)."""
    d = {name: getattr(row, name) for name in VIDEO_SCANS_SCHEMA.names}
    d["status"] = VideoStatus(row.status).value
    d["scanned_at"] = datetime.fromtimestamp(row.scanned_at, tz=timezone.utc)
    return d


def scan_from_record(d: Mapping[str, Any]) -> VideoScan:
    values = dict(d)
    values["status"] = VideoStatus(values["status"])
    values["scanned_at"] = values["scanned_at"].timestamp()
    return VideoScan(**values)


@dataclass(frozen=True)
class ResultCodec:
    """How the records a pipeline ends with travel back to the driver: as Parquet with
    an explicit schema (plus the input position), written by Beam, read by the driver."""

    schema: pa.Schema
    to_record: Callable[[Any], dict[str, Any]]
    from_record: Callable[[Mapping[str, Any]], Any]

    def file_schema(self) -> pa.Schema:
        return self.schema.append(pa.field(INDEX_COLUMN, pa.int64(), nullable=False))


# The hash phase's output: a transient hand-off file, deleted once read, not a dataset.
_REFS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("mtime", pa.float64()),
        pa.field("uploaded_at", pa.float64()),
    ]
)

_SCANS = ResultCodec(VIDEO_SCANS_SCHEMA, scan_record, scan_from_record)
_REFS = ResultCodec(_REFS_SCHEMA, dataclasses.asdict, lambda d: VideoRef(**d))

# What each last operator of a list hands back, by its class.
RESULT_CODECS: dict[type[Operator], ResultCodec] = {
    VideoHasher: _REFS,
    VideoAggregator: _SCANS,
    WarehouseWriter: _SCANS,
}


# --- graph ----------------------------------------------------------------------------


@dataclass
class _Chain:
    """The graph under construction: the main records and the dead letters that skip
    the stages they cannot go through (shards, scoring)."""

    main: beam.PCollection
    warehouse_url: str | None
    dead_letters: list[beam.PCollection] = field(default_factory=list)
    scored: bool = False  # main holds ScoredVideo (a FaceScorer ran)

    def rejoin(self, label: str) -> None:
        """Flatten the dead letters back into the main records, typed like them."""
        if not self.dead_letters:
            return
        dead = self.dead_letters
        if self.scored:
            dead = [
                d | f"Dead letters {i} unscored before {label}" >> beam.Map(_unscored)
                for i, d in enumerate(dead)
            ]
        self.main = (self.main, *dead) | f"Dead letters rejoin before {label}" >> beam.Flatten()
        self.dead_letters = []


def _translate_extractor(chain: _Chain, op: FaceExtractor) -> None:
    routed = _stage(chain.main, op) | "Route" >> beam.ParDo(_RouteByStatus()).with_outputs(
        DEAD_LETTER, main="videos"
    )
    chain.main = routed.videos
    chain.dead_letters.append(routed[DEAD_LETTER])


def _translate_shards(chain: _Chain, op: FaceShardWriter) -> None:
    per_shard = max(1, op.resources.batch_size)
    chain.main = (
        chain.main
        # Same grouping as the local runner's batches: input position // shard size.
        | "Shard key" >> beam.Map(lambda kv: (kv[0] // per_shard, kv))
        | "Group shard" >> beam.GroupByKey()
        | "Shard batch" >> beam.Map(lambda kv: sorted(kv[1], key=lambda r: r[0]))
        | op.name >> beam.ParDo(OperatorDoFn(op))
    )


def _translate_scorer(chain: _Chain, op: FaceScorer) -> None:
    handler = ScorerModelHandler(op.cfg, op.storage_options)
    videos = chain.main
    scores = (
        videos
        | "Faces" >> beam.FlatMap(_face_elements)
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "Face scores" >> beam.MapTuple(_face_score)
        | "Scores per video" >> beam.CombinePerKey(_FaceScores())
    )
    chain.main = (
        {"video": videos | "Drop crops" >> beam.Map(_without_jpegs), "scores": scores}
        | "Join scores" >> beam.CoGroupByKey()
        | op.name >> beam.Map(_join_scores)
    )
    chain.scored = True


def _translate_aggregator(chain: _Chain, op: VideoAggregator) -> None:
    chain.rejoin(op.name)
    chain.main = _stage(chain.main, op) | "Count" >> beam.ParDo(_CountStatus())


def _translate_writer(chain: _Chain, op: WarehouseWriter) -> None:
    """Every warehouse, BigQuery included, through the same idempotent writer: an
    upsert (MERGE on BigQuery) per batch, so a retried bundle or a rerun job adds no
    row. Beam's WriteToBigQuery appends, which would duplicate rows on a retry."""
    chain.rejoin(op.name)
    url = chain.warehouse_url or op.url
    # Downstream (the driver) sees the rows the warehouse committed, not merely made.
    chain.main = _stage(
        chain.main, op if url == op.url else WarehouseWriter(url, op.rows_per_batch)
    )


# Operators whose place in the graph is more than a batched ParDo.
TRANSLATIONS: dict[type[Operator], Callable[[_Chain, Any], None]] = {
    FaceExtractor: _translate_extractor,
    FaceShardWriter: _translate_shards,
    FaceScorer: _translate_scorer,
    VideoAggregator: _translate_aggregator,
    WarehouseWriter: _translate_writer,
}


def result_codec(operators: Sequence[Operator]) -> ResultCodec:
    last = type(operators[-1]) if operators else None
    if last not in RESULT_CODECS:
        raise ValueError(f"the Beam runner cannot hand back what {last} produces")
    return RESULT_CODECS[last]


def results_prefix(results_uri: str) -> str:
    return results_uri.rstrip("/") + "/part"


def build_pipeline(
    pipeline: beam.Pipeline,
    items: Sequence[Any],
    operators: Sequence[Operator],
    *,
    results_uri: str,
    warehouse_url: str | None = None,
) -> beam.PCollection:
    """Add ``operators`` over ``items`` to ``pipeline``; return the last (key, record)s.

    The records are also written as Parquet under ``results_uri`` for the driver.
    ``warehouse_url`` overrides the WarehouseWriter's (any registered warehouse URL,
    ``bigquery://project/dataset`` included).
    """
    codec = result_codec(operators)
    chain = _Chain(pipeline | "Input" >> beam.Create(list(enumerate(items))), warehouse_url)
    for op in operators:
        translate = TRANSLATIONS.get(type(op))
        if translate is None:
            chain.main = _stage(chain.main, op)
        else:
            translate(chain, op)
    chain.rejoin("End")

    def record(kv: Keyed) -> dict[str, Any]:
        return {**codec.to_record(kv[1]), INDEX_COLUMN: kv[0]}

    _ = (
        chain.main
        | "Result records" >> beam.Map(record)
        | "WriteResults"
        >> beam.io.WriteToParquet(
            results_prefix(results_uri), codec.file_schema(), file_name_suffix=".parquet"
        )
    )
    return chain.main


# --- driver ---------------------------------------------------------------------------


def read_results(results_uri: str, codec: ResultCodec) -> list[tuple[int, Any]]:
    """(input position, record) from the Parquet a finished pipeline wrote, through
    Beam's filesystems, so any store the workers can write (gs://) the driver can read."""
    import pyarrow.parquet as pq

    pattern = results_prefix(results_uri) + "*.parquet"
    out: list[tuple[int, Any]] = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as fh:
            table = pq.read_table(io.BytesIO(fh.read()))
        for d in table.to_pylist():
            out.append((d.pop(INDEX_COLUMN), codec.from_record(d)))
    return sorted(out, key=lambda r: r[0])


def _delete_results(results_uri: str) -> None:
    """Remove the hand-off files (object stores have no directory to remove)."""
    pattern = results_prefix(results_uri) + "*"
    paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)


def stage_seconds(result: PipelineResult) -> dict[str, tuple[int, float]]:
    """Per stage: (calls, total seconds), summed over the steps that report the stage."""
    query = result.metrics().query(MetricsFilter().with_namespace(STAGE_NAMESPACE))
    out: dict[str, tuple[int, float]] = {}
    for res in query["distributions"]:
        value = res.committed if res.committed is not None else res.attempted
        if value is None or not value.count:
            continue
        calls, total = out.get(res.key.metric.name, (0, 0.0))
        out[res.key.metric.name] = (calls + value.count, total + value.sum / 1e6)
    return out


def mirror_stage_seconds(result: PipelineResult, metrics: ScanMetrics) -> None:
    """Copy stage timings into the driver's histogram.

    A Beam distribution keeps count, sum, min and max only, so each call is observed
    at the stage's mean: ``_count`` and ``_sum`` (what rates and averages use) are
    exact, the spread over buckets is not.
    """
    for stage, (calls, total) in sorted(stage_seconds(result).items()):
        for _ in range(calls):
            metrics.observe_stage(stage, total / calls)


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner the options name, or the in-process FnApiRunner.

    Given no ``--runner``, Beam would pick its default (Prism, downloaded on first
    use); the in-process runner needs nothing from the network, and with its default
    single worker a DuckDB warehouse has exactly one writing process.
    """
    if options.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


class BeamRunner:
    """Runs an operator list as a Beam pipeline; yields its results in input order.

    Results come back through Parquet files that the pipeline writes under
    ``--temp_location`` (Dataflow requires one; a local temporary directory for the
    in-process runner) and the driver reads and deletes. Querying the warehouse instead
    would not work for every list (the hash phase writes no rows), every sink (BigQuery
    from the driver needs credentials and a client) or duplicate content (two files
    with the same bytes share one warehouse row but are two results).
    """

    name = "beam"

    def __init__(self, engine: EngineConfig) -> None:
        self.engine = engine
        # Untouched: Beam parses its own options, as it would from sys.argv.
        self.options = PipelineOptions(list(engine.beam_args))

    def run(
        self, items: Sequence[Any], operators: list[Operator], metrics: ScanMetrics
    ) -> Iterator[Any]:
        items = list(items)
        codec = result_codec(operators)
        temp: str | None = self.options.view_as(GoogleCloudOptions).temp_location
        local_tmp = None if temp else tempfile.mkdtemp(prefix="dfscan-beam-")
        base = temp or local_tmp
        assert base is not None
        results_uri = FileSystems.join(base, f"dfscan-results-{uuid.uuid4().hex}")
        try:
            pipeline = make_pipeline(self.options)
            build_pipeline(pipeline, items, operators, results_uri=results_uri)
            try:
                result = pipeline.run()
                result.wait_until_finish()
            except RuntimeError as err:
                # Ctrl-C lands in a bundle, and the in-process runner re-raises it as
                # "KeyboardInterrupt [while running ...]": an interrupt, as on the others.
                if str(err).startswith("KeyboardInterrupt"):
                    raise KeyboardInterrupt from None
                raise
            mirror_stage_seconds(result, metrics)
            results = read_results(results_uri, codec)
        finally:
            if local_tmp:
                shutil.rmtree(local_tmp, ignore_errors=True)
            else:
                _delete_results(results_uri)
        if [i for i, _ in results] != list(range(len(items))):
            raise RuntimeError(f"the Beam pipeline returned {len(results)} of {len(items)}")
        yield from (record for _, record in results)
