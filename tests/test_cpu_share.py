"""curation.cpu_share: torch threads follow the cores other processes leave free."""

from __future__ import annotations

from dataclasses import replace

import pytest

from curation.cpu_share import cpu_sample, threads_for_free_cores


@pytest.fixture
def now():
    sample = cpu_sample()
    if sample is None:
        pytest.skip("no /proc/stat on this system")
    return sample


def test_threads_are_the_cores_others_left_free(now, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # Ten seconds ago, with the machine's busy time as it is now: nobody else ran, every core is free.
    idle = replace(now, wall=now.wall - 10, own=now.own)
    assert threads_for_free_cores(idle) == now.cores
    # Other processes kept every core busy for those ten seconds: one thread, never zero.
    busy = replace(idle, machine_busy=now.machine_busy - 10 * now.cores)
    assert threads_for_free_cores(busy) == 1
    if now.cores >= 2:  # one core's worth of other work leaves the rest
        assert threads_for_free_cores(replace(idle, machine_busy=now.machine_busy - 10)) == now.cores - 1


def test_no_opinion_without_a_sample_an_explicit_setting_or_a_long_enough_interval(now, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_for_free_cores(None) is None
    assert threads_for_free_cores(replace(now, wall=now.wall - 0.1)) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_for_free_cores(replace(now, wall=now.wall - 10)) is None
