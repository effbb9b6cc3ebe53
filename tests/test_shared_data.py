"""The shared folder's real data sets as streams (skipped, saying so, where it is absent)."""

from __future__ import annotations

import pytest

from connectors import shared_data

FOLDER = shared_data.find_data_folder()
needs_data = pytest.mark.skipif(
    FOLDER is None, reason="no ../shared/data (or $STREAM_MTL_DATA): real data sets not tested"
)


@needs_data
def test_sarcos_is_a_7_task_stream_in_file_order():
    tasks, observations = shared_data.sarcos(FOLDER)
    assert len(tasks) == 7 and len(observations) == 4449
    assert len(observations[0].x) == 21 and set(observations[0].y) == set(tasks)


@needs_data
@pytest.mark.parametrize(
    ("name", "n_tasks", "n_rows"), [("landmine", 29, 14820), ("school", 139, 15362)]
)
def test_one_task_per_row_data_sets_are_shuffled_reproducibly(name, n_tasks, n_rows):
    tasks, observations = getattr(shared_data, name)(FOLDER, seed=0)
    _, again = getattr(shared_data, name)(FOLDER, seed=0)
    assert len(tasks) == n_tasks and len(observations) == n_rows
    assert all(len(obs.y) == 1 for obs in observations)
    assert [obs.y for obs in observations[:50]] == [obs.y for obs in again[:50]]
    first_tasks = {next(iter(obs.y)) for obs in observations[:200]}
    assert len(first_tasks) > n_tasks // 2  # not grouped by task as in the file


def test_a_given_folder_without_the_data_sets_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        shared_data.find_data_folder(tmp_path)
