"""The app's path end to end on real photos: MTCNN faces aligned to the training frames must give
sensible answers from the shipped models (this fails if serving crops faces unlike training did)."""
from __future__ import annotations


def only_face(service, image):
    (face,) = service.analyze(image).faces
    return face


def test_smiling_astronaut(service, astronaut):
    face = only_face(service, astronaut)
    assert face.emotion.label == "happy" and face.emotion.probabilities["happy"] > 0.6
    assert face.gender.label == "female" and face.gender.probability > 0.8
    assert 20 <= face.age.years <= 50  # Eileen Collins was about 40 in this photo


def test_grace_hopper_is_a_senior_and_not_smiling(service, grace_hopper):
    face = only_face(service, grace_hopper)  # she was 77 in this 1984 portrait
    assert face.age.group == "senior"
    assert face.emotion.label != "happy" and face.emotion.probabilities["happy"] < 0.2


def test_alignment_matters(service, astronaut):
    """A plain resize of the whole picture (no alignment) must not be what makes the answer right:
    the aligned crop is far more confident that the astronaut smiles."""
    aligned = only_face(service, astronaut).emotion.probabilities["happy"]
    (unaligned,) = service.analyze(astronaut, detect=False).faces
    assert aligned > unaligned.emotion.probabilities["happy"]
