"""Process plumbing: compiled-kernel export, compilation cache, CPU compile/memory/thread settings."""
