"""Training-time image changes: switchable augmentations and self-blended images (SBI).

Augmentations work on one uint8 RGB face at a time with OpenCV (cheap next to a training
step on CPU) and a numpy ``Generator``, so a seed fixes every change. Each is a named
entry of ``AUGMENTATIONS`` with the probability it fires; ``--augment`` picks a subset,
applied in the registry's order: geometry, colour, re-encoding, then erasing (a mask
drawn after the re-encode, as a platform never JPEG-compresses our mask).

Why the re-encoding group (``jpeg``, ``downscale``, ``blur``): uploads are recompressed
and resized by the platform, and a detector that learned the blending seams of pristine
DFDC frames loses them at the first re-encode unless it has seen one.

Self-blended images (Shiohara & Yamasaki, CVPR 2022) turn a real face into a training
fake by blending a colour- and geometry-perturbed copy of the face back into itself
under a soft face mask: the blending boundary and the colour/frequency mismatch are
what face swaps leave, without any identity swap to memorise. The paper draws the mask
from 81 facial landmarks (a convex hull). Our crops carry no stored landmarks (face
shards keep SCRFD's 5 points, the shared DFDC crops none), so the mask here is a
landmark-free ellipse centred in the crop, where the crops put the face, with random
axes, tilt, elastic-style deformation and edge blur.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Image = np.ndarray  # uint8 RGB, (H, W, 3)
Rng = np.random.Generator


def hflip(img: Image, rng: Rng) -> Image:
    return np.ascontiguousarray(img[:, ::-1])


def rotate_scale(img: Image, rng: Rng) -> Image:
    """Up to 10 degrees and +-10% scale about the centre: head tilt and framing jitter."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def perspective(img: Image, rng: Rng) -> Image:
    """Corners moved by up to 6% of the side: a head turned slightly off-axis."""
    h, w = img.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    jitter = rng.uniform(-0.06, 0.06, size=(4, 2)) * np.array([w, h], dtype=np.float64)
    m = cv2.getPerspectiveTransform(src, (src + jitter).astype(np.float32))
    return cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def color_jitter(img: Image, rng: Rng) -> Image:
    """Brightness/contrast +-15%, saturation +-20%, hue +-4 degrees: lighting and cameras.

    Kept mild: a strong colour change would also erase the colour mismatch at the
    blending boundary the model is supposed to find.
    """
    # uint8 look-up tables throughout: ~10x faster than float HSV maths at 160 px.
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    levels = np.arange(256, dtype=np.float32)
    hue_lut = ((levels + rng.uniform(-2, 2)) % 180).astype(np.uint8)  # OpenCV hue = deg / 2
    sat_lut = np.clip(levels * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    h, s, v = cv2.split(hsv)
    out = cv2.cvtColor(cv2.merge([cv2.LUT(h, hue_lut), cv2.LUT(s, sat_lut), v]), cv2.COLOR_HSV2RGB)
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)
    mean = float(out.mean())
    # (x - mean) * contrast + mean * brightness, saturated to uint8 by OpenCV.
    return cv2.convertScaleAbs(out, alpha=contrast, beta=mean * (brightness - contrast))


def jpeg(img: Image, rng: Rng) -> Image:
    """Re-encode at quality 40-95: what platforms do to every upload."""
    q = int(rng.integers(40, 96))
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise ValueError(f"JPEG re-encode failed for shape {img.shape}")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f"JPEG re-decode failed for shape {img.shape}")
    return np.ascontiguousarray(decoded[..., ::-1])


def downscale(img: Image, rng: Rng) -> Image:
    """Down to 40-90% and back: a lower-resolution upload or a small face in the frame."""
    h, w = img.shape[:2]
    f = rng.uniform(0.4, 0.9)
    small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blur(img: Image, rng: Rng) -> Image:
    """Gaussian blur, sigma 0.3-1.5 px: defocus, motion, a soft encoder."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.3, 1.5))


def random_erasing(img: Image, rng: Rng) -> Image:
    """One rectangle of 2-20% of the area filled with noise (Zhong et al. 2020): forces
    the model to use more than one region of the face."""
    h, w = img.shape[:2]
    area = rng.uniform(0.02, 0.2) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    eh = int(min(h, round(np.sqrt(area * aspect))))
    ew = int(min(w, round(np.sqrt(area / aspect))))
    top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
    out = img.copy()
    out[top : top + eh, left : left + ew] = rng.integers(0, 256, size=(eh, ew, 3), dtype=np.uint8)
    return out


@dataclass(frozen=True)
class Augmentation:
    fn: Callable[[Image, Rng], Image]
    p: float  # chance it fires on one image


# Applied in this order. Each probability is set so that the average face sees one or
# two changes, not all of them.
AUGMENTATIONS: dict[str, Augmentation] = {
    "hflip": Augmentation(hflip, 0.5),
    "rotate_scale": Augmentation(rotate_scale, 0.3),
    "perspective": Augmentation(perspective, 0.2),
    "color": Augmentation(color_jitter, 0.5),
    "downscale": Augmentation(downscale, 0.2),
    "jpeg": Augmentation(jpeg, 0.3),
    "blur": Augmentation(blur, 0.15),
    "erase": Augmentation(random_erasing, 0.25),
}


def parse_augment(text: str) -> tuple[str, ...]:
    """``hflip,color,jpeg`` | ``all`` | ``none`` -> names in registry order; unknown: ValueError."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return tuple(AUGMENTATIONS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {', '.join(unknown)}: choose from {', '.join(AUGMENTATIONS)}"
        )
    return tuple(n for n in AUGMENTATIONS if n in names)


def augment_image(img: Image, names: Sequence[str], rng: Rng) -> Image:
    for name in names:
        aug = AUGMENTATIONS[name]
        if rng.random() < aug.p:
            img = aug.fn(img, rng)
    return img


# ---------------------------------------------------------------- self-blended images
def _sbi_colour(img: Image, rng: Rng) -> Image:
    """The source-target mismatch: per-channel shift, hue/saturation and contrast, and
    sometimes a sharpen or a downscale (a frequency mismatch, as a swap's generator)."""
    shift = tuple(float(v) for v in rng.uniform(-20, 20, size=3)) + (0.0,)
    x = color_jitter(cv2.add(img, shift), rng)  # type: ignore[call-overload]  # saturating
    r = rng.random()
    if r < 0.3:
        soft = cv2.GaussianBlur(x, (0, 0), 1.0)
        x = cv2.addWeighted(x, 1.5, soft, -0.5, 0)  # unsharp mask
    elif r < 0.6:
        x = downscale(x, rng)
    return x


_MASK_SIDE = 64  # the mask is drawn at this side and resized: it is smooth by design


def face_mask(h: int, w: int, rng: Rng) -> np.ndarray:
    """Soft elliptical face mask in [0, 1], (H, W, 1): centred where crops put the face,
    deformed by a coarse random displacement field and blurred at its edge."""
    out_h, out_w = h, w
    h = w = _MASK_SIDE
    mask: np.ndarray = np.zeros((h, w), dtype=np.float32)
    centre = (int(w * (0.5 + rng.uniform(-0.04, 0.04))), int(h * (0.53 + rng.uniform(-0.04, 0.04))))
    axes = (int(w * rng.uniform(0.26, 0.40)), int(h * rng.uniform(0.32, 0.46)))
    cv2.ellipse(mask, centre, axes, rng.uniform(-12, 12), 0, 360, 1.0, -1)
    # Elastic-style deformation: a 4x4 random displacement field, upsampled smoothly.
    amp = 0.04 * min(h, w)
    dx = cv2.resize(rng.uniform(-amp, amp, (4, 4)).astype(np.float32), (w, h))
    dy = cv2.resize(rng.uniform(-amp, amp, (4, 4)).astype(np.float32), (w, h))
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mask = cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderValue=0)
    # Edge softness from a hard seam to a wide feather, as blending methods differ.
    sigma = rng.uniform(0.01, 0.08) * min(h, w)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma)
    peak = float(mask.max())
    if peak > 0:
        mask = (mask / peak).astype(np.float32)
    return cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_LINEAR)[..., None]


def self_blend(img: Image, rng: Rng) -> Image:
    """A training fake from a real face: a perturbed copy blended into it (see module doc)."""
    h, w = img.shape[:2]
    source, target = img, img
    if rng.random() < 0.5:
        source = _sbi_colour(img, rng)
    else:
        target = _sbi_colour(img, rng)
    # Geometry: the source slightly rescaled and shifted, as a swap's face never sits
    # exactly where the original was.
    sx, sy = rng.uniform(0.94, 1.06), rng.uniform(0.94, 1.06)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    m = np.array([[sx, 0, (1 - sx) * w / 2 + tx], [0, sy, (1 - sy) * h / 2 + ty]], np.float32)
    source = cv2.warpAffine(source, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    mask = face_mask(h, w, rng) * float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))
    out = source.astype(np.float32) * mask + target.astype(np.float32) * (1.0 - mask)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    rng: Rng,
    sbi_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A changed copy of a uint8 NHWC batch and its labels (SBI turns reals into fakes)."""
    out = np.empty_like(images)
    y = labels.copy()
    for i in range(len(images)):
        img = images[i]
        if sbi_prob > 0 and labels[i] < 0.5 and rng.random() < sbi_prob:
            img = self_blend(img, rng)
            y[i] = 1.0
        out[i] = augment_image(img, names, rng)
    return out, y
