"""AckTracker: pending ids, poll schedule, confirmation once, expiry, bounded capacity."""

from __future__ import annotations

from forwarder.delivery.acks import AckTracker


def tracker(**overrides: float) -> AckTracker[str]:
    settings = {"timeout_s": 10.0, "poll_interval_s": 2.0, "max_pending": 3, **overrides}
    return AckTracker(
        timeout_s=settings["timeout_s"],
        poll_interval_s=settings["poll_interval_s"],
        max_pending=int(settings["max_pending"]),
    )


def test_one_poll_asks_for_every_pending_id() -> None:
    acks = tracker()
    acks.add(0, "a", now=0.0)
    acks.add(1, "b", now=0.5)
    assert acks.ids() == [0, 1]
    assert not acks.poll_due(1.9)
    assert acks.poll_due(2.0)


def test_confirm_removes_true_ids_only() -> None:
    """True is reported once; false and unknown ids change nothing."""
    acks = tracker()
    acks.add(0, "a", now=0.0)
    acks.add(1, "b", now=0.0)
    assert acks.confirm({0: True, 1: False, 7: True}) == ["a"]
    assert acks.ids() == [1]
    assert acks.confirm({0: True}) == []


def test_poll_schedule_follows_polls() -> None:
    acks = tracker()
    acks.add(0, "a", now=0.0)
    acks.polled(3.0)
    assert acks.next_poll_at() == 5.0
    assert not acks.poll_due(4.0)


def test_expiry_in_send_order() -> None:
    """Ids older than the timeout expire; younger ones stay."""
    acks = tracker()
    acks.add(0, "a", now=0.0)
    acks.add(1, "b", now=5.0)
    assert acks.next_expiry_at() == 10.0
    assert acks.expire(9.9) == []
    assert acks.expire(10.0) == ["a"]
    assert acks.ids() == [1]
    assert acks.expire(20.0) == ["b"]
    assert acks.next_expiry_at() is None


def test_capacity_is_bounded() -> None:
    """At max_pending the channel is full until something is confirmed or expires."""
    acks = tracker(max_pending=2)
    fullness = []
    acks.add(0, "a", now=0.0)
    fullness.append(acks.full)
    acks.add(1, "b", now=0.0)
    fullness.append(acks.full)
    acks.confirm({0: True})
    fullness.append(acks.full)
    assert fullness == [False, True, False]


def test_reused_id_returns_the_displaced_item() -> None:
    """An indexer restart can hand out an id again: the old batch must not be forgotten."""
    acks = tracker()
    acks.add(0, "old", now=0.0)
    assert acks.add(0, "new", now=1.0) == "old"
    assert acks.drain() == ["new"]
    assert len(acks) == 0
