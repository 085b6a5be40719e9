"""Scenes of the built-in benchmark and how they are rendered.

An image is a 3x3 grid of 16-pixel cells (48 x 48 pixels) on a coloured background;
each cell holds at most one object. An object has a category (a geometric shape or a
real handwritten digit from scikit-learn's bundled `load_digits`), a colour, a size,
a pattern and a cell. The grid matches the built-in model's 16-pixel patches, so
every object sits in exactly one image token.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
CELL = 16
GRID = 3

SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
DIGITS = {"zero": 0, "one": 1, "three": 3, "seven": 7}
CATEGORIES = SHAPES + list(DIGITS)
PLURALS = {name: name + "es" if name.endswith(("s", "x")) else name + "s" for name in CATEGORIES}
PLURALS["cross"] = "crosses"

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (110, 110, 110), "brown": (95, 60, 30)}
SIZES = {"small": 10, "large": 15}
PATTERNS = ["solid", "striped"]
POSITIONS = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]  # index = row * 3 + column

ATTRIBUTES = ("shape", "colour", "size", "pattern")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    pattern: str
    cell: int

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        """Short description used in captions and 'describe' answers."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    digit_pool: str = "train"  # which half of the digit images to draw from
    style_seed: int = 0  # picks digit instances and colour jitter

    def has(self, **attrs: str | list[str]) -> bool:
        """True if some object matches every given attribute (a value or a list)."""
        return any(matches(obj, attrs) for obj in self.objects)

    def by_shape(self, shape: str) -> list[SceneObject]:
        return [o for o in self.objects if o.shape == shape]

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    def caption(self) -> str:
        parts = [f"a {o.phrase()} at the {o.position}" for o in sorted(self.objects, key=lambda o: o.cell)]
        return " and ".join(parts) + f" on a {self.background} background"


def matches(obj: SceneObject, attrs: dict) -> bool:
    for key, wanted in attrs.items():
        if key == "background":
            continue
        value = getattr(obj, key)
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def random_object(rng: random.Random, cell: int, shape: str | None = None) -> SceneObject:
    shape = shape or rng.choice(CATEGORIES)
    return SceneObject(
        shape=shape,
        colour=rng.choice(list(COLOURS)),
        size=rng.choice(list(SIZES)),
        # Digits are thin strokes: stripes would erase them, so digits are solid.
        pattern="solid" if shape in DIGITS else rng.choice(PATTERNS),
        cell=cell,
    )


def random_scene(
    rng: random.Random,
    n_objects: int | None = None,
    unique_shapes: bool = True,
    required: list[str] | None = None,
    digit_pool: str = "train",
) -> Scene:
    """A random scene of 1-3 objects; `required` shapes are always included."""
    required = list(required or [])
    n = n_objects or rng.randint(1, 3)
    n = max(n, len(required))
    cells = rng.sample(range(GRID * GRID), n)
    shapes = list(required)
    while len(shapes) < n:
        s = rng.choice(CATEGORIES)
        if unique_shapes and s in shapes:
            continue
        shapes.append(s)
    rng.shuffle(shapes)
    objects = tuple(random_object(rng, c, s) for c, s in zip(cells, shapes))
    return Scene(objects, rng.choice(list(BACKGROUNDS)), digit_pool, rng.randrange(1 << 30))


# ---------------------------------------------------------------- rendering

@lru_cache(maxsize=1)
def _digit_images() -> dict[int, dict[str, list[np.ndarray]]]:
    """Real 8x8 handwritten digits, split into disjoint train/test pools."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pools: dict[int, dict[str, list[np.ndarray]]] = {d: {"train": [], "test": []} for d in DIGITS.values()}
    for index, (image, label) in enumerate(zip(data.images, data.target)):
        if int(label) in pools:
            pools[int(label)]["test" if index % 4 == 0 else "train"].append(image / 16.0)
    return pools


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean mask of a geometric shape, drawn at 4x and downsampled for clean edges."""
    s = size * 4
    img = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "square":
        d.rectangle([s * 0.08, s * 0.08, s * 0.92, s * 0.92], fill=255)
    elif shape == "triangle":
        d.polygon([(s / 2, 0), (s - 1, s - 1), (0, s - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(s / 2, 0), (s - 1, s / 2), (s / 2, s - 1), (0, s / 2)], fill=255)
    elif shape == "cross":
        w = s * 0.34
        d.rectangle([(s - w) / 2, 0, (s + w) / 2, s - 1], fill=255)
        d.rectangle([0, (s - w) / 2, s - 1, (s + w) / 2], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = s / 2 if k % 2 == 0 else s / 4.6
            angle = np.pi / 2 + k * np.pi / 5
            points.append((s / 2 + radius * np.cos(angle), s / 2 - radius * np.sin(angle) + s * 0.05))
        d.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    small = img.resize((size, size), Image.BILINEAR)
    return np.asarray(small) > 110


def _digit_mask(digit: int, size: int, rng: random.Random, pool: str) -> np.ndarray:
    images = _digit_images()[digit][pool]
    image = images[rng.randrange(len(images))]
    up = Image.fromarray((image * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(up) > 90


def object_mask(obj: SceneObject, rng: random.Random, pool: str) -> np.ndarray:
    size = SIZES[obj.size]
    if obj.shape in DIGITS:
        mask = _digit_mask(DIGITS[obj.shape], size, rng, pool)
    else:
        mask = _shape_mask(obj.shape, size)
    if obj.pattern == "striped":
        # Keep the silhouette (its outline) so the shape stays recognisable, and
        # stripe the inside with every other row.
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        rows = np.arange(size)[:, None]
        mask = (mask & ~inner) | (inner & (rows % 2 == 0))
    return mask


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 48x48 RGB image (deterministic given the scene)."""
    rng = random.Random(scene.style_seed)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    canvas[:] = BACKGROUNDS[scene.background]
    canvas += np.array([rng.randint(-8, 8) for _ in range(3)], dtype=np.int16)
    for obj in scene.objects:
        mask = object_mask(obj, rng, scene.digit_pool)
        size = mask.shape[0]
        row, col = divmod(obj.cell, GRID)
        slack = CELL - size
        top = row * CELL + rng.randint(0, slack) if slack else row * CELL
        left = col * CELL + rng.randint(0, slack) if slack else col * CELL
        colour = np.array(COLOURS[obj.colour]) + np.array([rng.randint(-15, 15) for _ in range(3)])
        region = canvas[top : top + size, left : left + size]
        region[mask] = colour
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
