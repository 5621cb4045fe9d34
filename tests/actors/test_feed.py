"""LearnerFeed's queue (no Ray needed: it is a plain class with async methods): items are placed by the
index their submitter gave them, whatever order the calls arrive in, and `run` is submit + result."""

from __future__ import annotations

import asyncio

import pytest

from medgr2_ray.actors.feed import LearnerFeed
from medgr2_ray.messages import PublishWork, SaveWork, WorkDone


def test_items_are_placed_by_their_index_not_by_arrival() -> None:
    async def scenario() -> None:
        feed = LearnerFeed("L", world_size=1)
        feed.submit(SaveWork("b"), index=1)  # arrives first
        waiting = asyncio.create_task(feed.next(0, 0))
        await asyncio.sleep(0)
        assert not waiting.done()  # item 0 is not there yet
        feed.submit(SaveWork("a"), index=0)
        assert await waiting == SaveWork("a") and await feed.next(0, 1) == SaveWork("b")
        assert feed.status().submitted == 2
        with pytest.raises(ValueError, match="item 1 was submitted before"):
            feed.submit(PublishWork(), index=1)

    asyncio.run(scenario())


def test_run_queues_the_item_and_answers_with_every_ranks_report() -> None:
    async def scenario() -> None:
        feed = LearnerFeed("L", world_size=2)
        result = asyncio.create_task(feed.run(0, PublishWork()))
        assert await feed.next(1, 0) == PublishWork()
        for rank in (1, 0):  # reports in any order
            feed.complete(WorkDone(0, rank, 1, {}, 0.0, 1.0))
        assert [d.rank for d in await result] == [0, 1]

    asyncio.run(scenario())
