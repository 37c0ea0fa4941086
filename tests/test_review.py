"""Hunk-by-hunk review: each hunk applies alone, in any order, around the user's own edits."""

from __future__ import annotations

import pytest

from offload.server.tasks.review import accept, hunks, locate
from tests.changes import one_change

BASE = b"".join(f"line {i}\n".encode() for i in range(1, 21))
RESULT = (BASE.replace(b"line 2\n", b"line two\n").replace(b"line 10\n", b"line 10\nnew line\n")
          .replace(b"line 18\n", b""))


@pytest.fixture(scope="module")
def CHANGE(tmp_path_factory):
    return one_change(tmp_path_factory.mktemp("change"), "f.txt", BASE, RESULT)


def test_hunks_are_found_with_stable_ids(CHANGE, tmp_path):
    found = hunks(CHANGE)
    assert [h.id for h in found] == ["f.txt#1", "f.txt#2", "f.txt#3"]
    assert [(h.removed, h.added) for h in found] == [(1, 1), (0, 1), (1, 0)]


def test_each_hunk_applies_alone_and_in_any_order(CHANGE, tmp_path):
    first, second, third = hunks(CHANGE)
    only_third = accept(CHANGE, [third], BASE).content
    assert b"line 18\n" not in only_third and b"line two" not in only_third
    then_first = accept(CHANGE, [first], only_third).content
    then_second = accept(CHANGE, [second], then_first).content
    assert then_second == RESULT


def test_a_hunk_merges_around_a_user_edit_and_conflicts_when_they_overlap(CHANGE, tmp_path):
    first, second, _ = hunks(CHANGE)
    user = BASE.replace(b"line 15\n", b"line 15 (user)\n")
    merged = accept(CHANGE, [second], user)
    assert not merged.conflict and b"line 15 (user)" in merged.content and b"new line" in merged.content
    clash = BASE.replace(b"line 2\n", b"line 2 (user)\n")
    assert accept(CHANGE, [first], clash).conflict


def test_added_and_deleted_files_are_one_hunk(CHANGE, tmp_path):
    added = one_change(tmp_path / "a", "new.txt", None, b"a\nb\n")
    (hunk,) = hunks(added)
    assert accept(added, [hunk], None).content == b"a\nb\n"
    deleted = one_change(tmp_path / "d", "old.txt", b"x\n", None)
    (hunk,) = hunks(deleted)
    assert accept(deleted, [hunk], b"x\n").content is None


def test_locate_follows_lines_the_user_moved(CHANGE, tmp_path):
    _, second, _ = hunks(CHANGE)
    shifted = b"header 1\nheader 2\n" + BASE
    assert locate(second, BASE, shifted) == (12, 12)
    first = hunks(CHANGE)[0]
    assert locate(first, BASE, BASE) == (1, 2)
    assert locate(first, BASE, BASE.replace(b"line 2\n", b"mine\n")) is None


def test_an_edit_on_the_line_next_to_a_hunk_does_not_block_it(CHANGE, tmp_path):
    first = hunks(CHANGE)[0]  # line 2 → line two
    user = BASE.replace(b"line 3\n", b"line 3 (user)\n").replace(b"line 1\n", b"line 1 (user)\n")
    assert locate(first, BASE, user) == (1, 2)
    merged = accept(CHANGE, [first], user)
    assert not merged.conflict
    assert merged.content == user.replace(b"line 2\n", b"line two\n")


def test_the_same_change_made_already_is_no_conflict(CHANGE, tmp_path):
    first, second, third = hunks(CHANGE)
    taken = accept(CHANGE, [first, third], BASE).content  # as another task (or an earlier accept) made it
    merged = accept(CHANGE, [first, second, third], taken)
    assert not merged.conflict and merged.content == RESULT
    assert accept(CHANGE, [first], taken).unchanged


def test_lines_are_counted_as_editors_count_them(tmp_path):
    base = b"a\x0cb\nc\r\nd\re\n"
    change = one_change(tmp_path / "ff", "ff.txt", base, base.replace(b"e\n", b"E\n"))
    (hunk,) = hunks(change)
    assert hunk.base_start == 3 and hunk.base_lines == ("e\n",)  # a form feed ends no line
