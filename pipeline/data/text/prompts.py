"""Prompt templates for zero-shot classification: a class name set into each template, the templates' text
embeddings averaged into the class's classifier row (`pipeline zeroshot`).

`openai`: the 80 ImageNet templates of OpenAI's CLIP paper, the set OpenCLIP and clip_benchmark use by default;
`simple`: one prompt. A template file holds one template per line, with `{c}` (clip_benchmark's spelling) or `{}`
(OpenCLIP's) where the class name goes.
"""
from __future__ import annotations

from pathlib import Path

OPENAI_IMAGENET = (
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.", "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.", "a rendering of a {c}.", "graffiti of a {c}.", "a bad photo of the {c}.",
    "a cropped photo of the {c}.", "a tattoo of a {c}.", "the embroidered {c}.", "a photo of a hard to see {c}.",
    "a bright photo of a {c}.", "a photo of a clean {c}.", "a photo of a dirty {c}.", "a dark photo of the {c}.",
    "a drawing of a {c}.", "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.",
    "a close-up photo of a {c}.", "a black and white photo of the {c}.", "a painting of the {c}.",
    "a painting of a {c}.", "a pixelated photo of the {c}.", "a sculpture of the {c}.",
    "a bright photo of the {c}.", "a cropped photo of a {c}.", "a plastic {c}.", "a photo of the dirty {c}.",
    "a jpeg corrupted photo of a {c}.", "a blurry photo of the {c}.", "a photo of the {c}.",
    "a good photo of the {c}.", "a rendering of the {c}.", "a {c} in a video game.", "a photo of one {c}.",
    "a doodle of a {c}.", "a close-up photo of the {c}.", "a photo of a {c}.", "the origami {c}.",
    "the {c} in a video game.", "a sketch of a {c}.", "a doodle of the {c}.", "a origami {c}.",
    "a low resolution photo of a {c}.", "the toy {c}.", "a rendition of the {c}.", "a photo of the clean {c}.",
    "a photo of a large {c}.", "a rendition of a {c}.", "a photo of a nice {c}.", "a photo of a weird {c}.",
    "a blurry photo of a {c}.", "a cartoon {c}.", "art of a {c}.", "a sketch of the {c}.", "a embroidered {c}.",
    "a pixelated photo of a {c}.", "itap of the {c}.", "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.", "a plushie {c}.", "a photo of the nice {c}.", "a photo of the small {c}.",
    "a photo of the weird {c}.", "the cartoon {c}.", "art of the {c}.", "a drawing of the {c}.",
    "a photo of the large {c}.", "a black and white photo of a {c}.", "the plushie {c}.", "a dark photo of a {c}.",
    "itap of a {c}.", "graffiti of the {c}.", "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.",
    "a photo of a small {c}.", "a tattoo of the {c}.",
)
SIMPLE = ("a photo of a {c}.",)
TEMPLATE_SETS = {"openai": OPENAI_IMAGENET, "simple": SIMPLE}


def load_templates(spec: str) -> list[str]:
    """openai | simple | a file of templates (one per line) -> the templates, each holding `{c}`."""
    if spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--templates {spec}: neither {' nor '.join(TEMPLATE_SETS)} nor a file")
    lines = [line.strip().replace("{}", "{c}") for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    bad = next((line for line in lines if "{c}" not in line), None)
    if not lines or bad is not None:
        raise ValueError(f"--templates {spec}: " + (f"the template {bad!r} has no {{c}} (or {{}}) for the class name"
                                                      if bad else "the file holds no template"))
    return lines


def fill(template: str, name: str) -> str:
    """The prompt for class `name` (a plain replace: a class name may itself hold braces)."""
    return template.replace("{c}", name)
