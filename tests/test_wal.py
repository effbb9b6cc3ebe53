"""The write-ahead log: group commit, segments, replay after a checkpoint, a torn line."""

from __future__ import annotations

from stream_mtl.wal import WriteAheadLog


def _records(n: int, start: int = 0) -> list[tuple[dict, dict, None]]:
    return [({"a": float(i), 7: 1.0}, {"price": float(i)}, None) for i in range(start, start + n)]


def test_records_replay_in_order_after_the_checkpoint_and_numbers_are_never_reused(tmp_path):
    log = WriteAheadLog(tmp_path)
    for i in range(10):
        log.wait(log.append(_records(1, start=i)))
    assert log.n_fsyncs <= 10
    log.rotate()  # a checkpoint that learned records 1..6
    log.append(_records(2, start=10))
    log.forget(6)  # the first segment holds 1..10: 7..10 are not in the checkpoint
    log.close()
    again = WriteAheadLog(tmp_path, start_after=6)
    assert [seq for seq, *_ in again.replay(after=6)] == [7, 8, 9, 10, 11, 12]
    _, x, y, _ = next(again.replay(after=11))
    assert x == {"a": 11.0, 7: 1.0} and y == {"price": 11.0}
    again.rotate()
    again.forget(12)  # every record is in a checkpoint: only the open segment is left
    again.close()
    assert len(list(tmp_path.glob("wal-*.jsonl"))) == 1
    last = WriteAheadLog(tmp_path, start_after=12)
    assert last.append(_records(1)) == 13  # the numbering goes on, the log being empty
    last.close()


def test_many_writers_share_fsyncs(tmp_path):
    import threading

    log = WriteAheadLog(tmp_path, group_seconds=0.005)

    def write() -> None:
        for i in range(50):
            log.wait(log.append(_records(1, start=i)))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert [seq for seq, *_ in WriteAheadLog(tmp_path).replay(0)] == list(range(1, 401))
    assert log.n_fsyncs < 200  # 400 records acknowledged durably, in groups


def test_a_torn_last_line_is_skipped_and_later_segments_still_replay(tmp_path):
    log = WriteAheadLog(tmp_path)
    log.wait(log.append(_records(2)))
    log.close()
    segment = next(tmp_path.glob("wal-*.jsonl"))
    with segment.open("ab") as file:
        file.write(b'[3, [["a", 1.0')  # killed mid-write: never acknowledged
    again = WriteAheadLog(tmp_path)
    again.wait(again.append(_records(1)))
    again.close()
    assert [seq for seq, *_ in WriteAheadLog(tmp_path).replay(0)] == [1, 2, 3]
