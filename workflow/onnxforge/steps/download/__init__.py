"""Download: fetch (hf://, file://) or synthesize a checkpoint, hashed into a manifest."""
