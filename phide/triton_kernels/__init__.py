"""phide's Triton kernels, one per file with its launcher; they import nothing of phide but this
package and phide.formats (what they share with the torch references), which import-linter checks.

Modules here must import `triton` lazily or guarded so phide imports on CPU.
"""
