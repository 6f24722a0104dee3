"""mp4 writing: odd frame sizes, the MPEG-4 fallback, and bad frames."""

import av
import numpy as np
import pytest

from roboflamingo.eval import video


def frames(n, h=9, w=13):
    return [np.full((h, w, 3), 20 * k, np.uint8) for k in range(n)]


def read(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_odd_sized_frames_are_padded_and_all_kept(tmp_path):
    writer = video.VideoWriter(tmp_path / "tmp.mp4", fps=10)
    for f in frames(5):
        writer.add(f)
    final = writer.finish(tmp_path / "done.mp4")
    assert final.exists() and not (tmp_path / "tmp.mp4").exists()
    codec, decoded = read(final)
    assert codec == "h264" and len(decoded) == 5 and decoded[0].shape == (10, 14, 3)


def test_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "CODECS", ("no_such_codec", "mpeg4"))
    assert video.pick_codec() == "mpeg4"
    writer = video.VideoWriter(tmp_path / "a.mp4")
    for f in frames(3, 16, 16):
        writer.add(f)
    codec, decoded = read(writer.finish(tmp_path / "b.mp4"))
    assert codec == "mpeg4" and len(decoded) == 3


def test_bad_frames_and_empty_videos_are_errors(tmp_path):
    writer = video.VideoWriter(tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="uint8"):
        writer.add(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(RuntimeError, match="no frames"):
        writer.finish(tmp_path / "b.mp4")
    writer = video.VideoWriter(tmp_path / "c.mp4")
    writer.add(frames(1, 8, 8)[0])
    with pytest.raises(ValueError, match="frame size changed"):
        writer.add(frames(1, 16, 16)[0])
    writer.discard()
    assert not (tmp_path / "c.mp4").exists()
