"""The face tracker: ids that follow moving faces, tracks that end, the emotion moving average and the
age and gender that converge over a track."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from app.inference.quality import FaceQuality
from app.inference.results import Age, Emotion, Face, Gender, age_group
from app.tracking import FRAME_INDEPENDENCE, FaceTracker, greedy_match, iou_matrix
from models.emotion import EMOTION_CLASSES


def make_face(box=(100, 100, 200, 200), happy=0.5, years=30.0, std=4.0, p_female=0.7) -> Face:
    """A face whose emotion probabilities put ``happy`` on "happy" and share the rest evenly."""
    rest = (1.0 - happy) / (len(EMOTION_CLASSES) - 1)
    probabilities = {name: (happy if name == "happy" else rest) for name in EMOTION_CLASSES}
    return Face(box=tuple(float(v) for v in box), score=0.99, landmarks=[(0.0, 0.0)] * 5,
                emotion=Emotion(label=max(probabilities, key=probabilities.get), probabilities=probabilities),
                age=Age(years=years, std=std, group=age_group(years)), gender=Gender.from_p_female(p_female))


def shifted(box, dx=0.0, dy=0.0):
    x1, y1, x2, y2 = box
    return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def test_iou_matrix_by_hand():
    iou = iou_matrix([(0, 0, 10, 10), (0, 0, 1, 1)], [(5, 0, 15, 10), (0, 0, 10, 10), (20, 20, 30, 30)])
    assert iou.shape == (2, 3)
    assert iou[0] == pytest.approx([50 / 150, 1.0, 0.0])
    assert iou[1] == pytest.approx([0.0, 0.01, 0.0])
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)
    assert iou_matrix([(3, 3, 3, 3)], [(3, 3, 3, 3)])[0, 0] == 0.0  # empty boxes: no division by zero


def test_greedy_match_takes_the_best_pair_first():
    previous = [(0, 0, 10, 10), (8, 0, 18, 10)]
    # Current box 0 overlaps both previous boxes; its best partner is previous 1, which leaves
    # previous 0 to current 1.
    current = [(8, 0, 18, 10), (1, 0, 11, 10)]
    assert greedy_match(previous, current, min_iou=0.3) == {0: 1, 1: 0}
    assert greedy_match(previous, [(100, 100, 110, 110)], min_iou=0.3) == {}
    assert greedy_match([], current, min_iou=0.3) == {}


def test_an_id_follows_a_moving_face():
    tracker = FaceTracker(min_iou=0.3, max_age=2)
    box = (100, 100, 200, 200)
    ids = []
    for _ in range(20):
        box = shifted(box, dx=15, dy=5)  # 15 px per frame, a brisk head turn at 15 fps
        (tracked,) = tracker.update([make_face(box)])
        ids.append(tracked.track_id)
        assert tracked.raw.track_id == tracked.smoothed.track_id == tracked.track_id
        assert tracked.smoothed.box == box  # boxes follow the frame, never the average
    assert ids == [1] * 20


def test_two_faces_keep_their_own_ids_and_averages():
    tracker = FaceTracker(alpha=0.5)
    left, right = (0, 0, 100, 100), (300, 0, 400, 100)
    first = tracker.update([make_face(left, years=20), make_face(right, years=60)])
    assert [t.track_id for t in first] == [1, 2]
    # The detector may list faces in another order in the next frame.
    second = tracker.update([make_face(shifted(right, dx=5), years=60), make_face(shifted(left, dx=5), years=20)])
    assert [t.track_id for t in second] == [2, 1]
    assert [t.smoothed.age.years for t in second] == [pytest.approx(60), pytest.approx(20)]


def test_a_lost_track_expires_and_its_id_is_never_reused():
    tracker = FaceTracker(max_age=2)
    box = (100, 100, 200, 200)
    assert tracker.update([make_face(box)])[0].track_id == 1
    for _ in range(2):  # gone for max_age frames: the track is kept, and comes back with its id
        assert tracker.update([]) == []
    assert tracker.track_ids == [1]
    assert tracker.update([make_face(box)])[0].track_id == 1

    for _ in range(3):  # gone for max_age + 1 frames: the track ends
        tracker.update([])
    assert tracker.track_ids == []
    assert tracker.update([make_face(box)])[0].track_id == 2


def test_a_face_that_jumps_far_starts_a_new_track():
    tracker = FaceTracker(min_iou=0.3)
    tracker.update([make_face((0, 0, 100, 100))])
    (tracked,) = tracker.update([make_face((500, 0, 600, 100))])
    assert tracked.track_id == 2
    assert tracker.track_ids == [1, 2]  # the old track lives on for max_age frames


def test_moving_averages_by_hand():
    tracker = FaceTracker(alpha=0.25)
    box = (100, 100, 200, 200)
    first = tracker.update([make_face(box, happy=0.9, years=40, std=8, p_female=0.8)])[0]
    # A new track starts from its first observation.
    assert first.smoothed.emotion == first.raw.emotion and first.smoothed.gender.label == "female"
    assert first.smoothed.age.years == pytest.approx(40) and first.smoothed.age.std == pytest.approx(8)
    assert first.smoothed.gender.probability == pytest.approx(0.8)

    second = tracker.update([make_face(box, happy=0.1, years=20, std=4, p_female=0.2)])[0]
    s = second.smoothed
    # Emotion: exponential moving average.
    assert s.emotion.probabilities["happy"] == pytest.approx(0.25 * 0.1 + 0.75 * 0.9)  # 0.7
    assert s.emotion.label == "happy"
    assert sum(s.emotion.probabilities.values()) == pytest.approx(1.0)
    # Age: mean in log space, each frame weighted by its quality (none given: 1), not by its claimed spread.
    assert s.age.years == pytest.approx(math.sqrt(41 * 21) - 1)  # 28.3
    # Its uncertainty: the frames' mean claimed log-spread (8/41 and 4/21) or their disagreement, if larger,
    # over 1.1 independent looks.
    claimed = ((8 / 41) ** 2 + (4 / 21) ** 2) / 2
    scatter = ((math.log(41) - math.log(21)) / 2) ** 2
    assert s.age.std == pytest.approx(math.sqrt(41 * 21) * math.sqrt(max(claimed, scatter) / 1.1))
    assert s.age.group == "young adult"
    # Gender: mean of the female logits, log(0.8/0.2) and log(0.2/0.8): undecided.
    assert s.gender.probability == pytest.approx(0.5)
    # The raw values stay reachable, as the models gave them.
    assert second.raw.age.years == 20 and second.raw.emotion.probabilities["happy"] == pytest.approx(0.1)

    third = tracker.update([make_face(box, happy=0.1, years=20, std=4, p_female=0.2)], alpha=1.0)[0]
    assert third.smoothed.age == third.raw.age  # alpha=1: no smoothing of any kind
    assert third.smoothed.gender.label == "male"


def test_age_gets_more_certain_as_frames_arrive():
    tracker = FaceTracker(alpha=0.3)
    rng = np.random.default_rng(1)
    stds = []
    for _ in range(200):
        (t,) = tracker.update([make_face(years=float(30 + rng.normal(0, 2)), std=5.0)])
        stds.append(t.smoothed.age.std)
    assert stds[0] == pytest.approx(5.0, rel=0.1)  # one frame: its own spread
    assert all(b <= a + 1e-9 for a, b in zip(stds[1:], stds[2:]))  # never less certain than before
    # 200 frames count as ~21 independent looks: the spread shrinks by about sqrt(21).
    assert stds[-1] == pytest.approx(5.0 / math.sqrt(1 + FRAME_INDEPENDENCE * 199), rel=0.15)
    assert t.smoothed.age.years == pytest.approx(30, abs=1.0)


def test_frames_that_disagree_keep_the_estimate_uncertain():
    calm, torn = FaceTracker(), FaceTracker()
    for i in range(50):
        (a,) = calm.update([make_face(years=30, std=3)])
        (b,) = torn.update([make_face(years=20 if i % 2 else 45, std=3)])
    assert b.smoothed.age.std > 2 * a.smoothed.age.std


def test_frames_that_claim_certainty_do_not_outvote_the_rest():
    """Within one face the age head is surest of its older readings; the track must not follow them.
    Half the frames say 25 +- 10 years, half 50 +- 3: the track sits between them (in log space
    sqrt(26 * 51) - 1 = 35.4), where weighting by claimed precision (floored at 0.15) put it at 49.2."""
    tracker = FaceTracker()
    for i in range(40):
        (t,) = tracker.update([make_face(years=25.0, std=10.0) if i % 2 else make_face(years=50.0, std=3.0)])
    assert t.smoothed.age.years == pytest.approx(math.sqrt(26 * 51) - 1, abs=0.1)
    # The disagreement shows in the uncertainty: at least the frames' scatter over the looks they count as.
    assert t.smoothed.age.std > 36.4 * ((math.log(51) - math.log(26)) / 2) / math.sqrt(1 + FRAME_INDEPENDENCE * 39)


def test_poor_quality_frames_count_less():
    good = FaceQuality(size=1.0, score=1.0, sharpness=1.0, frontal=1.0)
    poor = FaceQuality(size=0.3, score=1.0, sharpness=0.2, frontal=0.5)  # small, blurred, turned away: 0.03
    estimates = {}
    for name, second in (("weighted", poor), ("control", good)):
        tracker = FaceTracker()
        for _ in range(20):
            tracker.update([replace(make_face(years=30, p_female=0.9), quality=good)])
            (t,) = tracker.update([replace(make_face(years=60, p_female=0.1), quality=second)])
        estimates[name] = t.smoothed
    # The poor frames say 60 and male; they barely move the estimate. Counted fully, half the frames
    # would pull the age to the middle (in log space: sqrt(31 * 61) - 1 = 42.5).
    assert estimates["weighted"].age.years < 34 and estimates["control"].age.years == pytest.approx(42.5, abs=0.2)
    assert estimates["weighted"].gender.label == "female" and estimates["weighted"].gender.probability > 0.85
    assert estimates["control"].gender.probability == pytest.approx(0.5)


def test_labels_follow_the_averaged_values():
    tracker = FaceTracker(alpha=0.5)
    box = (0, 0, 100, 100)
    tracker.update([make_face(box, happy=0.9, p_female=0.9)])
    # One frame that says "not happy, male" is not enough to flip the labels.
    (tracked,) = tracker.update([make_face(box, happy=0.05, p_female=0.2)])
    assert tracked.raw.emotion.label != "happy" and tracked.raw.gender.label == "male"
    assert tracked.smoothed.emotion.label == "happy" and tracked.smoothed.gender.label == "female"


def test_smoothing_reduces_frame_to_frame_change():
    rng = np.random.default_rng(0)
    box = (100, 100, 200, 200)
    raw_tracker, smooth_tracker = FaceTracker(alpha=1.0), FaceTracker(alpha=0.3)
    raw_ages, smooth_ages, raw_happy, smooth_happy = [], [], [], []
    for _ in range(300):  # a still face whose predictions jitter from frame to frame
        years = float(30 + rng.normal(0, 3))
        # The age head's spread grows with the age it predicts (about 13% here).
        face = make_face(box, happy=float(rng.uniform(0.3, 0.7)), years=years, std=0.13 * (1 + years))
        raw = raw_tracker.update([face])[0].smoothed
        smooth = smooth_tracker.update([face])[0].smoothed
        raw_ages.append(raw.age.years)
        smooth_ages.append(smooth.age.years)
        raw_happy.append(raw.emotion.probabilities["happy"])
        smooth_happy.append(smooth.emotion.probabilities["happy"])
    change = lambda xs: np.abs(np.diff(xs)).mean()  # noqa: E731
    assert change(smooth_ages) < change(raw_ages) / 3
    assert change(smooth_happy) < change(raw_happy) / 3
    assert np.mean(smooth_ages) == pytest.approx(np.mean(raw_ages), abs=0.5)  # averaging, not biasing


@pytest.mark.parametrize("kwargs", [{"alpha": 0}, {"alpha": 1.5}, {"min_iou": 0}, {"max_age": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        FaceTracker(**kwargs)


def test_a_bad_alpha_per_frame_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        FaceTracker().update([make_face()], alpha=0.0)
