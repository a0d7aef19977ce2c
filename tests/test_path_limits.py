"""datamodules/path_limits.py: the measures every output/run-folder check shares."""

from __future__ import annotations

import os
from pathlib import Path

from datamodules.path_limits import longest_name, name_max, nearest_existing


def test_name_max_is_the_file_systems_and_255_when_unknown(tmp_path):
    assert name_max(tmp_path) == os.pathconf(tmp_path, "PC_NAME_MAX")
    assert name_max(tmp_path / "missing" / "deeper") == 255  # pathconf raises: unknown


def test_nearest_existing_walks_up_and_treats_dangling_links_by_choice(tmp_path):
    deep = tmp_path / "a" / "b" / "c.txt"
    assert nearest_existing(deep) == tmp_path
    (tmp_path / "a").mkdir()
    assert nearest_existing(deep) == tmp_path / "a"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert nearest_existing(link / "x") == link  # lexists: the link is in the way
    assert nearest_existing(link / "x", links=False) == tmp_path  # followed: not there
    too_long = tmp_path / ("n" * 5000) / "x"
    assert nearest_existing(too_long) == tmp_path  # ENAMETOOLONG is "not there", not raised
    assert nearest_existing(Path("relative-missing/x")) == Path(".")


def test_longest_name_counts_bytes_not_characters():
    assert longest_name(["ab", "\u00e9\u00e9", "xyz"]) == ("\u00e9\u00e9", 4)  # two 2-byte chars
    assert longest_name([]) == ("", 0)
