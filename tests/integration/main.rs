//! Integration tests of the ckpt workspace: one test binary, one module per concern.
