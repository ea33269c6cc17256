"""Draw a synthetic face-like picture for a set of group labels (PIL only, no model, no data).

Each label moves the picture in a way a pixel-sensitive model can pick up: ``race`` sets the
skin tone range and hair colours, ``gender`` the hair length and (for adults) a beard or lip
colour, ``age`` the head size, eye size, grey hair and wrinkles. Seeded randomness varies
everything else (background, head shape, clothes, expression), so no two pictures are equal.
These are cartoons, not people: they exist to exercise the pipeline and the statistics.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping

from PIL import Image, ImageDraw

#: FairFace's values, in FairFace's ClassLabel order.
GENDERS = ("Male", "Female")
RACES = (
    "East Asian",
    "Indian",
    "Black",
    "White",
    "Middle Eastern",
    "Latino_Hispanic",
    "Southeast Asian",
)
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")

RGB = tuple[int, int, int]

_SKIN_TONES: dict[str, RGB] = {
    "East Asian": (238, 205, 170),
    "Indian": (165, 115, 80),
    "Black": (95, 62, 45),
    "White": (246, 214, 194),
    "Middle Eastern": (205, 158, 118),
    "Latino_Hispanic": (192, 142, 104),
    "Southeast Asian": (182, 132, 92),
}
_HAIR_COLOURS: dict[str, tuple[RGB, ...]] = {
    "White": ((230, 200, 120), (120, 70, 30), (60, 40, 25), (170, 80, 40)),
    "Latino_Hispanic": ((40, 28, 20), (80, 50, 30)),
    "Middle Eastern": ((35, 25, 20), (70, 45, 30)),
}
_DARK_HAIR: tuple[RGB, ...] = ((20, 18, 18), (40, 30, 25))


def draw_face(labels: Mapping[str, str], rng: random.Random, size: int = 64) -> Image.Image:
    """A ``size`` x ``size`` RGB cartoon face for ``labels`` (keys ``gender``, ``race``, ``age``).

    Values outside FairFace's lists still draw: they get a tone and age derived from their text.
    """
    gender = labels.get("gender", "")
    age_step = _age_step(labels.get("age", ""))
    skin = _jitter(_skin_tone(labels.get("race", "")), rng, 12)
    hair = _hair_colour(labels.get("race", ""), age_step, rng)
    image = Image.new("RGB", (100, 100), _jitter((200, 205, 215), rng, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((15, 85, 85, 100), fill=_jitter((90, 110, 150), rng, 80))  # shoulders
    # Children have smaller heads in the frame; adults fill it.
    half_w = 18 + min(age_step, 3) * 2 + rng.randint(-2, 2)
    half_h = half_w + 4 + rng.randint(0, 4)
    cx, cy = 50 + rng.randint(-3, 3), 48 + rng.randint(-2, 2)
    head = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    long_hair = gender == "Female" and age_step >= 1
    if long_hair:
        draw.rectangle(
            (cx - half_w - 5, cy - half_h + 6, cx + half_w + 5, cy + half_h + 16), fill=hair
        )
    draw.ellipse(head, fill=skin)
    if age_step >= 1 and not (age_step >= 7 and gender == "Male" and rng.random() < 0.5):
        draw.chord((head[0] - 2, head[1] - 3, head[2] + 2, cy + 4), 180, 360, fill=hair)
    if gender == "Male" and age_step >= 3 and rng.random() < 0.4:
        draw.chord((cx - half_w + 4, cy, cx + half_w - 4, cy + half_h + 2), 0, 180, fill=hair)
    _draw_features(draw, (cx, cy, half_w, half_h), gender, age_step, rng)
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _draw_features(
    draw: ImageDraw.ImageDraw,
    head: tuple[int, int, int, int],
    gender: str,
    age_step: int,
    rng: random.Random,
) -> None:
    cx, cy, half_w, half_h = head
    eye_r = 4 if age_step <= 1 else 3
    eye_dx, eye_y = half_w // 2 + rng.randint(-1, 1), cy - 2
    iris = rng.choice(((50, 35, 25), (40, 60, 90), (60, 80, 50)))
    for x in (cx - eye_dx, cx + eye_dx):
        draw.ellipse(
            (x - eye_r, eye_y - eye_r + 1, x + eye_r, eye_y + eye_r - 1), fill=(250, 250, 250)
        )
        draw.ellipse((x - 2, eye_y - 2, x + 2, eye_y + 2), fill=iris)
    if age_step >= 6:  # wrinkles under the eyes and on the forehead
        for dy in (5, -10):
            draw.line(
                (cx - half_w + 6, eye_y + dy, cx + half_w - 6, eye_y + dy), fill=(120, 90, 80)
            )
    mouth_y = cy + half_h // 2 + 2
    lips = (180, 40, 60) if gender == "Female" and age_step >= 3 else (140, 70, 60)
    width = rng.randint(5, 9)
    if rng.random() < 0.5:
        draw.arc((cx - width, mouth_y - 4, cx + width, mouth_y + 3), 20, 160, fill=lips, width=2)
    else:
        draw.line((cx - width, mouth_y, cx + width, mouth_y), fill=lips, width=2)


def _age_step(age: str) -> int:
    """Index of an age bin (0 = babies); unknown values get a stable position from their text."""
    return AGES.index(age) if age in AGES else zlib.crc32(age.encode()) % len(AGES)


def _skin_tone(race: str) -> RGB:
    if race in _SKIN_TONES:
        return _SKIN_TONES[race]
    level = 90 + zlib.crc32(race.encode()) % 150
    return (level, int(level * 0.75), int(level * 0.55))


def _hair_colour(race: str, age_step: int, rng: random.Random) -> RGB:
    if age_step >= 8 or (age_step >= 6 and rng.random() < 0.6):
        grey = rng.randint(170, 235)
        return (grey, grey, grey)
    return rng.choice(_HAIR_COLOURS.get(race, _DARK_HAIR))


def _jitter(colour: RGB, rng: random.Random, spread: int) -> RGB:
    r, g, b = (min(255, max(0, c + rng.randint(-spread, spread))) for c in colour)
    return (r, g, b)
