"""Setup plumbing: resumable downloads, safe extraction, staged output folders, CLI error handling."""
import http.server
import io as pyio
import tarfile
import threading
import zipfile

import numpy as np
import pytest

from transpose.data import layout
from transpose.data.setup import common

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    ranges_seen: list = []

    def do_GET(self):  # noqa: N802 (http.server API)
        start = 0
        rng = self.headers.get("Range")
        type(self).ranges_seen.append(rng)
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges_seen = []
    yield f"http://127.0.0.1:{httpd.server_port}/data.zip"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_with_range(tmp_path, server):
    dest = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:123_456])
    RangeHandler.honour_range = True
    assert common.download(server, dest) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "data.zip.part").exists()
    assert RangeHandler.ranges_seen == ["bytes=123456-"]
    # an existing complete file is not fetched again
    common.download(server, dest)
    assert len(RangeHandler.ranges_seen) == 1


def test_download_restarts_when_range_is_ignored(tmp_path, server):
    dest = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(b"x" * 1000)  # stale partial content
    RangeHandler.honour_range = False
    try:
        common.download(server, dest)
    finally:
        RangeHandler.honour_range = True
    assert dest.read_bytes() == PAYLOAD


def test_fetch_archive_offline_needs_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"chess\.zip: archive not found \(download it from http://x\)"):
        common.fetch_archive("chess.zip", "http://x", tmp_path, tmp_path / "dl")
    (tmp_path / "chess.zip").write_bytes(b"PK")
    assert common.fetch_archive("chess.zip", "http://x", tmp_path, tmp_path / "dl") == tmp_path / "chess.zip"


def tar_bytes(files: dict, mode="w:gz") -> bytes:
    buf = pyio.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, pyio.BytesIO(data))
    return buf.getvalue()


def test_extract_zip_and_tar_and_reject_bad_archives(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scene/a.txt", "hello")
        zf.writestr("scene/sub/b.bin", PAYLOAD[:5000])
    common.extract(z, tmp_path / "x")
    assert (tmp_path / "x" / "scene" / "a.txt").read_text() == "hello"
    assert (tmp_path / "x" / "scene" / "sub" / "b.bin").read_bytes() == PAYLOAD[:5000]
    common.extract(z, tmp_path / "y", members=lambda m: m.endswith(".txt"))
    assert not (tmp_path / "y" / "scene" / "sub").exists()
    t = tmp_path / "a.tar.gz"
    t.write_bytes(tar_bytes({"scene/c.txt": b"tar!", "scene/d.bin": PAYLOAD}))
    common.extract(t, tmp_path / "z")
    assert (tmp_path / "z" / "scene" / "d.bin").read_bytes() == PAYLOAD
    # truncated tar.gz and corrupted zip payload: one ValueError naming the file
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(t.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: corrupt or truncated archive"):
        common.extract(cut, tmp_path / "w")
    bad = tmp_path / "bad.zip"
    data = bytearray(z.read_bytes())
    data[60:80] = b"\0" * 20  # inside the first member's compressed data
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.zip: corrupt or truncated archive"):
        common.extract(bad, tmp_path / "v")
    (tmp_path / "html.zip").write_text("<html>404 not found</html>")
    with pytest.raises(ValueError, match=r"html\.zip: not a zip or tar archive"):
        common.extract(tmp_path / "html.zip", tmp_path / "u")
    evil = tmp_path / "evil.tar"
    evil.write_bytes(tar_bytes({"../escape.txt": b"no"}, mode="w"))
    with pytest.raises(ValueError, match="outside the target folder"):
        common.extract(evil, tmp_path / "t")
    assert not (tmp_path / "escape.txt").exists()


def test_staged_scene_is_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with common.staged_scene(tmp_path, "scene_a") as tmp:
            (tmp / "train").mkdir()
            raise RuntimeError("conversion failed half way")
    assert list(tmp_path.iterdir()) == []
    with common.staged_scene(tmp_path, "scene_a", {"frames": 3}) as tmp:
        (tmp / "train").mkdir()
        assert not layout.is_complete(tmp_path / "scene_a")
    assert layout.is_complete(tmp_path / "scene_a") and [p.name for p in tmp_path.iterdir()] == ["scene_a"]
    with pytest.raises(FileExistsError, match="use --overwrite"):
        with common.staged_scene(tmp_path, "scene_a"):
            pass
    with common.staged_scene(tmp_path, "scene_a", overwrite=True) as tmp:
        (tmp / "test").mkdir()
    assert sorted(p.name for p in (tmp_path / "scene_a").iterdir()) == [".complete", "test"]


def test_run_main_exit_codes(capsys):
    def fails(argv):
        raise ValueError("x.txt: broken")

    with pytest.raises(SystemExit) as exc:
        common.run_main(fails, [])
    assert exc.value.code == 1 and capsys.readouterr().err == "error: x.txt: broken\n"
    with pytest.raises(SystemExit) as exc:
        common.run_main(lambda argv: 0, [])
    assert exc.value.code == 0


def test_parse_float_tokens():
    assert common.parse_float_tokens(["1", "2.5e-1"], "f").tolist() == [1.0, 0.25]
    for bad in ("-1.#INF", "1.#IND", "inf", "-nan", "1.#QNAN"):
        assert common.parse_float_tokens(["1", bad], "f") is None
    with pytest.raises(ValueError, match="f: cannot parse 'abc'"):
        common.parse_float_tokens(["abc"], "f")
