"""MTCNN's three stages (facenet-pytorch's ``detect_face``) with OpenCV doing the resampling.

The box logic is facenet-pytorch's own (its ``generateBoundingBox``, NMS, ``rerec``, ``pad``, ``bbreg``
are imported, not copied); what changes is how pictures are resampled, which was most of a photo's
detection time on the CPU (one ``torch.nn.functional.interpolate`` call, an adaptive average pool, per
pyramid level and per candidate face: ~170 for a 640x480 photo):

- Each pyramid level is one ``cv2.resize`` (INTER_AREA, on uint8 pixels, as the original MTCNN code
  did) of the picture, which ``FaceDetector`` has already reduced to at most ``max_side`` pixels.
- The R- and O-net crops are cut and resized by ``cv2.resize`` (INTER_AREA, as
  ``FaceDetector.refine_many`` already did), one call per candidate instead of one pooling kernel.

The networks are called with NCHW float tensors on their device and may be the PyTorch modules or
``models.onnx_backend.OrtModule`` (same inputs and outputs).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (batched_nms_numpy, bbreg, generateBoundingBox, pad,
                                                      rerec)
from torchvision.ops.boxes import batched_nms

FACTOR = 0.709  # pyramid step, facenet-pytorch's default
NET_BATCH = 512  # most crops per R-/O-net call (facenet-pytorch's fixed_batch_process)
PNET_WINDOW = 12  # P-net's window: the smallest picture it takes, and the face size a scale of 1 finds


def pyramid_scales(height: int, width: int, min_face: int, factor: float = FACTOR) -> list[float]:
    """facenet-pytorch's scales: from 12 / min_face down while the short side stays >= 12 pixels."""
    m = PNET_WINDOW / min_face
    minl = min(height, width) * m
    scales, scale = [], m
    while minl >= PNET_WINDOW:
        scales.append(scale)
        scale *= factor
        minl *= factor
    return scales


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) pixels -> (N, 3, H, W) float32 in MTCNN's range."""
    return np.ascontiguousarray(((pixels.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2))


def _run(net: torch.nn.Module, batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """The network on a batch, in chunks; outputs as float32 CPU tensors."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(batch), NET_BATCH):
            x = torch.from_numpy(batch[i:i + NET_BATCH]).to(device=device, dtype=dtype)
            outs.append([o.float().cpu() for o in net(x)])
    return [torch.cat(parts) for parts in zip(*outs)]


def _crops(images: np.ndarray, image_inds: torch.Tensor, boxes: torch.Tensor,
           size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's (clipped, 1-based as in facenet-pytorch) window, area-resized to size x size.
    Returns the crops and which boxes had a non-empty window."""
    h, w = images.shape[1:3]
    y, ey, x, ex = pad(boxes, w, h)
    keep = (ey > y - 1) & (ex > x - 1)
    inds = image_inds.numpy()
    crops = [cv2.resize(images[inds[k], y[k] - 1:ey[k], x[k] - 1:ex[k]], (size, size), interpolation=cv2.INTER_AREA)
             for k in np.flatnonzero(keep)]
    return (np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)), keep


def detect_faces(images: list[np.ndarray], min_face: int, pnet, rnet, onet,
                 thresholds: tuple[float, float, float], device: torch.device,
                 factor: float = FACTOR) -> list[tuple[np.ndarray, np.ndarray]]:
    """Same-sized RGB uint8 pictures -> per picture (boxes (K, 5): x1, y1, x2, y2, score; landmarks (K, 5, 2))."""
    batch = np.stack(images)
    n, h, w = batch.shape[:3]
    dtype = next(pnet.parameters()).dtype
    empty = [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) for _ in range(n)]
    scales = pyramid_scales(h, w, min_face, factor)
    if not scales:
        return empty

    # Stage 1: P-net over the pyramid, each level area-resized from the picture.
    boxes, image_inds, picks, offset = [], [], [], 0
    for scale in scales:
        size = (int(w * scale + 1), int(h * scale + 1))
        level = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in batch])
        reg, probs = _run(pnet, _normalise(level), device, dtype)
        boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        boxes.append(boxes_scale)
        image_inds.append(inds_scale)
        picks.append(batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5) + offset)
        offset += boxes_scale.shape[0]
    boxes, image_inds = torch.cat(boxes)[torch.cat(picks)], torch.cat(image_inds)[torch.cat(picks)]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    if len(boxes) == 0:
        return empty
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], dim=1)
    boxes = rerec(boxes)

    # Stage 2: R-net on 24x24 crops of the full picture.
    crops, keep = _crops(batch, image_inds, boxes, 24)
    boxes, image_inds = boxes[torch.from_numpy(keep)], image_inds[torch.from_numpy(keep)]
    if len(boxes) == 0:
        return empty
    reg, probs = _run(rnet, _normalise(crops), device, dtype)
    score = probs[:, 1]
    ipass = score > thresholds[1]
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds, reg = image_inds[ipass], reg[ipass]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes = rerec(bbreg(boxes[pick], reg[pick]))
    image_inds = image_inds[pick]
    if len(boxes) == 0:
        return empty

    # Stage 3: O-net on 48x48 crops: final boxes, scores and landmarks.
    crops, keep = _crops(batch, image_inds, boxes, 48)
    boxes, image_inds = boxes[torch.from_numpy(keep)], image_inds[torch.from_numpy(keep)]
    if len(boxes) == 0:
        return empty
    reg, points, probs = _run(onet, _normalise(crops), device, dtype)
    score = probs[:, 1]
    ipass = score > thresholds[2]
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds, reg, points = image_inds[ipass], reg[ipass], points[ipass]
    w_i = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h_i = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    points = torch.stack([w_i * points[:, :5] + boxes[:, 0:1] - 1, h_i * points[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = bbreg(boxes, reg)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    boxes, image_inds, points = boxes[pick].numpy(), image_inds[pick].numpy(), points[pick].numpy()
    return [(boxes[image_inds == i].astype(np.float32), points[image_inds == i].astype(np.float32))
            for i in range(n)]
