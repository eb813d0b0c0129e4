"""Clients train in batches, one Prefect task each: every client once, in order, and one
client's failure leaves the others of its batch trained."""

from __future__ import annotations

import pytest
from prefect import flow

import flows.train_client as train_client_module
from flows.train import CLIENTS_PER_TASK, TASKS_PER_WORKER, _batches
from flows.train_client import ClientFailure, ClientTraining, train_clients

IDS = [f"c{i:04d}" for i in range(200)]


def test_batches_hold_every_client_once_in_order():
    batches = _batches(IDS, workers=2)
    assert [cid for batch in batches for cid in batch] == IDS
    assert {len(batch) for batch in batches} == {CLIENTS_PER_TASK}


def test_few_clients_are_spread_over_the_workers():
    # 40 clients on 2 workers: 8 tasks of 5, four a worker; 6 clients: one a task.
    assert [len(batch) for batch in _batches(IDS[:40], workers=2)] == [5] * 8
    assert [len(batch) for batch in _batches(IDS[:6], workers=2)] == [1] * 6
    assert _batches([], workers=2) == []


def _job(client_id: str) -> ClientTraining:
    return ClientTraining(client_id, None, None, None, None, None, None)


def test_a_failing_client_leaves_the_rest_of_its_batch_trained(prefect_harness, monkeypatch):
    trained = []

    def fake_train_client(job, exceedance_run, has_champion, settings, trigger):
        if job.client_id == "bad":
            raise ValueError("no metric had enough history")
        trained.append((job.client_id, has_champion))
        return job.client_id

    monkeypatch.setattr(train_client_module, "train_client", fake_train_client)

    @flow
    def one_batch() -> list:
        jobs = [_job("a"), _job("bad"), _job("b")]
        return train_clients(jobs, {"b"}, None, None)

    results = one_batch()
    assert trained == [("a", False), ("b", True)]
    assert results == ["a", ClientFailure("bad", "ValueError: no metric had enough history"), "b"]


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_every_worker_gets_several_tasks_while_clients_last(workers):
    batches = _batches(IDS[:100], workers)
    assert len(batches) >= min(100, TASKS_PER_WORKER * workers)
