"""Failing checks' output becomes file locations."""

from offload.server.tasks.failures import failure_locations

UNITTEST = '''F.
======================================================================
FAIL: test_add (test_calc.CalcTest.test_add)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/workspace/test_calc.py", line 8, in test_add
    self.assertEqual(add(2, 3), 5)
AssertionError: -1 != 5

----------------------------------------------------------------------
Ran 2 tests in 0.001s

FAILED (failures=1)
'''


def test_python_traceback_inside_the_workspace():
    assert failure_locations(UNITTEST) == [{"path": "test_calc.py", "line": 8, "message": "AssertionError: -1 != 5"}]


def test_frames_outside_the_workspace_are_ignored_and_the_deepest_inside_wins():
    output = ('Traceback (most recent call last):\n  File "/workspace/app/main.py", line 3, in <module>\n'
              '  File "/usr/lib/python3.11/json/__init__.py", line 346, in loads\n'
              "json.decoder.JSONDecodeError: Expecting value\n")
    assert failure_locations(output) == [{"path": "app/main.py", "line": 3,
                                          "message": "json.decoder.JSONDecodeError: Expecting value"}]


def test_colon_locations_from_linters_and_compilers_relative_to_the_workdir():
    output = "src/x.c:12:5: error: expected ';'\ntests/test_a.py:40: AssertionError\nnot a location: 12\n"
    assert failure_locations(output, workdir="pkg") == [
        {"path": "pkg/src/x.c", "line": 12, "message": "error: expected ';'"},
        {"path": "pkg/tests/test_a.py", "line": 40, "message": "AssertionError"},
    ]
