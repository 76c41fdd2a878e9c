"""Redis stream entry ids compare as Redis orders them (the dispatcher's age order and the
relay's "already seen" check both rely on it)."""

from dllmserve.broker.stream_ids import stream_id


def test_an_entry_id_reads_as_ms_and_sequence():
    assert stream_id(b"1700000000123-7") == (1700000000123, 7)
    assert stream_id("42") == (42, 0)  # a bare time is its first entry


def test_entry_ids_order_numerically_not_as_text():
    ids = ["10-0", "9-12", "9-2", b"10-1", "0-0"]
    assert sorted(ids, key=stream_id) == ["0-0", "9-2", "9-12", "10-0", b"10-1"]
