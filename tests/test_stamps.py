"""A folder built once is reused only while its stamp holds the key it would be built from and the
files it must hold are there; anything else (no stamp, a broken one, a lost file) means rebuild."""

from pathlib import Path

from pipeline.stamps import is_current, write_stamp

KEY = {"release": "0.27", "source_sha256": "ab12"}


def test_a_stamped_folder_with_its_files_is_current(tmp_path: Path) -> None:
    (tmp_path / "runner").write_text("")
    write_stamp(tmp_path / "stamp.json", KEY)
    assert is_current(tmp_path / "stamp.json", KEY, [tmp_path / "runner"])


def test_another_key_a_missing_file_or_a_broken_stamp_is_not_current(tmp_path: Path) -> None:
    stamp = tmp_path / "stamp.json"
    assert not is_current(stamp, KEY)  # never built
    write_stamp(stamp, KEY)
    assert not is_current(stamp, {**KEY, "release": "0.26"})
    assert not is_current(stamp, KEY, [tmp_path / "runner"])
    stamp.write_text("{half")
    assert not is_current(stamp, KEY)
