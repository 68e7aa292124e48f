"""A full disk, for real: a small tmpfs the test mounts (CI runs as root). An export that runs out of space
leaves no model directory, whole or half; a store write that runs out of space leaves the store as it was
before that write; each says so in one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evosearch.cli import app
from storage import CandidateRecord, RetryPolicy, ScoreRecord, Store, StoreError


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A file taking all but about `leave_bytes` of the disk."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def test_an_export_onto_a_full_disk_leaves_no_model_directory_and_says_so_in_one_line(small_disk, tiny_zoo, tmp_path):
    models = {name: str(path) for name, path in tiny_zoo.models.items()}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": models["math"], "parameters": {"weight": 0.5}},
        {"model": models["lang"], "parameters": {"weight": 0.5}}]}))
    _fill(small_disk, leave_bytes=40_000)  # a merged tiny model takes about 110 kB
    result = CliRunner().invoke(app, ["merge", str(recipe), str(small_disk / "merged")])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "the disk filled up while writing the model" in result.output and "nothing was left behind" in result.output
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no merged/, no staging directory


def _candidate(job_id: int, index: int) -> CandidateRecord:
    return CandidateRecord(job_id=job_id, generation=0, index=index, genome=[0.5], recipe={"pad": "x" * 4000},
                           recipe_hash=f"h{index}", status="done", scores=[ScoreRecord("acc", "search", estimated=0.5)])


def test_a_store_write_onto_a_full_disk_fails_in_one_line_and_leaves_the_store_as_it_was(small_disk):
    url = f"sqlite:///{small_disk / 'evosearch.db'}"
    with Store.open(url, retry=RetryPolicy(attempts=1)) as store:
        job = store.create_job("full", {}, 0, str(small_disk))
        store.record_candidate(_candidate(job.id, 0))
        filler = _fill(small_disk, leave_bytes=0)
        recorded = 1
        with pytest.raises(StoreError) as error:
            for index in range(1, 400):  # until SQLite needs a page the disk does not have
                store.record_candidate(_candidate(job.id, index))
                recorded += 1
        message = str(error.value)
        assert "\n" not in message and "disk is full" in message, message
    filler.unlink()
    with closing(sqlite3.connect(small_disk / "evosearch.db")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store.open(url) as store:
        assert [c.index for c in store.candidates(job.id)] == list(range(recorded))  # none lost, none half
        store.record_candidate(_candidate(job.id, recorded))  # and it takes writes again
