"""The scheduler between requests and the model: pairs from all requests, packed into
length-sorted batches under a padded-token budget, run by one worker thread: one batch at a
time, or, where the device computes asynchronously (CUDA; OpenVINO while batches are short),
the next batch launched while the last one computes.

Why this shape (measured in docs/benchmarks.md): on CPU most of the throughput comes from
(1) never padding a 20-token pair to 400 tokens, (2) batches sized by tokens, not pair count,
and (3) letting concurrent requests fill each other's batches. The event loop never runs the
model; it only admits work (or answers 429 when the queue is full) and awaits a future.

Batch selection (fair queuing on tokens): the waiting request of the most urgent class that
has been served the fewest tokens seeds each batch with its longest remaining pair (length L);
the batch is then filled with waiting pairs of length <= L from any request, the urgent class
first and the longest first within a class, while (pairs x L) stays within ``max_batch_tokens``
and the pair count within ``max_batch_size``. For a model that runs unpadded (packed tokens,
variable-length attention) the budget counts real tokens instead.

Why "served the fewest tokens": a request's pairs are taken a batch at a time, so a huge
request (a 725k-token one: 40 documents of 16 KB chunked 100 ways) is split into many batches,
and a request arriving behind it seeds the very next batch instead of waiting for all of them.
A request starts with the tokens served to the last seed at its arrival (a virtual clock), not
zero, so newcomers cannot starve an old request either: N waiting requests of one class each
get about 1/N of the model's tokens, and the oldest wins ties.

Priorities: a request is ``interactive`` (the default) or ``batch`` (the public X-Priority
value); here the low class is called *bulk*, because "batch" already means a forward pass.
Interactive pairs go first, so under a bulk flood an interactive request waits for at most the
batch in flight plus its own. A bulk request that has waited ``bulk_max_wait`` seconds counts as
interactive (age raises priority, so bulk work is never starved), and bulk work may fill only
``bulk_queue_share`` of the queue, which keeps room for interactive requests (a 429 for the
flood, not for the chat user).

Admission by estimated wait (issue 22): a request that would sit in the queue past its deadline
costs compute and still fails (504). So admission estimates, from the measured rate (real tokens
per second, a moving average over batches), when a request would finish, and refuses at once
(429 with Retry-After) one that would not finish within ``ADMISSION_HEADROOM`` of its deadline,
or one whose admission would push an admitted request of its class past its own. Under fair
queuing a request waits for the batches in flight, for every more urgent request in full, and of
each request of its class for at most as many tokens as it needs itself; a newcomer delays each
admitted request of its class by the same amount. Before a rate is measured (cold start) every
request is admitted: its batches measure the rate.

Where the deadline is the default (``stretch_deadline``: RERANKER_REQUEST_TIMEOUT not set), it
adapts to slow hardware: a request gets at least ``DEADLINE_SHARES`` times its own compute time at
the measured rate (room to share the model with three requests of its size), so a machine too slow
to score a request in 60 s still serves it instead of refusing everything. The queue bound adapts
with the same estimate: besides ``max_queue`` pairs, the queue holds only what the measured rate
scores within the deadline (at 2,000 tokens/s and 60 s: 120,000 tokens, ~600 Vaswani pairs).

Time is read from an injected ``Clock`` (clock.py), so tests drive it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import heapq
from bisect import bisect_left
from collections import deque
from itertools import islice
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from loguru import logger

from .clock import Clock, MonotonicClock
from .errors import ErrorKind, RerankError
from .models.base import Pair, Pending

__all__ = ["ADMISSION_HEADROOM", "DEADLINE_SHARES", "Batcher", "Scored"]

# Admission plans a request to finish within this share of its deadline: the rate is a moving
# average, and on a shared machine it moves by 10-20% between batches (a neighbour's load).
ADMISSION_HEADROOM = 0.8
# A default deadline never gives a request less than this many times its own compute time.
DEADLINE_SHARES = 4

Forward = Callable[[Sequence[Pair]], list[float]]
Launch = Callable[[Sequence[Pair]], Pending]


@dataclass(frozen=True, slots=True)
class _LaunchedBatch:
    """A batch handed to the device: its pairs, when it started, and its pending scores (or launch error)."""

    picks: list[tuple[_Job, int]]
    start: float
    pending: Pending | None
    error: Exception | None


@dataclass(frozen=True, slots=True)
class Scored:
    """Raw scores of one request, in its pair order, with where its time went."""

    scores: list[float]
    queue_time: float  # seconds from admission to its first batch
    inference_time: float  # seconds spent in forward passes that carried its pairs


@dataclass(eq=False)
class _Job:
    pairs: Sequence[Pair]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Scored]
    seq: int
    admitted: float  # clock time
    bulk: bool = False  # the low priority (X-Priority: batch, or its key's default)
    # Clock times: when its deadline passes (None: no deadline), and when admission planned it
    # to finish by (ADMISSION_HEADROOM of the deadline), which later admissions must not pass.
    deadline: float | None = None
    plan_by: float | None = None
    # Tokens scheduled for it so far, counted from the batcher's virtual clock at admission
    # (fair queuing: the least served request seeds the next batch).
    served: float = 0.0
    remaining_tokens: int = 0  # tokens of its pairs not yet scheduled
    remaining: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)
    neg_lengths: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    left: int = 0
    started: float | None = None
    inference: float = 0.0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.remaining = set(range(len(self.pairs)))
        # Pair indices longest first, and their lengths negated (ascending, for bisect and merge).
        self.order = sorted(range(len(self.pairs)), key=lambda i: -len(self.pairs[i]))
        self.neg_lengths = [-len(self.pairs[i]) for i in self.order]
        self.scores = [0.0] * len(self.pairs)
        self.left = len(self.pairs)
        self.remaining_tokens = sum(len(p) for p in self.pairs)

    def first_remaining(self) -> int:
        """Position in ``order`` of its longest pair not yet scheduled."""
        return next(k for k, i in enumerate(self.order) if i in self.remaining)

    def fitting(self, width: int, urgent: int) -> Iterator[tuple[int, int, int, int, _Job]]:
        """Its unscheduled pairs of at most ``width`` tokens, longest first, as merge candidates."""
        start = bisect_left(self.neg_lengths, -width)
        for neg, i in zip(self.neg_lengths[start:], self.order[start:]):
            if i in self.remaining:
                yield urgent, neg, self.seq, i, self

    def deliver(self, result: Scored | BaseException) -> None:
        """Hand its scores (or its error) to the event loop its request waits on."""

        def _set() -> None:
            if self.future.done():
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class Batcher:
    """Admits scoring jobs and runs them through ``forward`` in one worker thread."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        fill_wait: float = 0.0,
        is_oom: Callable[[BaseException], bool] = lambda exc: False,
        padded: bool = True,
        launch: Launch | None = None,
        depth: int = 1,
        ahead_below: float | None = None,
        bulk_max_wait: float = 10.0,
        bulk_queue_share: float = 0.75,
        stretch_deadline: bool = False,
        clock: Clock | None = None,
    ) -> None:
        """Times are seconds, all of them (``fill_wait``: RERANKER_BATCH_WAIT_MS / 1000)."""
        self._forward = forward
        # launch: start a batch on the device and return at once (scores collected later);
        # depth: batches in flight (2 on a GPU: the next one is assembled while one computes).
        self._launch = launch
        self._depth = max(1, depth)
        # Launch ahead only while batches take less than this (seconds; None: always). Where a
        # batch takes long the gap between two is negligible, and a batch launched ahead is one
        # more that an interactive request arriving now must wait for.
        self._ahead_below = ahead_below
        self._batch_seconds = 0.0  # moving average of a batch's own compute time
        # Padded batches cost pairs × their longest pair; unpadded (packed) ones their real tokens.
        self.padded = padded
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        # A short wait for more pairs when the next batch would be small (0: none).
        self._fill_wait = fill_wait
        self.bulk_max_wait = bulk_max_wait
        self.bulk_queue_share = bulk_queue_share
        # The deadline is the default one: it grows on hardware too slow for it (module docstring).
        self.stretch_deadline = stretch_deadline
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._is_oom = is_oom
        # Told (pairs, padded tokens) of every forward pass; the app points it at its metrics.
        self.on_batch: Callable[[int, int], None] | None = None
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []  # admission order
        self._queued = 0  # pairs admitted and not yet scored or dropped
        self._queued_tokens = 0  # their tokens
        self._inflight_tokens = 0  # tokens of batches launched and not yet collected
        self._vtime = 0.0  # tokens served to the last seed when it was chosen (fair queuing)
        self._seq = 0
        self._closed = False
        self._tokens_per_s = 0.0  # moving average, for admission by deadline and Retry-After
        self._last_done = 0.0  # when the last batch's scores were collected
        self._thread = threading.Thread(target=self._run, name="reranker-batcher", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop taking work, fail whatever still waits, and let the worker finish its batch."""
        with self._cond:
            self._closed = True
            leftovers, self._jobs = self._jobs, []
            self._queued = self._queued_tokens = 0
            self._cond.notify_all()
        for job in leftovers:
            job.deliver(RerankError(ErrorKind.NOT_READY, "the server is shutting down", retry_after=1))
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def depth(self) -> int:
        """Most batches kept in flight (2: launched ahead, where the device computes asynchronously)."""
        return self._depth if self._launch is not None else 1

    @property
    def queued_pairs(self) -> int:
        return self._queued

    # -- admission (event loop) ------------------------------------------------------------------
    async def submit(self, pairs: Sequence[Pair], *, timeout: float | None = None, priority: str = "interactive") -> Scored:
        """Score ``pairs``; raises RerankError OVERLOADED (429), TIMEOUT (504) or BACKEND (503).

        ``priority`` is the public X-Priority value: ``interactive`` or ``batch`` (bulk here)."""
        bulk = priority == "batch"
        loop = asyncio.get_running_loop()
        if not pairs:
            return Scored([], 0.0, 0.0)
        with self._cond:
            if self._closed:
                raise RerankError(ErrorKind.NOT_READY, "the server is shutting down", retry_after=1)
            if len(pairs) > self.max_queue:  # could never be admitted: retrying would not help
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"this request needs {len(pairs)} (query, document) pairs, chunks included; the queue holds at "
                    f"most {self.max_queue} (RERANKER_MAX_QUEUE): send fewer documents or chunks",
                )
            if self._queued + len(pairs) > self.max_queue:
                raise RerankError(
                    ErrorKind.OVERLOADED,
                    f"the server is busy: {self._queued} pairs are waiting and this request adds "
                    f"{len(pairs)} (queue limit {self.max_queue}); retry later",
                    retry_after=self._retry_after(),
                )
            share = int(self.max_queue * self.bulk_queue_share)
            if bulk and self._queued > 0 and self._queued + len(pairs) > share:
                # The rest of the queue is kept for interactive requests.
                raise RerankError(
                    ErrorKind.OVERLOADED,
                    f"the server is busy: batch work may fill {share} of the {self.max_queue} queued pairs "
                    f"({self._queued} are waiting, this request adds {len(pairs)}); retry later",
                    retry_after=self._retry_after(),
                )
            tokens = sum(len(p) for p in pairs)
            now = self._clock.now()
            seconds = self._deadline_seconds(tokens, timeout)
            self._admit_by_estimate(tokens, bulk=bulk, seconds=seconds, now=now)
            self._seq += 1
            job = _Job(pairs, loop, loop.create_future(), self._seq, now, bulk, served=self._vtime,
                       deadline=None if seconds is None else now + seconds,
                       plan_by=None if seconds is None else now + ADMISSION_HEADROOM * seconds)
            self._jobs.append(job)
            self._queued += len(pairs)
            self._queued_tokens += tokens
            self._cond.notify()
        try:
            return await self._clock.wait_for(job.future, seconds)
        except (asyncio.TimeoutError, TimeoutError):
            self._drop(job)
            raise RerankError(
                ErrorKind.TIMEOUT,
                f"the request did not finish within {seconds:g} s (RERANKER_REQUEST_TIMEOUT); "
                "the server is overloaded or the request is too large",
            ) from None
        except asyncio.CancelledError:
            # The client went away (or the server is stopping): its waiting pairs are dropped.
            self._drop(job)
            raise

    def _deadline_seconds(self, tokens: int, timeout: float | None) -> float | None:
        """The request's deadline: ``timeout``, or, where that is the default, at least
        DEADLINE_SHARES times its own compute time at the measured rate (slow hardware)."""
        rate = self._tokens_per_s
        if timeout is None or not self.stretch_deadline or rate <= 0:
            return timeout
        return max(timeout, DEADLINE_SHARES * tokens / rate)

    def _urgency(self, job: _Job, now: float) -> int:
        """0: interactive, or bulk work that has waited ``bulk_max_wait``; 1: bulk."""
        return int(job.bulk and job.admitted > now - self.bulk_max_wait)

    def _admit_by_estimate(self, tokens: int, *, bulk: bool, seconds: float | None, now: float) -> None:
        """Raise OVERLOADED if this request, or an admitted one it would delay, would miss its
        deadline at the measured rate (module docstring). Called with the lock held."""
        rate = self._tokens_per_s
        if rate <= 0:
            return  # cold start: nothing measured yet, and its batches will measure it
        mine = int(bulk)
        live = [j for j in self._jobs if not j.cancelled and j.remaining_tokens > 0]
        urgency = {id(j): self._urgency(j, now) for j in live}
        more_urgent = sum(j.remaining_tokens for j in live if urgency[id(j)] < mine)
        peers = [j for j in live if urgency[id(j)] == mine]
        ahead = self._inflight_tokens + more_urgent + sum(min(j.remaining_tokens, tokens) for j in peers)
        if seconds is not None and (ahead + tokens) / rate > ADMISSION_HEADROOM * seconds:
            if ahead == 0:  # alone, and still too slow: retrying would not help
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"this request's {tokens} tokens take about {tokens / rate:.1f} s at the measured "
                    f"{rate:.0f} tokens/s, beyond the {seconds:g} s request timeout (RERANKER_REQUEST_TIMEOUT): "
                    "send fewer documents or raise the timeout",
                )
            raise RerankError(
                ErrorKind.OVERLOADED,
                f"the server is busy: this request would wait for about {ahead} tokens of other requests, "
                f"{ahead / rate:.1f} s, and its own {tokens} take {tokens / rate:.1f} s more, beyond the "
                f"{seconds:g} s request timeout; retry later",
                retry_after=min(60.0, max(1.0, (ahead + tokens) / rate - ADMISSION_HEADROOM * seconds)),
            )
        # Each admitted request of its class would wait min(its tokens, this one's) longer: refuse
        # this one rather than let an admitted one miss the finish it was admitted for. One whose
        # estimate is past its plan already (the rate fell) is not held against newcomers.
        remaining = sorted(j.remaining_tokens for j in peers)
        below = [0]
        for r in remaining:
            below.append(below[-1] + r)
        for job in peers:
            if job.plan_by is None:
                continue
            r = job.remaining_tokens
            i = bisect_left(remaining, r)  # of its peers, those before i need fewer tokens than it
            finish = now + (self._inflight_tokens + more_urgent + below[i] + r * (len(remaining) - i)) / rate
            if finish <= job.plan_by < finish + min(r, tokens) / rate:
                raise RerankError(
                    ErrorKind.OVERLOADED,
                    f"the server is busy: admitting this request's {tokens} tokens would make a waiting "
                    f"request miss its request timeout ({rate:.0f} tokens/s measured); retry later",
                    retry_after=min(60.0, max(1.0, finish - now)),
                )

    def _drop(self, job: _Job) -> None:
        with self._cond:
            job.cancelled = True

    def _retry_after(self) -> float:
        rate = self._tokens_per_s
        return min(60.0, max(1.0, self._queued_tokens / rate)) if rate > 0 else 1.0

    # -- the worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        # Up to `depth` batches in flight: batch n+1 is taken, assembled and launched while the
        # device still computes batch n, whose scores are collected after (one sync per batch,
        # when the next one is already queued on the device).
        inflight: deque[_LaunchedBatch] = deque()
        while True:
            while inflight and len(inflight) >= self._depth_now():  # room for the next launch
                self._finish(inflight.popleft())
            with self._cond:
                while not self._closed and not self._jobs and not inflight:
                    self._cond.wait()
                if self._closed and not inflight:
                    return
                batch: list[tuple[_Job, int]] = []
                if not self._closed and self._jobs:
                    if not inflight and self._fill_wait > 0 and self._queued < self.max_batch_size:
                        # A short wait for company, only when the next batch would be small. Real
                        # time, not the clock's: a new request ends it early (notify) either way.
                        self._cond.wait(timeout=self._fill_wait)
                    batch = self._take_batch()
            if batch:
                inflight.append(self._launch_batch(batch))
            elif inflight:  # nothing new to launch: collect what computes
                self._finish(inflight.popleft())

    def _depth_now(self) -> int:
        # Re-read after every collected batch: its time may have just crossed ahead_below.
        short = self._ahead_below is None or self._batch_seconds < self._ahead_below
        return self._depth if short else 1

    def _take_batch(self) -> list[tuple[_Job, int]]:
        """Pick the next batch (see module docstring). Called with the lock held.

        Each job keeps its pairs ordered longest first, so the candidates come from a merge of
        per-job streams that starts at each job's first pair that fits: the cost is the batch's
        size times log(jobs), not a sort of every queued pair (this runs between forward passes,
        while the model waits for it).
        """
        live = []
        for job in self._jobs:
            if job.cancelled:
                self._queued -= len(job.remaining)
                self._queued_tokens -= job.remaining_tokens
                job.remaining.clear()
                job.remaining_tokens = 0
            elif job.remaining:
                live.append(job)
        self._jobs = live
        if not live:
            return []
        now = self._clock.now()
        urgency = {id(job): self._urgency(job, now) for job in live}
        # The most urgent class, then the least served (fair queuing on tokens), then the oldest.
        seed = min(live, key=lambda job: (urgency[id(job)], job.served, job.seq))
        self._vtime = max(self._vtime, seed.served)
        width = -seed.neg_lengths[seed.first_remaining()]
        # Most urgent class first, then longest first, then oldest request first.
        merged = heapq.merge(*(job.fitting(width, urgency[id(job)]) for job in live))
        if self.padded:
            cap = max(1, min(self.max_batch_size, self.max_batch_tokens // max(width, 1)))
            chosen = list(islice(merged, cap))
        else:
            chosen, tokens = [], 0
            for candidate in merged:
                tokens -= candidate[1]
                if len(chosen) == self.max_batch_size or (chosen and tokens > self.max_batch_tokens):
                    break
                chosen.append(candidate)
        batch = [(job, i) for _, _, _, i, job in chosen]
        for job, i in batch:
            job.remaining.discard(i)
            length = len(job.pairs[i])
            job.remaining_tokens -= length
            job.served += width if self.padded else length  # what the pair costs in this batch
            self._inflight_tokens += length
        # Jobs with nothing left to schedule leave the queue; their in-flight pairs deliver them.
        self._jobs = [job for job in live if job.remaining]
        return batch

    def _launch_batch(self, batch: list[tuple[_Job, int]]) -> _LaunchedBatch:
        start = self._clock.now()
        for job, _ in batch:
            if job.started is None:
                job.started = start
        pairs = [job.pairs[i] for job, i in batch]
        try:
            return _LaunchedBatch(batch, start, self._launch(pairs) if self._launch is not None else None, None)
        except Exception as exc:  # raised while launching (out of memory, most often): delivered in _finish
            return _LaunchedBatch(batch, start, None, exc)

    def _finish(self, flight: _LaunchedBatch) -> None:
        batch, start = flight.picks, flight.start
        pairs = [job.pairs[i] for job, i in batch]
        try:
            if flight.error is not None:
                raise flight.error
            scores = flight.pending.result() if flight.pending is not None else self._forward_with_split(pairs)
        except Exception as exc:
            try:
                if not self._is_oom(exc) or len(pairs) < 2:
                    raise
                scores = self._forward_with_split(pairs)  # in halves, synchronously
            except Exception as final:  # the model failed: fail exactly the requests in this batch
                self._fail(batch, final)
                return
        # With two batches in flight this one queued behind the previous: its own time starts
        # when that one was collected (else the rate, and Retry-After with it, would halve).
        now = self._clock.now()
        elapsed = now - max(start, self._last_done)
        self._last_done = now
        self._batch_seconds = elapsed if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * elapsed
        lengths = [len(p) for p in pairs]
        rate = sum(lengths) / elapsed if elapsed > 0 else 0.0
        self._tokens_per_s = rate if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * rate
        if self.on_batch is not None:
            self.on_batch(len(batch), len(batch) * max(lengths) if self.padded else sum(lengths))
        done = []
        with self._cond:
            self._queued -= len(batch)
            self._queued_tokens -= sum(lengths)
            self._inflight_tokens -= sum(lengths)
            for (job, i), score in zip(batch, scores):
                job.scores[i] = score
                job.left -= 1
                if job.left == 0:
                    done.append(job)
            for job in {id(j): j for j, _ in batch}.values():
                job.inference += elapsed
        for job in done:
            queue_time = (job.started or start) - job.admitted
            job.deliver(Scored(job.scores, queue_time, job.inference))

    def _forward_with_split(self, pairs: list[Pair]) -> list[float]:
        # Out of memory on an accelerator: the batch may fit in halves, so try those first.
        try:
            return self._forward(pairs)
        except Exception as exc:
            if len(pairs) < 2 or not self._is_oom(exc):
                raise
            logger.warning("out of memory on a batch of {} pairs; retrying in halves", len(pairs))
            half = len(pairs) // 2
            return self._forward_with_split(pairs[:half]) + self._forward_with_split(pairs[half:])

    def _fail(self, batch: list[tuple[_Job, int]], exc: Exception) -> None:
        logger.opt(exception=exc).error("forward pass failed for a batch of {} pairs", len(batch))
        jobs = list({id(j): j for j, _ in batch}.values())
        with self._cond:
            self._queued -= len(batch)
            self._queued_tokens -= sum(len(job.pairs[i]) for job, i in batch)
            self._inflight_tokens -= sum(len(job.pairs[i]) for job, i in batch)
            for job in jobs:
                self._queued -= len(job.remaining)
                self._queued_tokens -= job.remaining_tokens
                job.remaining.clear()
                job.remaining_tokens = 0
                job.cancelled = True
            self._jobs = [j for j in self._jobs if not j.cancelled]
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        error = RerankError(ErrorKind.BACKEND, f"inference failed ({type(exc).__name__}: {detail}); retry later")
        for job in jobs:
            job.deliver(error)
