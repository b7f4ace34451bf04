"""The scheduler, with a fake model that records batch composition.

Time is a FakeClock (tests/clocks.py) that only the test or the fake model moves, and the tests
wait for events (a forward pass entered, pairs admitted), never for the wall: nothing here
depends on how fast a loaded machine runs.
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from reranker_serve.batcher import Batcher
from reranker_serve.errors import ErrorKind, RerankError
from reranker_serve.models.base import Pair
from clocks import FakeClock
from fakes import FakeModel, fake_score

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend():
    return "asyncio"


def pairs(*lengths: int, token: int = 5) -> list[Pair]:
    return [Pair([token + i] * n) for i, n in enumerate(lengths)]


def make(model: FakeModel, **kw) -> Batcher:
    opts = dict(max_batch_tokens=64, max_batch_size=8, max_queue=100, clock=model.clock or FakeClock())
    opts.update(kw)
    b = Batcher(model.forward, **opts)
    b.start()
    return b


async def entered(model: FakeModel) -> None:
    """Until the worker is inside a forward pass (a thread event, waited off the loop)."""
    assert await asyncio.to_thread(model.entered.wait, 30), "the worker never ran a batch"


async def admitted(batcher: Batcher, queued: int) -> None:
    """Until ``queued`` pairs are admitted: submissions scheduled as tasks run up to their wait
    within a few turns of the loop (admission itself never waits)."""
    for _ in range(1000):
        if batcher.queued_pairs >= queued:
            break
        await asyncio.sleep(0)
    assert batcher.queued_pairs == queued


async def hold(model: FakeModel, batcher: Batcher) -> asyncio.Task:
    """Occupy the worker with a one-pair job, so later submissions queue up together."""
    model.gate.clear()
    model.entered.clear()
    task = asyncio.ensure_future(batcher.submit([Pair([999])], timeout=30))
    await entered(model)
    return task


async def test_concurrent_requests_share_batches_and_map_back():
    clock = FakeClock()
    model = FakeModel(delay=0.01, clock=clock)  # each pass "takes" 10 ms of the fake clock
    batcher = make(model)
    blocker = await hold(model, batcher)
    jobs = [pairs(3, 4, 2, token=10 * k) for k in range(1, 4)]
    tasks = [asyncio.ensure_future(batcher.submit(j, timeout=30)) for j in jobs]
    await admitted(batcher, 1 + 9)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    for job, result in zip(jobs, results):
        assert result.scores == [fake_score(p) for p in job]
        assert result.inference_time > 0 and result.queue_time >= 0
    mixed = [b for b in model.batches[1:] if len({p.ids[0] // 10 for p in b}) > 1]
    assert mixed, f"no batch mixed requests: {[[p.ids for p in b] for b in model.batches]}"
    batcher.close()


async def test_token_budget_and_size_cap_hold():
    model = FakeModel()
    batcher = make(model, max_batch_tokens=40, max_batch_size=3)
    blocker = await hold(model, batcher)
    lengths = [1, 20, 5, 13, 7, 2, 9, 19, 3, 11, 4, 6, 8]
    tasks = [asyncio.ensure_future(batcher.submit(pairs(*lengths[i::3], token=100 * (i + 1)), timeout=30))
             for i in range(3)]
    await admitted(batcher, 1 + len(lengths))
    model.gate.set()
    await asyncio.gather(*tasks, blocker)
    for batch in model.batches:
        assert len(batch) <= 3
        assert len(batch) * max(len(p) for p in batch) <= 40
    assert sum(len(b) for b in model.batches) == len(lengths) + 1
    # Length-sorted: padding stays small (each batch's pairs are neighbours in length).
    padded = sum(len(b) * max(len(p) for p in b) for b in model.batches)
    assert padded <= 1.35 * (sum(lengths) + 1)
    batcher.close()


async def test_oversized_pair_runs_alone():
    model = FakeModel()
    batcher = make(model, max_batch_tokens=16)
    result = await batcher.submit(pairs(50, 3), timeout=30)
    assert len(result.scores) == 2
    assert [len(b) for b in model.batches] == [1, 1]
    batcher.close()


async def test_failure_fails_only_the_affected_request_and_the_engine_recovers():
    model = FakeModel(fail_on=666)
    batcher = make(model, max_batch_size=2)
    blocker = await hold(model, batcher)
    poisoned = asyncio.ensure_future(batcher.submit([Pair([666] * 30), Pair([1] * 30)], timeout=30))
    healthy = asyncio.ensure_future(batcher.submit([Pair([2] * 3), Pair([3] * 2)], timeout=30))
    await admitted(batcher, 1 + 4)
    model.gate.set()
    with pytest.raises(RerankError) as info:
        await poisoned
    assert info.value.kind is ErrorKind.BACKEND and "simulated kernel failure" in info.value.message
    assert (await healthy).scores == [fake_score(Pair([2] * 3)), fake_score(Pair([3] * 2))]
    await blocker
    assert batcher.queued_pairs == 0
    again = await batcher.submit(pairs(4, 5), timeout=30)
    assert len(again.scores) == 2
    batcher.close()


async def test_queue_full_is_overloaded_with_retry_after():
    model = FakeModel()
    batcher = make(model, max_queue=10)
    blocker = await hold(model, batcher)
    waiting = asyncio.ensure_future(batcher.submit(pairs(1, 1, 1, 1, 1, 1, 1, 1), timeout=30))
    await admitted(batcher, 1 + 8)
    with pytest.raises(RerankError) as info:
        await batcher.submit(pairs(1, 1, 1), timeout=30)
    assert info.value.kind is ErrorKind.OVERLOADED and info.value.kind.status == 429
    assert int(info.value.headers["Retry-After"]) >= 1
    model.gate.set()
    await asyncio.gather(waiting, blocker)
    assert len((await batcher.submit(pairs(1, 1, 1), timeout=30)).scores) == 3  # room again
    batcher.close()


async def test_deadline_is_a_timeout_and_its_pairs_are_dropped():
    clock = FakeClock()
    model = FakeModel(clock=clock)
    batcher = make(model)
    blocker = await hold(model, batcher)
    late = asyncio.ensure_future(batcher.submit([Pair([42, 42])], timeout=0.05))
    await admitted(batcher, 1 + 1)
    clock.advance(0.06)  # past its deadline while the worker is still busy
    with pytest.raises(RerankError) as info:
        await late
    assert info.value.kind is ErrorKind.TIMEOUT and info.value.kind.status == 504
    model.gate.set()
    await blocker
    await batcher.submit([Pair([1])], timeout=30)
    assert (42, 42) not in model.scored_ids()
    assert batcher.queued_pairs == 0
    batcher.close()


async def test_cancelled_request_is_skipped():
    model = FakeModel()
    batcher = make(model)
    blocker = await hold(model, batcher)
    gone = asyncio.ensure_future(batcher.submit([Pair([77] * 5), Pair([78] * 4)], timeout=30))
    kept = asyncio.ensure_future(batcher.submit([Pair([5] * 5)], timeout=30))
    await admitted(batcher, 1 + 3)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone  # its pairs are dropped when the cancellation reaches it
    model.gate.set()
    await asyncio.gather(kept, blocker)
    scored = model.scored_ids()
    assert (5,) * 5 in scored and (77,) * 5 not in scored and (78,) * 4 not in scored
    assert batcher.queued_pairs == 0
    batcher.close()


async def test_out_of_memory_retries_in_halves():
    model = FakeModel(oom_above=2)
    batcher = make(model, max_batch_size=8, is_oom=lambda e: "out of memory" in str(e))
    job = pairs(2, 2, 2, 2, 2, 2)
    result = await batcher.submit(job, timeout=30)
    assert result.scores == [fake_score(p) for p in job]
    assert all(len(b) <= 2 for b in model.batches)
    batcher.close()


async def test_close_fails_waiting_requests():
    model = FakeModel()
    batcher = make(model)
    blocker = await hold(model, batcher)
    waiting = asyncio.ensure_future(batcher.submit(pairs(3), timeout=30))
    await admitted(batcher, 1 + 1)
    closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))  # joins the busy worker
    with pytest.raises(RerankError) as info:
        await waiting  # failed by close() before it joins the worker
    assert info.value.kind is ErrorKind.NOT_READY
    model.gate.set()
    await closing
    await blocker  # the batch in flight still finishes
    with pytest.raises(RerankError, match="shutting down"):
        await batcher.submit(pairs(1), timeout=1)


async def test_request_that_cannot_meet_its_deadline_is_refused_at_once():
    clock = FakeClock()
    model = FakeModel(delay=0.05, clock=clock)  # a pass "takes" 50 ms: 20 batches/s
    batcher = make(model, max_batch_size=1, max_queue=1000)
    await batcher.submit(pairs(1, 1), timeout=30)  # the batcher learns its rate (20 pairs/s)
    blocker = await hold(model, batcher)
    backlog = asyncio.ensure_future(batcher.submit(pairs(*[1] * 40), timeout=30))  # 2 s of work
    await admitted(batcher, 1 + 40)
    started = clock.now()
    with pytest.raises(RerankError) as info:
        # Fair queuing: it would share the model with the backlog, 15 + 15 pairs at 20/s.
        await batcher.submit(pairs(*[1] * 15, token=500), timeout=0.5)
    assert info.value.kind is ErrorKind.OVERLOADED and "request timeout" in info.value.message
    assert int(info.value.headers["Retry-After"]) >= 1
    assert clock.now() == started and batcher.queued_pairs == 1 + 40  # refused at once: no time, no queue
    model.gate.set()
    await asyncio.gather(backlog, blocker)
    assert not any(500 <= p.ids[0] < 515 for b in model.batches for p in b)  # none of its pairs computed
    batcher.close()


async def test_unpadded_batches_count_real_tokens():
    # A packed batch costs its real tokens: pairs of very different lengths share one batch
    # where the padded budget (pairs × longest) would split them.
    model = FakeModel()
    batcher = make(model, max_batch_tokens=40, max_batch_size=100, padded=False)
    blocker = await hold(model, batcher)
    lengths = [20, 2, 3, 1, 4, 2, 15, 5, 3]
    task = asyncio.ensure_future(batcher.submit(pairs(*lengths), timeout=30))
    await admitted(batcher, 1 + len(lengths))
    model.gate.set()
    result = await task
    await blocker
    assert result.scores == [fake_score(p) for p in pairs(*lengths)]
    batches = model.batches[1:]
    assert all(sum(len(p) for p in b) <= 40 for b in batches)
    assert sum(len(b) for b in batches) == len(lengths)
    assert any(len(b) * max(len(p) for p in b) > 40 for b in batches), [[len(p) for p in b] for b in batches]
    batcher.close()


class _Launched:
    def __init__(self, model: "PipelinedFake", index: int, batch: list[Pair]) -> None:
        self.model, self.index, self.batch = model, index, batch

    def result(self) -> list[float]:
        self.model.events.append(("collect", self.index))
        if self.model.fail_on is not None and any(self.model.fail_on in p.ids for p in self.batch):
            raise RuntimeError("simulated kernel failure")
        return [fake_score(p) for p in self.batch]


class PipelinedFake(FakeModel):
    """A device that computes asynchronously: launch returns at once, result() collects."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple[str, int]] = []

    def launch(self, batch):
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        index = len(self.batches)
        self.batches.append(list(batch))
        self.events.append(("launch", index))
        return _Launched(self, index, list(batch))


async def test_the_next_batch_is_launched_before_the_last_ones_scores_are_collected():
    model = PipelinedFake()
    batcher = make(model, max_batch_size=2, launch=model.launch, depth=2)
    job = pairs(3, 3, 3, 3, 3, 3)
    result = await batcher.submit(job, timeout=30)
    assert result.scores == [fake_score(p) for p in job]
    assert model.events == [("launch", 0), ("launch", 1), ("collect", 0), ("launch", 2), ("collect", 1),
                            ("collect", 2)]
    batcher.close()


async def test_a_pipelined_failure_fails_only_its_batch_and_oom_splits():
    model = PipelinedFake(fail_on=666, oom_above=2)
    batcher = make(model, max_batch_size=1, max_batch_tokens=1000, launch=model.launch, depth=2,
                   is_oom=lambda e: "out of memory" in str(e))
    bad, good = [Pair([666] * 5)], pairs(4, 4)
    results = await asyncio.gather(batcher.submit(bad, timeout=30), batcher.submit(good, timeout=30),
                                   return_exceptions=True)
    assert isinstance(results[0], RerankError) and results[0].kind is ErrorKind.BACKEND
    assert results[1].scores == [fake_score(p) for p in good]
    # Too big to launch: the batch is retried in halves through forward (synchronously).
    big = pairs(2, 2, 2, 2)
    batcher.max_batch_size = 4
    assert (await batcher.submit(big, timeout=30)).scores == [fake_score(p) for p in big]
    batcher.close()


# -- priorities ------------------------------------------------------------------------------------
def _pairs(n: int, token: int) -> list:
    return [Pair([token] * 4, doc=i) for i in range(n)]


def _held(model: FakeModel, **options: object) -> Batcher:
    """A started batcher of two-pair batches whose first forward pass waits for model.gate."""
    model.gate.clear()
    model.entered.clear()
    options = {"max_batch_tokens": 1000, "max_batch_size": 2, "max_queue": 100, **options}
    options.setdefault("clock", model.clock or FakeClock())
    batcher = Batcher(model.forward, **options)
    batcher.start()
    return batcher


def _run(batcher: Batcher, scenario) -> object:
    try:
        return asyncio.run(scenario())
    finally:
        batcher.close()


def test_interactive_pairs_go_before_a_batch_flood():
    model = FakeModel()
    batcher = _held(model)  # the first batch waits until everything is queued

    async def scenario() -> list[str]:
        finished: list[str] = []

        async def run(name: str, pairs: list, priority: str) -> None:
            await batcher.submit(pairs, priority=priority)
            finished.append(name)

        flood = asyncio.ensure_future(run("batch", _pairs(12, 7), "batch"))
        await entered(model)  # the flood is admitted and its first batch is held in forward()
        chat = asyncio.ensure_future(run("interactive", _pairs(2, 9), "interactive"))
        await admitted(batcher, 12 + 2)
        model.gate.set()
        await asyncio.gather(flood, chat)
        return finished

    finished = _run(batcher, scenario)
    assert finished == ["interactive", "batch"]
    # The interactive pairs rode in the second batch, right after the one already in flight.
    assert [p.ids[0] for p in model.batches[1]] == [9, 9]


def test_batch_work_that_waited_long_enough_is_served_first():
    clock = FakeClock()
    model = FakeModel(clock=clock)
    batcher = _held(model, bulk_max_wait=0.05)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(_pairs(1, 1), priority="interactive"))  # held in forward()
        await entered(model)
        old = asyncio.ensure_future(batcher.submit(_pairs(2, 7), priority="batch"))
        await admitted(batcher, 1 + 2)
        clock.advance(0.1)  # older than bulk_max_wait now
        new = asyncio.ensure_future(batcher.submit(_pairs(2, 9), priority="interactive"))
        await admitted(batcher, 1 + 2 + 2)
        model.gate.set()
        await asyncio.gather(first, old, new)

    _run(batcher, scenario)
    assert [p.ids[0] for p in model.batches[1]] == [7, 7]  # aged batch work went before the new request


def test_batch_work_that_has_not_waited_long_enough_goes_after_interactive():
    # The counterpart of the test above, the same scenario without the clock moving: the rule
    # is the age, not the order of arrival.
    model = FakeModel()
    batcher = _held(model, bulk_max_wait=0.05)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(_pairs(1, 1), priority="interactive"))
        await entered(model)
        old = asyncio.ensure_future(batcher.submit(_pairs(2, 7), priority="batch"))
        await admitted(batcher, 1 + 2)
        new = asyncio.ensure_future(batcher.submit(_pairs(2, 9), priority="interactive"))
        await admitted(batcher, 1 + 2 + 2)
        model.gate.set()
        await asyncio.gather(first, old, new)

    _run(batcher, scenario)
    assert [p.ids[0] for p in model.batches[1]] == [9, 9]


def test_batch_work_cannot_fill_the_room_kept_for_interactive_requests():
    model = FakeModel()
    batcher = _held(model, max_queue=20, bulk_queue_share=0.5)

    async def scenario() -> None:
        held = asyncio.ensure_future(batcher.submit(_pairs(8, 7), priority="batch"))
        await entered(model)
        with pytest.raises(RerankError) as refused:
            await batcher.submit(_pairs(4, 7), priority="batch")  # 8 + 4 > 10 kept for batch work
        assert refused.value.kind is ErrorKind.OVERLOADED and "batch work may fill 10 of the 20" in refused.value.message
        chat = asyncio.ensure_future(batcher.submit(_pairs(4, 9), priority="interactive"))  # fits the rest
        await admitted(batcher, 8 + 4)
        model.gate.set()
        await asyncio.gather(held, chat)

    _run(batcher, scenario)


def _reference_batches(jobs: list[tuple[list[int], int]], *, padded: bool, max_batch_tokens: int,
                       max_batch_size: int) -> list[list[tuple[int, int]]]:
    """The selection rule written the plain way (sort every waiting pair), for jobs given as
    (pair lengths, urgency) in admission order: the (length, job) of each batch's pairs."""
    remaining = [list(lengths) for lengths, _ in jobs]
    served = [0] * len(jobs)
    out = []
    while any(remaining):
        live = [k for k in range(len(jobs)) if remaining[k]]
        seed = min(live, key=lambda k: (jobs[k][1], served[k], k))
        width = max(remaining[seed])
        waiting = sorted((jobs[k][1], -n, k) for k in live for n in remaining[k] if n <= width)
        if padded:
            picks = waiting[: max(1, min(max_batch_size, max_batch_tokens // width))]
        else:
            picks, tokens = [], 0
            for pick in waiting[:max_batch_size]:
                tokens -= pick[1]
                if picks and tokens > max_batch_tokens:
                    break
                picks.append(pick)
        for _, neg, k in picks:
            remaining[k].remove(-neg)
            served[k] += width if padded else -neg
        out.append(sorted((-neg, k) for _, neg, k in picks))
    return out


@pytest.mark.parametrize("padded", [True, False])
def test_batch_selection_follows_the_rule_on_random_queues(padded):
    # The batcher picks from per-job length orders by a merge; whatever it picks must be exactly
    # what sorting every waiting pair by (class, length, age) and filling the budget would pick.
    rng = random.Random(7)
    for trial in range(30):
        model = FakeModel()
        budget, size = rng.choice([64, 256, 1024]), rng.choice([4, 8, 32])
        # bulk_max_wait 0: bulk work counts as aged at once (interactive); 10 s: never, here.
        aged = trial % 3 == 0
        batcher = _held(model, max_batch_tokens=budget, max_batch_size=size, max_queue=10_000, padded=padded,
                        bulk_max_wait=0.0 if aged else 10.0)
        jobs = [([rng.randint(1, 200) for _ in range(rng.randint(1, 20))], rng.random() < 0.4)
                for _ in range(rng.randint(1, 12))]

        async def scenario() -> None:
            blocker = asyncio.ensure_future(batcher.submit([Pair([9999])]))  # held in forward()
            await entered(model)
            tasks = [asyncio.ensure_future(batcher.submit([Pair([k] * n) for n in lengths],
                                                          priority="batch" if bulk else "interactive"))
                     for k, (lengths, bulk) in enumerate(jobs)]
            await admitted(batcher, 1 + sum(len(lengths) for lengths, _ in jobs))
            model.gate.set()
            results = await asyncio.gather(blocker, *tasks)
            for (lengths, _), result in zip(jobs, results[1:]):
                assert len(result.scores) == len(lengths)

        _run(batcher, scenario)
        expected = _reference_batches([(lengths, int(bulk and not aged)) for lengths, bulk in jobs],
                                      padded=padded, max_batch_tokens=budget, max_batch_size=size)
        got = [sorted((len(p), p.ids[0]) for p in batch) for batch in model.batches[1:]]
        assert got == expected, trial


class _Launcher:
    """A device that computes asynchronously: launch returns at once, result() "takes" ``delay``
    seconds of the fake clock from its launch."""

    def __init__(self, delay: float, clock: FakeClock) -> None:
        self.delay, self.clock, self.events = delay, clock, []

    def launch(self, pairs):
        number = sum(1 for kind, _ in self.events if kind == "launch") + 1
        self.events.append(("launch", number))
        started, launcher = self.clock.now(), self

        class Pending:
            def result(self) -> list[float]:
                launcher.clock.advance(max(0.0, launcher.delay - (launcher.clock.now() - started)))
                launcher.events.append(("done", number))
                return [fake_score(p) for p in pairs]

        return Pending()

    def most_in_flight(self, *, after_first: bool = False) -> int:
        events = self.events[self.events.index(("done", 1)):] if after_first else self.events
        flying, most = (1 if after_first else 0), 0
        for kind, _ in events[1:] if after_first else events:
            flying += 1 if kind == "launch" else -1
            most = max(most, flying)
        return most


@pytest.mark.parametrize("ahead_below,expected", [(None, 2), (1.0, 2), (0.005, 1)])
def test_batches_are_launched_ahead_only_while_they_are_short(ahead_below, expected):
    clock = FakeClock()
    launcher = _Launcher(delay=0.02, clock=clock)
    batcher = Batcher(lambda p: [fake_score(x) for x in p], launch=launcher.launch, depth=2, ahead_below=ahead_below,
                      max_batch_tokens=64, max_batch_size=1, max_queue=100, clock=clock)
    batcher.start()

    async def scenario():
        return await batcher.submit(pairs(3, 4, 5, 6, 7, 8), timeout=30)

    try:
        scored = asyncio.run(scenario())
    finally:
        batcher.close()
    assert scored.scores == [fake_score(p) for p in pairs(3, 4, 5, 6, 7, 8)]
    # Once a batch has been timed (20 ms), a 5 ms threshold keeps one batch at a time.
    assert launcher.most_in_flight(after_first=True) == expected


def test_a_huge_request_is_split_and_a_small_one_arriving_behind_it_rides_the_next_batch():
    """Issue 21: a 725k-token request held the engine for a minute and a 3-document request
    waited behind all of it. Its pairs are now taken a batch at a time, and the least served
    request seeds each batch: the small request goes right after the batch in flight, and
    while both wait they share the model (fair queuing on tokens), the oldest first."""
    model = FakeModel()
    batcher = _held(model, max_batch_tokens=64, max_batch_size=8, max_queue=1000)

    async def scenario() -> None:
        huge = asyncio.ensure_future(batcher.submit([Pair([7] * 32) for _ in range(200)]))  # 100 batches of 2
        await entered(model)  # its first batch is held in forward()
        small = asyncio.ensure_future(batcher.submit([Pair([9] * 20) for _ in range(3)]))
        await admitted(batcher, 200 + 3)
        model.gate.set()
        await asyncio.gather(huge, small)

    _run(batcher, scenario)
    firsts = [batch[0].ids[0] for batch in model.batches]
    assert firsts[0] == 7 and firsts[1] == 9, firsts[:4]  # the next batch after the one in flight
    assert sum(len(b) for b in model.batches if b[0].ids[0] == 9) == 3
    assert len(model.batches) == 101  # the small one's 3 pairs (3 x 20 tokens) made one batch


class _Stepped(FakeModel):
    """A model that runs one forward pass per ``step()``: the test decides what arrives between two."""

    def __init__(self) -> None:
        super().__init__()
        self._steps = threading.Semaphore(0)
        self._taken = threading.Semaphore(0)
        self.free = False

    def forward(self, batch):
        self.batches.append(list(batch))
        self._taken.release()
        if not self.free:
            self._steps.acquire(timeout=30)
        return [fake_score(p) for p in batch]

    async def next_batch_taken(self) -> None:
        assert await asyncio.to_thread(self._taken.acquire, True, 30)

    def step(self) -> None:
        self._steps.release()

    def run_free(self) -> None:
        self.free = True
        self._steps.release()


def test_newcomers_do_not_starve_an_old_request():
    """The virtual clock: a request admitted later starts at the tokens served so far, so the
    old request keeps getting its share while new ones keep arriving."""
    model = _Stepped()
    batcher = Batcher(model.forward, max_batch_tokens=64, max_batch_size=2, max_queue=10_000, clock=FakeClock())
    batcher.start()

    async def scenario() -> list[list[Pair]]:
        old = asyncio.ensure_future(batcher.submit([Pair([1] * 32) for _ in range(40)]))
        await model.next_batch_taken()  # its first batch is in forward()
        newcomers = []
        for _ in range(10):  # a new small request before every batch
            newcomers.append(asyncio.ensure_future(batcher.submit([Pair([2] * 32) for _ in range(4)])))
            await admitted(batcher, 40 + 4 * len(newcomers) - 2 * (len(model.batches) - 1))
            model.step()
            await model.next_batch_taken()
        model.run_free()
        await asyncio.gather(old, *newcomers)
        return model.batches[1:11]

    batches = _run(batcher, scenario)
    served_old = sum(1 for batch in batches if any(p.ids[0] == 1 for p in batch))
    assert served_old >= 3, [[p.ids[0] for p in b] for b in batches]  # the old request was served along the way
