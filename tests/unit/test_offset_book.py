"""OffsetBook's commit rule against its definition, over rounds in any order: per partition, the commit is
the first offset of the round not done (or the offset after its last), and only where that moves past the
round's first offset; what is not done is read again from the first offset not done."""

from __future__ import annotations

import random

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from pipeline.delivery.items import Item
from pipeline.delivery.offsets import OffsetBook

TPS = [TopicPartition("sink.t", 0), TopicPartition("sink.t", 1), TopicPartition("sink.t.retry.5s", 0)]


def item(tp: TopicPartition, offset: int) -> Item:
    return Item.of(tp, ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"h", b"{}", None, 0, 0, ()))


rounds = st.lists(
    st.tuples(st.sampled_from(TPS), st.integers(0, 40), st.booleans()),
    min_size=1,
    max_size=60,
    unique_by=lambda x: x[:2],
)


@given(rounds, st.randoms())
def test_commits_and_rewinds_follow_the_rule(
    round_: list[tuple[TopicPartition, int, bool]], rng: random.Random
) -> None:
    items = [item(tp, offset) for tp, offset, _ in round_]
    rng.shuffle(items)  # fetches, seeks and rewinds: a round's items need not be in offset order
    book = OffsetBook()
    done = {(tp, offset) for tp, offset, is_done in round_ if is_done}
    book.mark_done(i for i in items if (i.tp, i.offset) in done)

    want_commits: dict[TopicPartition, int] = {}
    want_rewinds: dict[TopicPartition, int] = {}
    for tp in {i.tp for i in items}:
        offsets = sorted(i.offset for i in items if i.tp == tp)
        not_done = [o for o in offsets if (tp, o) not in done]
        commit = not_done[0] if not_done else offsets[-1] + 1
        if commit > offsets[0]:
            want_commits[tp] = commit
        if not_done:
            want_rewinds[tp] = not_done[0]
    commits, rewinds = book.plan(items)
    assert commits == want_commits
    assert rewinds == want_rewinds
    book.committed(want_commits)
    for i in items:
        assert book.is_done(i) == ((i.tp, i.offset) in done and i.offset >= want_commits.get(i.tp, -1))


def test_a_round_read_again_from_below_the_last_commit_never_commits_backwards() -> None:
    book, tp = OffsetBook(), TPS[0]
    book.committed({tp: 10})
    again = [item(tp, 4), item(tp, 5)]  # read again from a rewind planned before the commit of 10 landed
    book.mark_done(again)
    assert book.plan(again) == ({}, {})
    later = [item(tp, 10), item(tp, 11)]
    book.mark_done(later)
    assert book.plan(later) == ({tp: 12}, {})


def test_a_failed_commit_is_owed_until_a_commit_reaches_it_or_the_partition_goes() -> None:
    book, (one, two, _) = OffsetBook(), TPS
    book.failed({one: 5, two: 3})
    book.failed({one: 4})  # an older offset never lowers what is owed
    assert book.owed() == {one: 5, two: 3}
    book.committed({one: 5})
    assert book.owed() == {two: 3}
    book.forget([two])
    assert book.owed() == {}
