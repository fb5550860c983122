"""Checks an uploaded video with PyAV before it is queued, so bad uploads fail at once with a clear
4xx instead of minutes later as a failed job."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from app.errors import InputError

# Containers we recognise by their first bytes: a file that starts like one of them but does not
# open is a corrupt video (400), anything else is not a video at all (415).
_VIDEO_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"OggS"),
)
# FFmpeg demuxers we take videos from (a demuxer's name lists its aliases, comma-separated). FFmpeg
# also opens still images (png_pipe, jpeg_pipe, gif, ...) as one-frame "videos": those are refused.
_VIDEO_DEMUXERS = {"mov", "mp4", "matroska", "webm", "avi", "ogg"}
_NOT_A_VIDEO = "unsupported file type: send a video (MP4, MOV, WebM, MKV or AVI)"


class VideoError(InputError):
    """An upload that cannot become a video job."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int  # from the container; estimated from duration x fps when it does not say
    duration_s: float
    codec: str


def looks_like_video(head: bytes) -> bool:
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _VIDEO_MAGIC)


def probe(path: Path, max_seconds: float, max_side: int) -> VideoInfo:
    """Opens the file, reads its first frame and checks the limits.

    Raises:
        VideoError: 400 empty or corrupt, 415 not a video / no video stream, 422 too long or too large.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoError(400, "empty_file", "the uploaded file is empty")
    with path.open("rb") as f:
        head = f.read(16)
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        if looks_like_video(head):
            raise VideoError(400, "corrupt_video", f"the video file is corrupt or truncated ({_reason(exc)})") from None
        raise VideoError(415, "unsupported_media_type", _NOT_A_VIDEO) from None
    with container:
        if not _VIDEO_DEMUXERS.intersection(container.format.name.split(",")):
            raise VideoError(415, "unsupported_media_type", _NOT_A_VIDEO)
        if not container.streams.video:
            raise VideoError(415, "no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            # A codec FFmpeg does not know (e.g. a damaged or unknown codec tag): nothing can decode it.
            raise VideoError(415, "unsupported_codec",
                             "the video's codec is unknown to this server (or its codec tag is damaged)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if max(width, height) > max_side:
            raise VideoError(422, "resolution_too_large",
                             f"the video is {width}x{height}; the largest side allowed is {max_side} px")
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration_s = _duration(container, stream)
        if duration_s > max_seconds:
            raise VideoError(422, "video_too_long",
                             f"the video lasts {duration_s:.0f} s; the limit is {max_seconds:g} s")
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VideoError(400, "corrupt_video", f"the video cannot be decoded ({_reason(exc)})") from None
        if first is None or width <= 0 or height <= 0:
            raise VideoError(400, "empty_video", "the video has no frames")
        frames = stream.frames or max(1, round(duration_s * float(fps)))
        return VideoInfo(width=width, height=height, fps=Fraction(fps), frames=int(frames),
                         duration_s=duration_s, codec=stream.codec_context.name)


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
