"""What turns pixels and words into vectors: CLIP specs and loading (clip), model folders
and the Hugging Face hub (hf), the int8 ONNX image tower, the exported text tower and tokenizers (text)."""
