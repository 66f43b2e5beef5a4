import json
from pathlib import Path

from exporter.config import StaticTask
from exporter.discovery.file import FileSource
from exporter.discovery.static import StaticSource


def test_reads_plain_and_json_lines_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "tasks.txt"
    source = FileSource(path)
    assert source.discover(None).tasks == []  # not created yet
    path.write_text(
        "img_1\n# comment\n\n"
        + json.dumps({"task_id": "vid_2", "model": "veo-3", "poll_url": "/v1/tasks/vid_2"})
        + "\nimg_3"
    )
    first = source.discover(None)
    assert [(t.task_id, t.model, t.poll_url) for t in first.tasks] == [
        ("img_1", None, None),
        ("vid_2", "veo-3", "/v1/tasks/vid_2"),
    ]
    with path.open("a") as handle:
        handle.write("\nimg_4\n")
    second = source.discover(first.state)
    assert [t.task_id for t in second.tasks] == ["img_3", "img_4"]
    assert source.discover(second.state).tasks == []


def test_bad_entries_are_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    lines = [
        "bad id!",
        '{"task_id": 5}',
        '{"task_id": "a", "poll_url": "https://evil/x"}',
        "{not json",
        "x" * 5000,
        "good_1",
    ]
    path.write_text("\n".join(lines) + "\n")
    batch = FileSource(path).discover(None)
    assert [t.task_id for t in batch.tasks] == ["good_1"]
    assert len(batch.errors) == 5
    assert not any("evil" in e for e in batch.errors)


def test_truncated_file_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tasks.txt"
    path.write_text("a_1\na_2\n")
    source = FileSource(path)
    state = source.discover(None).state
    path.write_text("b_1\n")
    assert [t.task_id for t in source.discover(state).tasks] == ["b_1"]


def test_static_tasks_are_offered_once() -> None:
    source = StaticSource([StaticTask(id="img_1", model="flux")])
    batch = source.discover(None)
    assert [t.task_id for t in batch.tasks] == ["img_1"]
    assert source.discover(batch.state).tasks == []
