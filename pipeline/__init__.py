"""Two-tower image-text retrieval on Ray. `pipeline.load(checkpoint)` gives an encoder with
`encode_image(list_of_PIL)` and `encode_text(list_of_str)` returning L2-normalised (N, D) float32 tensors."""

__version__ = "0.1.0"


def load(checkpoint_dir, device: str = "cpu"):
    from pipeline.encoder import load as _load

    return _load(checkpoint_dir, device)
