"""The bundled real data sets, as streams: shapes, orders, and what the package ships."""

from __future__ import annotations

import pytest

from stream_mtl.datasets import SARCOS, Landmine, School


def test_sarcos_is_a_7_task_stream_in_file_order():
    dataset = SARCOS()
    observations = list(dataset)
    assert len(observations) == len(dataset) == 4449
    assert len(observations[0].x) == 21 and set(observations[0].y) == set(dataset.tasks)
    assert list(dataset)[:5] == observations[:5]


@pytest.mark.parametrize(
    ("loader", "n_tasks", "n_rows"), [(Landmine, 29, 14820), (School, 139, 15362)]
)
def test_one_task_per_row_data_sets_are_shuffled_reproducibly(loader, n_tasks, n_rows):
    dataset = loader(seed=0)
    observations = list(dataset)
    assert len(dataset.tasks) == n_tasks and len(observations) == n_rows
    assert all(len(obs.y) == 1 and set(obs.y) <= set(dataset.tasks) for obs in observations)
    assert all(len(obs.x) == dataset.n_features for obs in observations[:100])
    assert [obs.y for obs in list(loader(seed=0))[:50]] == [obs.y for obs in observations[:50]]
    assert [obs.y for obs in list(loader(seed=1))[:50]] != [obs.y for obs in observations[:50]]
    first_tasks = {next(iter(obs.y)) for obs in observations[:200]}
    assert len(first_tasks) > n_tasks // 2  # not grouped by task as in the file


def test_every_task_of_a_data_set_is_labelled_somewhere():
    for dataset in (Landmine(), School()):
        labelled = {task for obs in dataset for task in obs.y}
        assert labelled == set(dataset.tasks)


def test_school_keeps_the_ten_standard_splits():
    splits = School().arrays()["splits_is_train"]
    assert splits.shape == (10, 15362)
    assert 0.7 < splits.mean() < 0.8
