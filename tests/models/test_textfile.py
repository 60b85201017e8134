import hashlib

import pytest

from harness.models.textfile import read_text


def test_read_text_returns_the_text_and_the_sha256_of_its_bytes(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("héllo wörld\n".encode())
    text, sha = read_text(p)
    assert text == "héllo wörld\n" and sha == hashlib.sha256(p.read_bytes()).hexdigest()
    p.write_text("changed")  # the cache follows the file
    assert read_text(p)[0] == "changed"


@pytest.mark.parametrize("content,match", [(b"\xff\xfe\x00bad", "not UTF-8"), (b"  \n", "is empty")])
def test_bad_files_are_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_text(p)
    with pytest.raises(ValueError, match="cannot be read"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="cannot be read"):
        read_text(tmp_path)
