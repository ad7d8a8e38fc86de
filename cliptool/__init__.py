"""cliptool: search a folder of videos by meaning with CLIP embeddings."""

__version__ = "0.1.0"
