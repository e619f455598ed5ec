"""Dataset download against a local HTTP server on 127.0.0.1 serving archives the tests build."""

import hashlib
import http.server
import io
import socket
import threading
import zipfile

import pytest

from deblur_exp.data.degrade import DegradationConfig
from deblur_exp.data.download import DownloadLimits, fetch_dataset
from deblur_exp.data.patches import load_patches
from deblur_exp.data.sources import DataConfig
from deblur_exp.errors import DeblurError
from deblur_exp.training.loop import train
from tests.conftest import TINY, write_sharp_images


@pytest.fixture
def archive(tmp_path):
    """A zip holding T91-like/img*.png inside a top folder, as real dataset archives do."""
    images = write_sharp_images(tmp_path / "src", names=("img0", "img1", "img2"), size=(48, 48))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted(images.iterdir()):
            z.write(path, f"T91-like/{path.name}")
        z.writestr("T91-like/README.txt", "three images")
    return buffer.getvalue()


@pytest.fixture
def server(archive):
    """Serves /data.zip, /half.zip (first half only) and /cut.zip (announces more bytes than it sends)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/data.zip": archive, "/half.zip": archive[: len(archive) // 2], "/cut.zip": archive}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive) if self.path == "/cut.zip" else len(body)))
            self.end_headers()
            self.wfile.write(body if self.path != "/cut.zip" else body[:100])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_extracts(server, archive, tmp_path):
    root = tmp_path / "data" / "T91"
    fetch_dataset(f"{server}/data.zip", root, sha256=hashlib.sha256(archive).hexdigest(), expected_images=3)
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "img0.png", "img1.png", "img2.png"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["T91"]  # no temp folder left


def test_training_downloads_a_missing_folder(server, tmp_path):
    data_dir = tmp_path / "data"
    cfg_overrides = [o for o in TINY if not o.startswith("data.")]
    from hydra import compose, initialize_config_dir

    from deblur_exp.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*cfg_overrides, "data=t91", f"paths.data_dir={data_dir}",
                                          "data.download=true", f"data.url={server}/data.zip",
                                          "data.expected_images=3", "data.patch_size=16", "data.stride=16",
                                          f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"])
    assert train(cfg) > 0
    assert len(list((data_dir / "T91").glob("*.png"))) == 3


@pytest.mark.parametrize("path,kwargs,message", [
    ("/data.zip", {"sha256": "0" * 64}, "checksum mismatch"),
    ("/half.zip", {}, "archive is corrupt or truncated|not a zip or tar archive"),
    ("/cut.zip", {}, "download failed|download truncated"),
    ("/data.zip", {"expected_images": 91}, "archive holds 3 images, expected 91"),
    ("/missing.zip", {}, "download failed .Not Found"),
])
def test_bad_downloads_fail_clearly_and_leave_nothing(server, tmp_path, path, kwargs, message):
    root = tmp_path / "data" / "T91"
    with pytest.raises(DeblurError, match=message):
        fetch_dataset(f"{server}{path}", root, **kwargs)
    assert not root.exists() and list((tmp_path / "data").iterdir()) == []


def test_server_down(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "data" / "Set5"
    with pytest.raises(DeblurError, match=f"127.0.0.1:{port}/Set5.zip: download failed"):
        fetch_dataset(f"http://127.0.0.1:{port}/Set5.zip", root, limits=DownloadLimits(timeout_s=5))
    assert not root.exists()


def test_eval_sets_download_on_demand(server, tmp_path):
    from omegaconf import OmegaConf

    from deblur_exp.evaluation.scoring import EvalConfig, eval_image_sets

    cfg = OmegaConf.structured(EvalConfig(sets=["Set5"], download=True, urls={"Set5": f"{server}/data.zip"}))
    sets, problems = eval_image_sets(cfg, tmp_path / "data")
    assert [im.name for im in sets["Set5"]] == ["img0", "img1", "img2"]
    assert problems == [f"{tmp_path / 'data' / 'Set5' / 'README.txt'}: not an image file"]


def test_folder_without_download_explains_how(tmp_path):
    data = DataConfig(name="t91", root=str(tmp_path / "T91"))
    with pytest.raises(DeblurError, match="data.download=true with data.url"):
        load_patches(data, DegradationConfig(name="g"), None)


def serve_once(tmp_path, body: bytes):
    """A one-file HTTP server on 127.0.0.1 for an archive a test builds; returns (url, stop)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/data.tar", httpd.shutdown


@pytest.mark.parametrize("link_name, target", [("A", "Set5"), ("a/b/A", "../../zz")])
def test_an_archive_holding_a_link_is_refused_and_leaves_nothing(tmp_path, link_name, target):
    """A link inside the archive would be moved into the data directory as a link: `A -> Set5` trains on the
    user's own folder, `a/b/A -> ../../zz` points above the data directory. Only plain files and folders pass."""
    import tarfile

    images = write_sharp_images(tmp_path / "src", names=("i0", "i1", "i2", "i3", "i4"), size=(48, 48))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(images.iterdir()):
            tar.add(path, f"Set5/{path.name}")
        link = tarfile.TarInfo(link_name)
        link.type, link.linkname = tarfile.SYMTYPE, target
        tar.addfile(link)
    url, stop = serve_once(tmp_path, buffer.getvalue())
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    try:
        with pytest.raises(DeblurError, match="not a plain file or folder"):
            fetch_dataset(url, data_dir / "T91", expected_images=5)
    finally:
        stop()
    assert list(data_dir.iterdir()) == []


def test_a_server_that_trickles_is_given_up_at_the_deadline(tmp_path):
    """A byte at a time, never silent long enough for the socket timeout: the whole download has a deadline."""
    import time

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    root = tmp_path / "data" / "Set5"
    started = time.monotonic()
    try:
        with pytest.raises(DeblurError, match=r"download still unfinished after 1 s"):
            fetch_dataset(f"http://127.0.0.1:{httpd.server_address[1]}/Set5.zip", root,
                          limits=DownloadLimits(timeout_s=5, deadline_s=1))
    finally:
        httpd.shutdown()
    assert time.monotonic() - started < 5 and list(root.parent.iterdir()) == []


def test_an_archive_that_would_extract_past_the_limit_is_refused(server, tmp_path):
    root = tmp_path / "data" / "T91"
    with pytest.raises(DeblurError, match="would extract to .* MiB, over the 0 MiB limit; refused"):
        fetch_dataset(f"{server}/data.zip", root, limits=DownloadLimits(max_extracted_bytes=1000))
    assert list(root.parent.iterdir()) == []


def test_sigterm_during_a_download_leaves_nothing_behind(server, tmp_path, monkeypatch):
    """Under scripts/train.py a SIGTERM outside the epochs raises Terminated (cli.run_hydra_cli installs the
    handler); mid-download it unwinds the temporary folder beside the target, which SIGTERM's default action
    used to leave (.T91-*)."""
    import os
    import signal

    import deblur_exp.data.download as download
    from deblur_exp.cli import _terminate
    from deblur_exp.errors import Terminated

    def interrupted(url, dest, *args):
        dest.write_bytes(b"half an archive")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(download, "_download", interrupted)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(Terminated):
            fetch_dataset(f"{server}/data.zip", tmp_path / "data" / "T91")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list((tmp_path / "data").iterdir()) == []
