"""The local engine: order, overlap of stages, failures, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from operators.base import Operator, Resources
from operators.metrics import ScanMetrics
from pipelines.local import LocalRunner


class AddOne(Operator[int, int]):
    name = "add_one"

    def __init__(self, batch: int = 3, delay: float = 0.0) -> None:
        self.batch, self.delay = batch, delay
        self.setups = self.teardowns = 0
        self.threads: set[str] = set()

    @property
    def resources(self) -> Resources:
        return Resources(batch_size=self.batch)

    def setup(self) -> None:
        self.setups += 1

    def teardown(self) -> None:
        self.teardowns += 1

    def process_batch(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [i + 1 for i in items]


class Boom(AddOne):
    name = "boom"

    def process_batch(self, items: list[int]) -> list[int]:
        if 5 in items:
            raise RuntimeError("operator bug")
        return items


@pytest.mark.parametrize("threaded", [True, False])
def test_every_item_comes_out_once_in_order(threaded: bool):
    ops = [AddOne(3), AddOne(2), AddOne(5)]
    out = list(LocalRunner(threaded).run(range(20), ops, ScanMetrics()))
    assert out == [i + 3 for i in range(20)]
    assert all(op.setups == 1 and op.teardowns == 1 for op in ops)


def test_stages_run_in_their_own_threads_and_overlap():
    first, second = AddOne(1, delay=0.02), AddOne(1, delay=0.02)
    first.name, second.name = "first", "second"
    spans: dict[str, list[tuple[float, float]]] = {"first": [], "second": []}
    for op in (first, second):
        inner = op.process_batch

        def timed(items: list[int], op: AddOne = op, inner=inner) -> list[int]:
            t0 = time.perf_counter()
            out = inner(items)
            spans[op.name].append((t0, time.perf_counter()))
            return out

        op.process_batch = timed  # type: ignore[method-assign]
    assert len(list(LocalRunner(True).run(range(10), [first, second], ScanMetrics()))) == 10
    assert first.threads == {"dfscan-first-0"} and second.threads == {"dfscan-second-0"}
    # Some batch of the second stage ran while the first stage was working on another.
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["first"] for b0, b1 in spans["second"])


def test_a_stage_whose_input_is_spent_is_torn_down_while_later_stages_still_work():
    """Decode workers are released once the last video is decoded, not after the last
    part is scored: their exit overlaps the work still going on."""
    first, slow_last = AddOne(4), AddOne(1, delay=0.05)
    seen: list[tuple[int, int]] = []  # (item, first's teardowns when the item came out)
    for item in LocalRunner(True).run(range(8), [first, slow_last], ScanMetrics()):
        seen.append((item, first.teardowns))
    assert [i for i, _ in seen] == [i + 2 for i in range(8)]
    assert seen[-1][1] == 1  # torn down before the last item was through the slow stage
    assert (first.teardowns, slow_last.teardowns) == (1, 1)  # once each, not again at the end


def test_a_bug_in_an_operator_stops_the_run_and_is_raised():
    ops = [AddOne(2), Boom(2), AddOne(2)]
    with pytest.raises(RuntimeError, match="operator bug"):
        list(LocalRunner(True).run(range(100), ops, ScanMetrics()))
    assert all(op.teardowns == 1 for op in ops)
    assert not [t for t in threading.enumerate() if t.name.startswith("dfscan-")]


def test_consumer_stopping_early_releases_every_stage():
    ops = [AddOne(1), AddOne(1)]
    gen = LocalRunner(True).run(range(1000), ops, ScanMetrics())
    assert next(gen) == 2
    gen.close()
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("dfscan-")]
    assert all(op.teardowns == 1 for op in ops)


class BadSetup(AddOne):
    name = "bad_setup"

    def setup(self) -> None:
        raise RuntimeError("model file missing")


@pytest.mark.parametrize("threaded", [True, False])
def test_a_failing_setup_tears_down_the_operators_already_set_up(threaded: bool):
    first, bad, last = AddOne(), BadSetup(), AddOne()
    with pytest.raises(RuntimeError, match="model file missing"):
        list(LocalRunner(threaded).run(range(3), [first, bad, last], ScanMetrics()))
    assert (first.setups, first.teardowns) == (1, 1)  # e.g. a decode worker process
    assert bad.teardowns == 0
    # Threaded, the operators are set up side by side: the last one too, and torn down.
    assert (last.setups, last.teardowns) == ((1, 1) if threaded else (0, 0))
    assert not [t for t in threading.enumerate() if t.name.startswith("dfscan-")]


class SlowSetup(AddOne):
    name = "slow_setup"

    def setup(self) -> None:
        time.sleep(0.5)
        super().setup()


def test_a_stage_starts_when_its_own_setup_is_done_not_the_slowest():
    """The decode workers decode while the classifier is still loading."""
    first, slow = AddOne(1), SlowSetup(1)
    started: list[float] = []
    inner = first.process_batch

    def timed(items: list[int]) -> list[int]:
        started.append(time.perf_counter())
        return inner(items)

    first.process_batch = timed  # type: ignore[method-assign]
    t0 = time.perf_counter()
    out = list(LocalRunner(True).run(range(4), [first, slow], ScanMetrics()))
    assert out == [2, 3, 4, 5]
    assert started and started[0] - t0 < 0.4  # not after the slow setup's 0.5 s
    assert time.perf_counter() - t0 >= 0.5


class TwoAtOnce(AddOne):
    """Serves two calls at once, as the extractor does with two decode workers."""

    name = "two_at_once"

    def __init__(self) -> None:
        super().__init__(batch=1, delay=0.05)
        self.active = self.peak = 0
        self.lock = threading.Lock()

    @property
    def resources(self) -> Resources:
        return Resources(batch_size=1, threads=2)

    def process_batch(self, items: list[int]) -> list[int]:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return super().process_batch(items)
        finally:
            with self.lock:
                self.active -= 1


def test_an_operator_serving_two_calls_gets_two_threads_and_each_item_once():
    op, after = TwoAtOnce(), AddOne(3)
    out = list(LocalRunner(True).run(range(20), [op, after], ScanMetrics()))
    assert sorted(out) == [i + 2 for i in range(20)]  # order is not kept across threads
    assert op.threads == {"dfscan-two_at_once-0", "dfscan-two_at_once-1"}
    assert op.peak == 2
    assert (op.setups, op.teardowns) == (1, 1)
    assert not [t for t in threading.enumerate() if t.name.startswith("dfscan-")]


def in_flight(metrics: ScanMetrics) -> float:
    return metrics.registry.get_sample_value("dfscan_videos_in_flight") or 0.0


@pytest.mark.parametrize("threaded", [True, False])
def test_in_flight_gauge_counts_videos_taken_and_not_yet_out(threaded: bool):
    metrics = ScanMetrics()
    seen = []
    for item in LocalRunner(threaded).run(range(12), [AddOne(4), AddOne(2)], metrics):
        # The item in hand is out; the first stage's batch of 4 was taken with it.
        seen.append(in_flight(metrics))
        assert item >= 2
    assert max(seen) >= 3 and min(seen) >= 0
    assert in_flight(metrics) == 0  # every video taken came out
