"""Activations taking turns on the event loop (`api.turns.ActivationTurns`): arrival order,
a turn given back once, a held turn freed after `hold_s`, the waiting bound, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from api.turns import ActivationTurns


def test_turns_are_handed_out_in_arrival_order_and_given_back_once() -> None:
    async def scenario() -> tuple[list[str], int, int]:
        turns = ActivationTurns(slots=2, hold_s=10.0)
        order: list[str] = []
        first, second = await turns.take(), await turns.take()
        assert turns.free == 0

        async def later(name: str) -> None:
            turn = await turns.take()
            order.append(name)
            turn.end()

        tasks = [asyncio.create_task(later(name)) for name in ("c", "d", "e")]
        await asyncio.sleep(0.01)
        waiting_while_held = turns.waiting
        order.append("nothing before the first turn ends")
        first.end()
        first.end()  # again: must not free a second turn
        await asyncio.sleep(0.01)
        second.end()
        await asyncio.gather(*tasks)
        return order, waiting_while_held, turns.free

    order, waiting_while_held, free_after = asyncio.run(scenario())

    assert waiting_while_held == 3
    assert order == ["nothing before the first turn ends", "c", "d", "e"]
    assert free_after == 2  # every turn back, none counted twice


def test_a_turn_held_past_hold_s_is_given_back_without_its_holder() -> None:
    async def scenario() -> tuple[float, int]:
        turns = ActivationTurns(slots=1, hold_s=0.05)
        await turns.take()  # never ended by its holder (a member slow to answer)
        loop = asyncio.get_running_loop()
        began = loop.time()
        second = await asyncio.wait_for(turns.take(), timeout=2.0)
        waited = loop.time() - began
        second.end()
        return waited, turns.free

    waited, free_after = asyncio.run(scenario())

    assert 0.04 <= waited < 1.0
    assert free_after == 1


def test_past_max_waiting_a_request_goes_on_without_a_turn() -> None:
    async def scenario() -> tuple[int, int, bool, int]:
        turns = ActivationTurns(slots=1, hold_s=10.0, max_waiting=2)
        held = await turns.take()
        queued = [asyncio.create_task(turns.take()) for _ in range(2)]
        await asyncio.sleep(0.01)
        # The third one past the holder does not wait: it has no turn to give back.
        extra = await asyncio.wait_for(turns.take(), timeout=0.5)
        waiting = turns.waiting
        extra.end()
        free_after_extra = turns.free
        held.end()
        first = await queued[0]
        still_waiting = not queued[1].done()
        first.end()
        (await queued[1]).end()
        return waiting, free_after_extra, still_waiting, turns.free

    waiting, free_after_extra, still_waiting, free_after = asyncio.run(scenario())

    assert waiting == 2
    assert free_after_extra == 0  # ending the turnless request freed nothing
    assert still_waiting  # the queue still went one at a time
    assert free_after == 1


def test_a_cancelled_waiter_leaves_the_queue_and_no_turn_is_lost() -> None:
    async def scenario() -> tuple[int, int, int]:
        turns = ActivationTurns(slots=1, hold_s=10.0)
        held = await turns.take()
        gone = asyncio.create_task(turns.take())
        after = asyncio.create_task(turns.take())
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        waiting_after_cancel = turns.waiting
        held.end()
        (await asyncio.wait_for(after, timeout=0.5)).end()
        # Handed a turn just as it is cancelled: the turn passes on, not lost.
        held = await turns.take()
        unlucky = asyncio.create_task(turns.take())
        await asyncio.sleep(0.01)
        held.end()  # hands the turn to `unlucky`, which has not run yet
        unlucky.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unlucky
        return waiting_after_cancel, turns.waiting, turns.free

    waiting_after_cancel, waiting_at_end, free_at_end = asyncio.run(scenario())

    assert waiting_after_cancel == 1
    assert (waiting_at_end, free_at_end) == (0, 1)


def test_turns_refuse_settings_that_could_not_work() -> None:
    with pytest.raises(ValueError, match="slots"):
        ActivationTurns(slots=0)
    with pytest.raises(ValueError, match="hold_s"):
        ActivationTurns(hold_s=0)
