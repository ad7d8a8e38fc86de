"""Search structures derived from the stores and rebuilt from them: the FAISS cache (faiss)
and a Milvus collection (milvus)."""
