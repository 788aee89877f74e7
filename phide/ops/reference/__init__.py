"""The torch references of phide's ops: the CPU path and the test reference of every compiled or
Triton kernel (same signatures and semantics). `phide.ops` dispatches between them and the kernels."""
