"""Following faces between full searches: MTCNN's O-net on the previous frame's boxes."""
from __future__ import annotations

import numpy as np
import pytest

from app.inference.keyframes import KeyframeDetector
from app.tracking import iou_matrix
from video_clips import moving_face_frames


def test_refine_follows_a_moved_face(service, astronaut):
    (before,) = service.detect(astronaut)
    dy, dx = 12, 20
    moved = np.roll(astronaut, (dy, dx), axis=(0, 1))
    (after,) = service.follow(moved, [before])
    shift = np.array([dx, dy, dx, dy], dtype=np.float32)
    assert np.abs(after.box - (before.box + shift)).max() < 6, (before.box, after.box)
    assert np.abs(after.landmarks - (before.landmarks + shift[:2])).max() < 6
    assert after.score >= service.detector.follow_min_score


def test_refine_drops_boxes_without_a_face_and_outside_the_picture(service, astronaut):
    detector = service.detector
    boxes = np.array([[400, 400, 450, 450], [600, 600, 700, 700], [-90, -90, -10, -10]], dtype=np.float32)
    assert detector.refine_many([astronaut], [boxes]) == [[]]
    assert detector.refine_many([astronaut], [np.zeros((0, 4), np.float32)]) == [[]]
    assert service.follow(astronaut, []) == []


def test_boxes_that_converge_on_one_face_are_merged(service, astronaut):
    (face,) = service.detect(astronaut)
    nudged = face.box + np.array([4, 3, 4, 3], dtype=np.float32)
    (found,) = service.detector.refine_many([astronaut], [np.stack([face.box, nudged])])
    assert len(found) == 1


class CountingService:
    """The real service, counting its full searches."""

    def __init__(self, service):
        self.service, self.searched = service, 0

    def submit_searches(self, images, max_side=None, source="photo"):
        self.searched += len(images)
        return self.service.submit_searches(images, max_side, source)

    def follow(self, image, previous, source="photo"):
        return self.service.follow(image, previous, source)


def test_followed_frames_agree_with_a_full_search(service, astronaut):
    # A fast face: 24 px a frame, 40% of its width; following keeps up by predicting its motion.
    frames = moving_face_frames(astronaut, frames=16, width=480, height=240)
    counting = CountingService(service)
    keyframes = KeyframeDetector(counting, search_every=4)
    followed = keyframes.detect(frames[:6]) + keyframes.detect(frames[6:])  # across two calls
    assert counting.searched == 4 == keyframes.searches  # frames 0, 4, 8, 12
    searched = service.detect_many(frames)
    for i, (mine, full) in enumerate(zip(followed, searched)):
        assert len(mine) == len(full) == 1, i
        assert iou_matrix([mine[0].box], [full[0].box])[0, 0] > 0.8, i


def test_a_face_that_enters_is_found_at_the_next_search(service, astronaut):
    frames = moving_face_frames(astronaut, frames=40, width=480, height=240)[:10]  # 9 px a frame
    empty = np.full_like(frames[0], 120)
    frames[:4] = [empty] * 4  # the face enters at frame 4
    found = KeyframeDetector(service, search_every=3).detect(frames)  # searches at 0, 3, 6, 9
    assert [len(f) for f in found] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_chunks_started_ahead_finish_as_one_call_would(service, astronaut):
    """A video job queues the searches of later chunks before it finishes earlier ones (start, then
    finish in order): the detections are those of one call over all the frames."""
    frames = moving_face_frames(astronaut, frames=16, width=480, height=240)
    ahead = KeyframeDetector(service, search_every=4)
    pending = [ahead.start(frames[i:i + 4]) for i in range(0, 16, 4)]
    assert ahead.frames_started == 16 and ahead.frames_seen == 0 and ahead.searches == 4
    with pytest.raises(ValueError, match="out of order"):
        ahead.finish(pending[1])
    staged = [d for p in pending for d in ahead.finish(p)]
    together = KeyframeDetector(service, search_every=4).detect(frames)
    assert [len(d) for d in staged] == [len(d) for d in together] == [1] * 16
    for mine, theirs in zip(staged, together):
        assert np.allclose(mine[0].box, theirs[0].box, atol=0.5)


def test_search_every_must_be_positive(service):
    with pytest.raises(ValueError):
        KeyframeDetector(service, search_every=0)


def test_analyze_many_matches_one_picture_at_a_time(service, astronaut, side_by_side):
    images = [astronaut, side_by_side]
    detections = service.detect_many(images)
    together = service.analyze_many(images, detections)
    alone = [service.analyze_detections(img, dets) for img, dets in zip(images, detections)]
    assert [len(f) for f in together] == [1, 2]
    for a, b in zip(sum(together, []), sum(alone, [])):
        assert a.box == b.box and a.emotion.label == b.emotion.label
        assert a.age.years == pytest.approx(b.age.years, abs=1e-3)
