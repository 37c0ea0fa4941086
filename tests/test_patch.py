"""Focused tests of the apply_patch engine: grammar, tolerance levels, ambiguity, line endings, moves, hints."""

from __future__ import annotations

import random
import time

import pytest

from offload.server.agent.patch import Chunk, FileChange, FileOp, PatchError, apply_patch, parse_patch


def wrap(body: str) -> str:
    return f"*** Begin Patch\n{body}\n*** End Patch\n"


def apply(files: dict[str, str | bytes], body: str) -> dict[str, bytes | None]:
    """Apply a patch body to an in-memory workspace; returns the workspace after."""
    data = {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
    changes, _ = apply_patch(wrap(body), data.get)
    for c in changes:
        if c.kind == "delete" or c.new_path:
            data.pop(c.path)
        if c.content is not None:
            data[c.new_path or c.path] = c.content
    return data


def refusal(files: dict[str, str | bytes], body: str) -> str:
    data = {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
    with pytest.raises(PatchError) as err:
        apply_patch(wrap(body), data.get)
    return str(err.value)


# --- parsing ------------------------------------------------------------------------------


def test_parse_patch_builds_file_ops() -> None:
    ops = parse_patch(
        wrap(
            "*** Add File: new.py\n+x = 1\n"
            "*** Delete File: old.py\n"
            "*** Update File: a.py\n*** Move to: b.py\n@@ def f():\n-    pass\n+    return 1\n"
            "@@\n last\n+after\n*** End of File"
        )
    )
    assert ops == [
        FileOp("add", "new.py", 2, content="x = 1\n"),
        FileOp("delete", "old.py", 4),
        FileOp(
            "update",
            "a.py",
            5,
            new_path="b.py",
            chunks=(
                Chunk(("def f():",), (("-", "    pass"), ("+", "    return 1")), False, 7),
                Chunk((), ((" ", "last"), ("+", "after")), True, 10),
            ),
        ),
    ]


def test_parse_unified_header_keeps_only_its_context() -> None:
    (op,) = parse_patch(wrap("*** Update File: a.py\n@@ -10,6 +10,7 @@ def total(self):\n-x\n+y"))
    assert op.chunks[0].headers == ("def total(self):",)
    (op,) = parse_patch(wrap("*** Update File: a.py\n@@ -1 +1 @@\n-x\n+y"))
    assert op.chunks[0].headers == ()


def test_parse_nested_headers_and_blank_context() -> None:
    (op,) = parse_patch(wrap("*** Update File: a.py\n@@ class A:\n@@     def f(self):\n x\n\n-y\n+z"))
    assert op.chunks[0].headers == ("class A:", "def f(self):")
    assert op.chunks[0].lines == ((" ", "x"), (" ", ""), ("-", "y"), ("+", "z"))


def test_parse_crlf_patch_equals_lf_patch() -> None:
    text = wrap("*** Update File: a.py\n@@\n-x\n+y")
    assert parse_patch(text.replace("\n", "\r\n")) == parse_patch(text)


@pytest.mark.parametrize(
    "text",
    [
        "```\n*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\n```",
        "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\nEOF\n",
        "<<\"EOF\"\n*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\nEOF",
        "applypatch <<'PATCH'\n*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\nPATCH",
        "```\n*** Begin Patch\n*** Add File: a\n+x\n```",
        "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: a\n+x\nEOF",
        "*** Add File: a\n+x\n*** End Patch",
        "  *** Begin Patch\n  *** Add File: a\n  +x\n  *** End Patch",
    ],
    ids=["fence", "heredoc", "bare-heredoc", "applypatch-heredoc", "no-end-in-closed-fence", "no-end-in-closed-heredoc",
         "no-begin", "indented"],
)
def test_parse_lenient_wrappers(text: str) -> None:
    assert [(op.kind, op.path, op.content) for op in parse_patch(text)] == [("add", "a", "x\n")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("*** Begin Patch\n*** End Patch", "no file sections"),
        ("hello", "line 1: a patch starts with '*** Begin Patch'"),
        (wrap("*** Frobnicate File: a"), "line 2: expected a file section"),
        (wrap("*** Update File: a.py\n@@\nx = 1\n+y"), "line 4: in an Update File chunk every line starts with"),
        (wrap("*** Update File: a.py"), "has no chunks"),
        (
            wrap("*** Update File: a.py\n@@ def f():\n*** Delete File: b"),
            "line 3: the chunk '@@ def f():' in a.py has no lines",
        ),
        (wrap("*** Update File: a.py\n@@\n-x\n*** End of File\n+y"), "line 6: after '*** End of File'"),
        (wrap("*** Add File: a\n x"), "line 3: every line of an added file starts with '+'"),
        (wrap("*** Delete File: a\n-x"), "takes no lines"),
        (wrap("*** Update File: a\n@@\n-x\n+y\n*** Move to: b"), "must come right after"),
        ("*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\nthanks!", "line 5: unexpected text after '*** End Patch'"),
        ("*** Begin Patch\n*** Add File: a\n+x\n*** Begin Patch", "second '*** Begin Patch'"),
        ("*** Begin Patch\n*** Add File: a\n+x", "does not end with '*** End Patch', so it may have been cut off"),
        ("```\n*** Begin Patch\n*** Update File: a\n@@\n-x", "may have been cut off"),  # a fence never closed
        ("apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: a\n@@\n x\n-y", "may have been cut off"),
        (wrap("*** Add File: a\n+1\n*** Add File: a\n+2"), "a is touched twice in this patch (also at line 2)"),
        (wrap("*** Update File: a\n*** Move to: b\n*** Delete File: b"), "b is touched twice"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(PatchError) as err:
        parse_patch(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("C:\\Users\\x.py", "absolute path"),
        ("c:/x.py", "absolute path"),
        ("\\\\server\\share\\x", "absolute path"),
        ("~/x", "absolute path"),
        ("../x", "escapes the workspace root"),
        ("a/../../x", "escapes the workspace root"),
        ("a\x00b", "NUL"),
        ("a\\b.py", "backslash"),
        ("dir/", "names a directory"),
        ("a/..", "does not name a file"),
        ("   ", "path is empty"),
    ],
)
def test_unsafe_paths_refused(path: str, message: str) -> None:
    with pytest.raises(PatchError) as err:
        parse_patch(wrap(f"*** Add File: {path}\n+x"))
    assert message in str(err.value)


def test_paths_normalised() -> None:
    ops = parse_patch(wrap("*** Add File: ./a//b/./c.py\n+x\n*** Update File: a/x/../d.py\n*** Move to: ./e.py"))
    assert [(op.path, op.new_path) for op in ops] == [("a/b/c.py", None), ("a/d.py", "e.py")]


# --- tolerance levels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "patch_line", "level"),
    [
        ("    x = 1\n", "    x = 1", "exact"),
        ("    x = 1   \n", "    x = 1", "trailing whitespace"),
        ("\t\tx = 1\n", "  x = 1", "surrounding whitespace"),
        ("    s = \u201cx\u201d \u2014 \u2018y\u2019\u00a0z\u2026\n", '    s = "x" - \'y\' z...', "unicode punctuation"),
    ],
)
def test_each_tolerance_level_locates_the_line(file: str, patch_line: str, level: str) -> None:
    after = apply({"a.py": "before\n" + file + "after\n"}, f"*** Update File: a.py\n@@\n before\n-{patch_line}\n after")
    assert after["a.py"] == b"before\nafter\n", level


def test_stricter_level_wins_over_looser_duplicates() -> None:
    files = {"a.py": "x = 1\n    x = 1\nx = 1 \n"}
    assert apply(files, "*** Update File: a.py\n@@\n-x = 1\n+x = 2")["a.py"] == b"x = 2\n    x = 1\nx = 1 \n"


def test_tolerant_match_keeps_the_files_context_text() -> None:
    files = {"a.md": "\u201cTitle\u201d \u2014 intro   \nold body\n"}
    after = apply(files, '*** Update File: a.md\n@@\n "Title" - intro\n-old body\n+new body')
    assert after["a.md"] == "\u201cTitle\u201d \u2014 intro   \nnew body\n".encode()


@pytest.mark.parametrize(
    ("file", "chunk", "expected"),
    [
        # The chunk is 4 spaces left of the file everywhere: added lines move right by 4.
        ("class A:\n    def f(self):\n        return 1\n", " def f(self):\n-    return 1\n+    return 2\n+    # done",
         "class A:\n    def f(self):\n        return 2\n        # done\n"),
        # The chunk is 2 spaces right of the file: added lines move left by 2.
        ("if x:\n    y()\n", "   if x:\n-      y()\n+      z()", "if x:\n    z()\n"),
        # Tabs in the file, 4 spaces per level in the patch: added lines get tabs.
        ("func f() {\n\tif x {\n\t\ty()\n\t}\n}\n", "     if x {\n-        y()\n+        z()\n+        w()",
         "func f() {\n\tif x {\n\t\tz()\n\t\tw()\n\t}\n}\n"),
        # Spaces in the file, tabs in the patch: added lines get the file's spaces.
        ("def f():\n    return 1\n", " def f():\n-\treturn 1\n+\treturn 2", "def f():\n    return 2\n"),
        # Disagreeing shifts (one line off by 2, one by 0): added lines are written as given.
        ("def f():\n    a()\n    b()\n", " def f():\n       a()\n     b()\n+    c()",
         "def f():\n    a()\n    b()\n    c()\n"),
    ],
    ids=["shift-right", "shift-left", "spaces-to-tabs", "tabs-to-spaces", "inconsistent"],
)
def test_reindent_only_on_a_consistent_shift(file: str, chunk: str, expected: str) -> None:
    assert apply({"a": file}, f"*** Update File: a\n@@\n{chunk}")["a"] == expected.encode()


# --- ambiguity ---------------------------------------------------------------------------


DUPLICATED = "def a():\n    return None\n\n\ndef b():\n    return None\n"


def test_ambiguity_names_every_candidate_line() -> None:
    msg = refusal({"m.py": DUPLICATED}, "*** Update File: m.py\n@@\n-    return None\n+    return 0")
    assert "m.py, chunk 1 of 1 (patch line 3)" in msg
    assert "match 2 places in the file, starting at lines 2, 6" in msg
    assert "At line 2:" in msg and "At line 6:" in msg and "     5 | def b():" in msg
    assert msg.endswith("No files were changed; fix the patch and send the whole patch again.")


def test_ambiguity_at_a_tolerant_level_says_so() -> None:
    msg = refusal({"m.py": "  x\n    x\n"}, "*** Update File: m.py\n@@\n-x\n+y")
    assert "(ignoring surrounding whitespace)" in msg and "lines 1, 2" in msg


def test_header_disambiguates_and_so_does_position() -> None:
    assert apply({"m.py": DUPLICATED}, "*** Update File: m.py\n@@ def b():\n-    return None\n+    return 0")["m.py"] == (
        DUPLICATED.replace("def b():\n    return None", "def b():\n    return 0").encode()
    )
    two_chunks = "*** Update File: m.py\n@@\n def a():\n-    return None\n+    return 1\n@@\n-    return None\n+    return 2"
    assert apply({"m.py": DUPLICATED}, two_chunks)["m.py"] == (
        b"def a():\n    return 1\n\n\ndef b():\n    return 2\n"
    )


def test_header_block_with_two_matches_is_ambiguous() -> None:
    file = "def f(x, y):\n    if x:\n        return None\n    if y:\n        return None\n    return 1\n"
    msg = refusal({"m.py": file}, "*** Update File: m.py\n@@ def f(x, y):\n-        return None\n+        return 0")
    assert "lines 3, 5" in msg and "'@@ def f(x, y):' does not tell them apart" in msg


def test_pure_addition_with_header_is_refused_without_header_appends() -> None:
    msg = refusal({"m.py": DUPLICATED}, "*** Update File: m.py\n@@ def a():\n+    log()")
    assert "only adds lines" in msg
    assert apply({"m.py": "a\n"}, "*** Update File: m.py\n@@\n+b")["m.py"] == b"a\nb\n"


# --- line endings -------------------------------------------------------------------------


def test_crlf_file_stays_crlf_and_added_lines_get_crlf() -> None:
    after = apply({"w.txt": b"a\r\nb\r\nc\r\n"}, "*** Update File: w.txt\n@@\n a\n-b\n+B\n+B2\n c")
    assert after["w.txt"] == b"a\r\nB\r\nB2\r\nc\r\n"


def test_crlf_patch_on_lf_file_stays_lf() -> None:
    changes, _ = apply_patch(wrap("*** Update File: u\n@@\n-a\n+b").replace("\n", "\r\n"), {"u": b"a\n"}.get)
    assert changes[0].content == b"b\n"


def test_mixed_endings_keep_each_lines_own_ending() -> None:
    after = apply({"m": b"a\r\nb\nc\r\n"}, "*** Update File: m\n@@\n a\n-b\n+B")
    assert after["m"] == b"a\r\nB\r\nc\r\n"  # the replaced line is new: it takes the dominant CRLF


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (" a\n-b\n+B", b"a\nB\nc"),  # an edit elsewhere keeps the final newline missing
        (" b\n-c\n+C", b"a\nb\nC"),  # an edit of the last line too
        (" b\n-c\n+C\n*** End of File", b"a\nb\nC\n"),  # an End of File chunk ends it, as Codex does
        ("+d", b"a\nb\nc\nd"),  # appending keeps it missing
        (" c\n+d\n*** End of File", b"a\nb\nc\nd\n"),
        ("-a\n+A\n b\n c\n*** End of File", b"A\nb\nc"),  # the last line is only context: still missing
        (" b\n-c", b"a\nb"),  # removing the last line keeps it missing
    ],
)
def test_missing_final_newline(chunk: str, expected: bytes) -> None:
    assert apply({"f": "a\nb\nc"}, f"*** Update File: f\n@@\n{chunk}")["f"] == expected


def test_added_files_end_with_a_newline_empty_ones_stay_empty() -> None:
    after = apply({}, "*** Add File: a\n+x\n+y\n*** Add File: empty")
    assert after == {"a": b"x\ny\n", "empty": b""}


def test_bom_is_kept() -> None:
    assert apply({"c.csv": "\ufeffid\n1\n"}, "*** Update File: c.csv\n@@\n-id\n+key")["c.csv"] == "\ufeffkey\n1\n".encode()


def test_undecodable_bytes_survive_an_edit() -> None:
    assert apply({"l.txt": b"caf\xe9\nv1\n"}, "*** Update File: l.txt\n@@\n-v1\n+v2")["l.txt"] == b"caf\xe9\nv2\n"


# --- files, moves, binaries ---------------------------------------------------------------


def test_changes_and_summary() -> None:
    files = {"a.py": b"x = 1\n", "old.py": b"", "m.py": b"y\n"}
    changes, summary = apply_patch(
        wrap(
            "*** Delete File: old.py\n*** Update File: a.py\n*** Move to: pkg/a.py\n@@\n-x = 1\n+x = 2\n"
            "*** Add File: new.py\n+z\n*** Update File: m.py\n*** Move to: n.py"
        ),
        files.get,
    )
    assert changes == [
        FileChange("old.py", "delete", None, None),
        FileChange("a.py", "update", "pkg/a.py", b"x = 2\n"),
        FileChange("new.py", "add", None, b"z\n"),
        FileChange("m.py", "update", "n.py", b"y\n"),
    ]
    assert summary == "Success. Updated the following files:\nA new.py\nM pkg/a.py\nM n.py\nD old.py\n"


@pytest.mark.parametrize(
    ("files", "body", "message"),
    [
        ({"a": "x\n"}, "*** Add File: a\n+y", "a (patch line 2): '*** Add File' but the file already exists"),
        ({}, "*** Update File: a\n@@\n-x\n+y", "'*** Update File' but the file does not exist"),
        ({}, "*** Delete File: a", "'*** Delete File' but the file does not exist"),
        ({"a": "x\n", "b": "y\n"}, "*** Update File: a\n*** Move to: b", "'*** Move to: b' but that file already exists"),
    ],
)
def test_existence_rules(files: dict[str, str], body: str, message: str) -> None:
    assert message in refusal(files, body)


def test_binary_files_are_not_edited_but_can_move() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert "binary file" in refusal({"i.png": png}, "*** Update File: i.png\n@@\n-PNG\n+JPG")
    assert apply({"i.png": png}, "*** Update File: i.png\n*** Move to: img/i.png") == {"img/i.png": png}
    late_nul = b"".join(b"line %d\n" % i for i in range(2000)) + b"\x00\n"  # past the first 8 KiB: text
    after = apply({"t": late_nul}, "*** Update File: t\n@@\n-line 7\n+LINE 7")
    assert after["t"] == late_nul.replace(b"line 7\n", b"LINE 7\n")


# --- all or nothing, hints ------------------------------------------------------------------


def test_one_failure_refuses_everything_and_reports_every_file() -> None:
    files = {"a.py": b"A = 1\n", "b.py": b"B = 1\n"}
    with pytest.raises(PatchError) as err:
        apply_patch(
            wrap(
                "*** Add File: c.py\n+C\n"
                "*** Update File: a.py\n@@\n-A = 9\n+A = 2\n"
                "*** Update File: b.py\n@@\n-B = 9\n+B = 2"
            ),
            files.get,
        )
    msg = str(err.value)
    assert "a.py, chunk 1 of 1 (patch line 5)" in msg and "b.py, chunk 1 of 1 (patch line 9)" in msg
    assert "No files were changed" in msg


def test_read_errors_become_patch_errors() -> None:
    def read(path: str) -> bytes | None:
        raise IsADirectoryError(21, "Is a directory")

    with pytest.raises(PatchError, match="src: cannot be read"):
        apply_patch(wrap("*** Update File: src\n@@\n-x\n+y"), read)


def test_unencodable_text_is_refused() -> None:
    with pytest.raises(PatchError, match="cannot be written as UTF-8"):
        apply_patch(wrap("*** Add File: a\n+\ud800"), {}.get)


SERVER = "import socket\n\n\ndef serve(port):\n    server = make_server(port)\n    server.serve_forever()\n"


def test_nearest_text_hint_shows_numbered_lines_and_the_first_difference() -> None:
    msg = refusal({"s.py": SERVER}, "*** Update File: s.py\n@@\n def serve(port):\n-    httpd = make_server(port)\n+    x")
    assert "could not find the lines this chunk changes:\n     def serve(port):\n    -    httpd = make_server(port)" in msg
    assert (
        "Nearest text in the file (lines 3-6):\n     3 | \n     4 | def serve(port):\n     5 |     server = make_server(port)"
    ) in msg
    assert "Line 5 is '    server = make_server(port)', but the patch expects '    httpd = make_server(port)'." in msg


def test_nearest_text_falls_back_to_similar_lines() -> None:
    msg = refusal({"s.py": SERVER}, "*** Update File: s.py\n@@\n-    serve.serve_forevr()\n+    x")
    assert "     6 |     server.serve_forever()" in msg


def test_missing_header_lists_similar_lines() -> None:
    msg = refusal({"s.py": SERVER}, "*** Update File: s.py\n@@ def server(port):\n-    x\n+    y")
    assert "could not find the line '@@ def server(port):'" in msg and "     4 | def serve(port):" in msg


def test_out_of_order_chunks_are_explained() -> None:
    msg = refusal(
        {"s.py": SERVER},
        "*** Update File: s.py\n@@\n-    server.serve_forever()\n+    server.run()\n@@\n-import socket\n+import ssl",
    )
    assert "They are at line 1, above where the previous chunk ended" in msg


def test_large_files_stay_fast() -> None:
    lines = [f"    value_{i} = compute_{i % 97}(x, y) + {i * 7919 % 1000003}" for i in range(50000)]
    data = ("\n".join(lines) + "\n").encode()
    t0 = time.perf_counter()
    apply_patch(wrap(f"*** Update File: big.py\n@@\n {lines[40000]}\n-{lines[40001]}\n+    changed = 1"), {"big.py": data}.get)
    with pytest.raises(PatchError):
        missing = "*** Update File: big.py\n@@\n     value_40000 = compute_0(x, y) + 1\n-    nope\n+    x"
        apply_patch(wrap(missing), {"big.py": data}.get)
    assert time.perf_counter() - t0 < 5.0


def test_mangled_patches_never_crash() -> None:
    """Every corpus patch, mangled the ways streams and models mangle text: a PatchError or a result, never a crash."""
    from tests.patch_corpus import load_cases

    rng = random.Random(7)
    noise = ["@@", "@@ ", "*** End of File", "*** Move to: x", "+", "-", " ", "\t", "***", "```", "EOF", "*** End Patch"]
    for case in load_cases():
        for _ in range(4):
            lines = case.patch.split("\n")
            i = rng.randrange(len(lines))
            kind = rng.randrange(4)
            if kind == 0:
                del lines[i]
            elif kind == 1:
                lines.insert(i, rng.choice(lines))
            elif kind == 2:
                lines[i] = rng.choice(noise)
            else:
                lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
            try:
                changes, summary = apply_patch("\n".join(lines), case.files.get)
            except PatchError as e:
                assert str(e).strip()
            else:
                assert summary.startswith("Success.") and all(isinstance(c, FileChange) for c in changes)
