"""phide's Triton kernels, installed as `phide.triton_kernels` (see setup.py's package_dir).

Never import this folder as a top-level `triton_kernels`: that name belongs to an unrelated
OpenAI package. Modules here must import `triton` lazily or guarded so phide imports on CPU.
"""
